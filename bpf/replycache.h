/* replycache.h — NAT replies' established fast path (issue 15): a per-CPU, 2-way set-associative cache from a reply's
 * tuple to what its rewrite needs (VIP, port, next hop, ids for the counters), in the flow cache's style
 * (bpf/flowcache.h), so that a reply skips nat_revs: a 40-byte key hashed into a table sized like conns, two cache
 * misses the inbound side already avoids. Entries are 128 bytes (two lines, the key and the hot fields first).
 *
 * The cache only repeats what nat_revs said, and by the flow cache's rules:
 * - an entry is trusted for settings.flow_ttl jiffies from its next hop's lookup (nat_rev.hop_stamp, no later than
 *   the nat_revs read that filled it): a connection that expires or whose real is removed (the sweep deletes its
 *   nat_revs entry) has its replies cached for at most that TTL after, as an inbound flow's packets are;
 * - settings.gen voids every entry: an entry records the gen read before nat_revs was looked up;
 * - SYN, FIN and RST take the full path, and empty the tuple's entry when they find its connection (a SYN-ACK of a
 *   reused tuple's new connection, a closing one); so does any reply the full path did not send itself (its next
 *   hop unresolved, too big); only nat_revs fills it (nat_half's half-open connections do not);
 * - two NAT connections sharing a reply tuple (one client port to two VIPs on one real:port, which IPVS cannot tell
 *   apart either) get the later one's rewrite from nat_revs at once, from a CPU's cached entry within its TTL;
 * - the trace build never reads or writes it. */
#ifndef XLB_REPLYCACHE_H
#define XLB_REPLYCACHE_H

#include "conn.h"
#include "flowcache.h"
#include "maps.h"
#include "nat.h"
#include "parse.h"

_Static_assert(__builtin_offsetof(struct reply_entry, gen) == __builtin_offsetof(struct flow_entry, gen) &&
	       __builtin_offsetof(struct reply_entry, stamp) == __builtin_offsetof(struct flow_entry, stamp),
	       "cache_probe reads a reply_entry as a flow_entry");

/* The cached entry for this reply's tuple, or 0 (none in its set, void, stale, or a state change). */
static __always_inline struct reply_entry *reply_cached(struct pkt *p, struct settings *st, __u32 slot)
{
	return (struct reply_entry *)cache_probe(p, st, slot, 1);
}

/* Remember NAT connection nr's rewrite and next hop for its tuple's next replies if the full path sent this one
 * (sent) and it is no state change; else empty the tuple's entry. gen: settings.gen as read before nr was looked up.
 * Slot choice as flow_fill's. */
static __always_inline void reply_fill(struct pkt *p, __u32 slot, __u32 gen, struct settings *st, struct nat_rev *nr,
				       int sent)
{
	struct flow_entry *e0, *e1;  /* reply_entry read through flow_entry's key, gen and stamp, as in cache_probe */
	if (!cache_set(st, slot, 1, &e0, &e1))
		return;
	if (!sent || !cache_may_answer(p, st)) {
		cache_forget(p, e0, e1);
		return;
	}
	__u32 now = (__u32)bpf_jiffies64();
	struct reply_entry *e = (struct reply_entry *)(cache_way(flow_key_eq(&e0->key, p), flow_key_eq(&e1->key, p),
								 flow_live(e0, st, now), flow_live(e1, st, now),
								 e0->stamp, e1->stamp) ? e1 : e0);
	conn_key_of(p, &e->key);
	e->gen = gen;
	e->stamp = nr->hop_stamp;
	e->real_id = nr->real_id;
	e->svc_id = nr->svc_id;
	e->ifindex = nr->ifindex;
	e->vport = nr->vport;
	e->mtu = nr->mtu;
	__builtin_memcpy(e->vip, nr->vip, 16);
	__builtin_memcpy(e->dmac, nr->dmac, 6);
	__builtin_memcpy(e->smac, nr->smac, 6);
}

/* A real's reply to a NAT connection: from the reply cache, else found by its tuple in nat_revs (or nat_half) and
 * sent by nat_reply_send, which fills the cache. Returns the verdict reason with *action set, or -1: no NAT
 * connection has this tuple (the caller goes on as for any packet that is no service's). */
static __always_inline int nat_reply(struct xdp_md *ctx, struct pkt *p, struct settings *st, __u64 bytes,
				     int *action)
{
	__u32 gen = st->gen;  /* before nat_revs is read: see above */
	__u32 slot = cache_slot(p, XLB_REPLY_CACHE);
	struct reply_entry *re = reply_cached(p, st, slot);
	if (re)
		return nat_reply_out(ctx, p, 0, re->vip, re->vport, re->mtu, re->ifindex, re->dmac, re->smac, re->svc_id,
				     re->real_id, bytes, action);
	struct conn_key k;
	conn_key_of(p, &k);
	int half;  /* a half-open connection's: never cached (a SYN-ACK empties the entry, as every state change does) */
	struct nat_rev *nr = nat_rev_lookup(&k, is_stream(p) && (p->tcp_flags & XLB_TCP_SYN), &half);
	if (!nr)
		return -1;
	int reason = nat_reply_send(ctx, p, st, bytes, nr, 0, action);
	reply_fill(p, slot, gen, st, nr, !half && (*action == XDP_TX || *action == XDP_REDIRECT));
	return reason;
}

#endif
