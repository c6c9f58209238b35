/* flowcache.h — the established fast path. A per-CPU, 2-way set-associative cache from a flow's tuple to its real,
 * filled from the connection table while the entry is established (TCP) or UDP. A hit forwards the packet
 * without the connection table's hash lookup (a random bucket and element in a table of a million: two cache
 * misses) and without the clock (bpf_jiffies64 is inlined by the verifier; the coarse clock is a helper call).
 *
 * bpf_get_smp_processor_id is inlined too; each CPU owns its region, so no entry is written by two CPUs.
 *
 * Sets of two entries (one 128-byte pair): two flows hashed alike both stay.
 *
 * The cache only ever repeats what the connection table said, and for a bounded time:
 * - an entry is trusted for settings.flow_ttl jiffies; the next packet after that takes the full path, which
 *   touches the connection entry (its last-seen time lags by at most the TTL: the control plane keeps the TTL
 *   a fraction of the shortest timeout) and refills the slot;
 * - every control-plane change bumps settings.gen, voiding every entry: a removed real, a weight or a table
 *   change is seen by the next packet. An entry records the gen read before its connection was checked;
 * - SYN, FIN and RST take the full path (state changes, reuse of a closing tuple), and a connection entry in
 *   any state but established or UDP empties the flow's entry: a reused tuple's new connection is not sent
 *   where the closed one went;
 * - the trace build never reads or writes it: a trace shows the connection table's decision, which the cache
 *   repeats. */
#ifndef XLB_FLOWCACHE_H
#define XLB_FLOWCACHE_H

#include "conn.h"
#include "fwd.h"
#include "hash.h"
#include "maps.h"
#include "parse.h"
#include "trace.h"

/* The first entry of the flow's set in this CPU's region of a cache of `per_cpu` entries per CPU (a power of two):
 * two adjacent entries (the caches are 2-way set associative). */
static __always_inline __u32 cache_slot(struct pkt *p, __u32 per_cpu)
{
	__u32 h = hash_addr(p->src) ^ ((p->dst[0] ^ p->dst[1] ^ p->dst[2] ^ p->dst[3]) * 0x9e3779b1);
	h ^= (((__u32)p->sport << 16) | p->dport) * 0x85ebca77;
	__u32 cpu = bpf_get_smp_processor_id();
	if (cpu >= XLB_NR_CPUS)
		cpu = 0;  /* cannot happen (the loader counts the possible CPUs); keeps the index in bounds */
	return cpu * per_cpu + (mix32(h ^ p->proto) & (per_cpu - 2));
}

static __always_inline __u32 flow_slot(struct pkt *p)
{
	return cache_slot(p, XLB_FLOW_CACHE);
}

static __always_inline int flow_key_eq(struct conn_key *k, struct pkt *p)
{
	return addr_eq(k->src, p->src) & addr_eq(k->dst, p->dst) &
	       (((k->sport ^ p->sport) | (k->dport ^ p->dport) | (k->proto ^ p->proto) | (k->family ^ p->family)) == 0);
}

/* Is entry e in force: written under the current settings.gen, within the TTL? */
static __always_inline int flow_live(struct flow_entry *e, struct settings *st, __u32 now)
{
	return e->gen == st->gen && now - e->stamp < st->flow_ttl;
}

/* May this packet be answered from a cache (this one or bpf/replycache.h)? Not in the trace build, not with the
 * caches off (TTL 0), not a TCP/SCTP state change. */
static __always_inline int cache_may_answer(struct pkt *p, struct settings *st)
{
	if (XLB_TRACING || !st->flow_ttl)
		return 0;
	return !(is_stream(p) && (p->tcp_flags & (XLB_TCP_SYN | XLB_TCP_FIN | XLB_TCP_RST)));
}

/* Which entry of a set a flow's fill writes (1: the second): the flow's own (has0, has1), else a void or stale one
 * (live0, live1), else the one filled longer ago. */
static __always_inline int cache_way(int has0, int has1, int live0, int live1, __u32 stamp0, __u32 stamp1)
{
	if (has1)
		return 1;
	return !has0 && live0 && (!live1 || (__s32)(stamp1 - stamp0) < 0);
}

/* The live entry of the packet's flow in a cache's set (reply 0: flow_cache; 1: reply_cache, bpf/replycache.h, a
 * compile-time constant), or 0 (none in its set, void, stale, or a state change). A reply_entry is read through
 * flow_entry's key, gen and stamp, which it keeps at the same offsets (structs.h): one probe for both caches. */
static __always_inline struct flow_entry *cache_probe(struct pkt *p, struct settings *st, __u32 slot, int reply)
{
	if (!cache_may_answer(p, st))
		return 0;
	__u32 now = (__u32)bpf_jiffies64();
	for (__u32 way = 0; way < 2; way++) {
		__u32 i = slot + way;
		struct flow_entry *e = reply ? (struct flow_entry *)reply_cache.lookup(&i) : flow_cache.lookup(&i);
		if (e && flow_key_eq(&e->key, p))
			return flow_live(e, st, now) ? e : 0;
	}
	return 0;
}

/* The two entries of the set at slot (reply as in cache_probe) in *e0 and *e1; 0: none (the trace build never
 * writes the caches; TTL 0: they are off). */
static __always_inline int cache_set(struct settings *st, __u32 slot, int reply, struct flow_entry **e0,
				     struct flow_entry **e1)
{
	if (XLB_TRACING || !st->flow_ttl)
		return 0;
	__u32 i0 = slot, i1 = slot + 1;
	*e0 = reply ? (struct flow_entry *)reply_cache.lookup(&i0) : flow_cache.lookup(&i0);
	*e1 = reply ? (struct flow_entry *)reply_cache.lookup(&i1) : flow_cache.lookup(&i1);
	return *e0 && *e1;
}

/* Empty the flow's own entry of its set (e0, e1), if any: as never filled. Its first 64 bytes: a whole flow_entry,
 * a reply_entry's line with its key. */
static __always_inline void cache_forget(struct pkt *p, struct flow_entry *e0, struct flow_entry *e1)
{
	if (flow_key_eq(&e0->key, p))
		__builtin_memset(e0, 0, sizeof(*e0));
	if (flow_key_eq(&e1->key, p))
		__builtin_memset(e1, 0, sizeof(*e1));
}

/* The cached entry for this packet's flow, or 0. */
static __always_inline struct flow_entry *flow_cached(struct pkt *p, struct settings *st, __u32 slot)
{
	return cache_probe(p, st, slot, 0);
}

/* Remember a live connection entry c (its real r) for the flow's next packets, if its state lets them skip
 * the connection table; else forget the flow (its entry may speak for the connection a reused tuple replaced).
 * gen: settings.gen as read before c was looked up. The flow's own entry is rewritten; else a void or stale one
 * of its set; else the one filled longer ago. */
static __always_inline void flow_fill(struct pkt *p, __u32 slot, __u32 gen, struct settings *st, struct conn *c,
				      struct real *r)
{
	struct flow_entry *e0, *e1;
	if (!cache_set(st, slot, 0, &e0, &e1))
		return;
	if (c->state != XLB_CS_EST && c->state != XLB_CS_UDP) {
		cache_forget(p, e0, e1);  /* a handshake or a closing flow */
		return;
	}
	__u32 now = (__u32)bpf_jiffies64();
	struct flow_entry *e = cache_way(flow_key_eq(&e0->key, p), flow_key_eq(&e1->key, p), flow_live(e0, st, now),
					 flow_live(e1, st, now), e0->stamp, e1->stamp) ? e1 : e0;
	conn_key_of(p, &e->key);
	e->real_id = c->real_id;
	e->real_gen = r->gen;
	e->svc_id = c->svc_id;
	e->method = r->method;
	e->gen = gen;
	e->stamp = now;
}

#endif
