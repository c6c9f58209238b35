/* flowcache.h — the established fast path. A per-CPU, direct-mapped cache from a flow's tuple to its real,
 * filled from the connection table while the entry is established (TCP) or UDP. A hit forwards the packet
 * without the connection table's hash lookup (a random bucket and element in a table of a million: two cache
 * misses) and without the clock (bpf_jiffies64 is inlined by the verifier; the coarse clock is a helper call).
 *
 * bpf_get_smp_processor_id is inlined too; each CPU owns its region, so no entry is written by two CPUs.
 *
 * The cache only ever repeats what the connection table said, and for a bounded time:
 * - an entry is trusted for settings.flow_ttl jiffies; the next packet after that takes the full path, which
 *   touches the connection entry (its last-seen time lags by at most the TTL: the control plane keeps the TTL
 *   a fraction of the shortest timeout) and refills the slot;
 * - every control-plane change bumps settings.gen, voiding every entry: a removed real, a weight or a table
 *   change is seen by the next packet. An entry records the gen read before its connection was checked;
 * - SYN, FIN and RST take the full path (state changes, reuse of a closing tuple);
 * - the trace build never reads or writes it: a trace shows the connection table's decision, which the cache
 *   repeats. */
#ifndef XLB_FLOWCACHE_H
#define XLB_FLOWCACHE_H

#include "conn.h"
#include "hash.h"
#include "maps.h"
#include "parse.h"
#include "trace.h"

static __always_inline __u32 flow_slot(struct pkt *p)
{
	__u32 h = hash_addr(p->src) ^ ((p->dst[0] ^ p->dst[1] ^ p->dst[2] ^ p->dst[3]) * 0x9e3779b1);
	h ^= (((__u32)p->sport << 16) | p->dport) * 0x85ebca77;
	__u32 cpu = bpf_get_smp_processor_id();
	if (cpu >= XLB_NR_CPUS)
		cpu = 0;  /* cannot happen (the loader counts the possible CPUs); keeps the index in bounds */
	return cpu * XLB_FLOW_CACHE + (mix32(h ^ p->proto) & (XLB_FLOW_CACHE - 1));
}

static __always_inline int flow_key_eq(struct conn_key *k, struct pkt *p)
{
	return ((k->src[0] ^ p->src[0]) | (k->src[1] ^ p->src[1]) | (k->src[2] ^ p->src[2]) | (k->src[3] ^ p->src[3]) |
		(k->dst[0] ^ p->dst[0]) | (k->dst[1] ^ p->dst[1]) | (k->dst[2] ^ p->dst[2]) | (k->dst[3] ^ p->dst[3]) |
		(k->sport ^ p->sport) | (k->dport ^ p->dport) | (k->proto ^ p->proto) | (k->family ^ p->family)) == 0;
}

/* The cached entry for this packet's flow, or 0 (no entry, another flow's, void, stale, or a state change). */
static __always_inline struct flow_entry *flow_cached(struct pkt *p, struct settings *st, __u32 slot)
{
	if (XLB_TRACING || !st->flow_ttl)
		return 0;
	if (p->proto == IPPROTO_TCP && (p->tcp_flags & (XLB_TCP_SYN | XLB_TCP_FIN | XLB_TCP_RST)))
		return 0;
	struct flow_entry *e = flow_cache.lookup(&slot);
	if (!e || e->gen != st->gen || (__u32)bpf_jiffies64() - e->stamp >= st->flow_ttl || !flow_key_eq(&e->key, p))
		return 0;
	return e;
}

/* Remember a live connection entry c (its real r) for the flow's next packets, if its state lets them skip
 * the connection table. gen: settings.gen as read before c was looked up. */
static __always_inline void flow_fill(struct pkt *p, __u32 slot, __u32 gen, struct settings *st, struct conn *c,
				      struct real *r)
{
	if (XLB_TRACING || !st->flow_ttl || (c->state != XLB_CS_EST && c->state != XLB_CS_UDP))
		return;
	struct flow_entry *e = flow_cache.lookup(&slot);
	if (!e)
		return;
	conn_key_of(p, &e->key);
	e->real_id = c->real_id;
	e->real_gen = r->gen;
	e->svc_id = c->svc_id;
	e->gen = gen;
	e->stamp = (__u32)bpf_jiffies64();
}

#endif
