/* classify.h — which virtual service a packet belongs to: mark rules first, then <proto, vip, port>, then the
 * VIP's port-zero service, in IPVS's order. */
#ifndef XLB_CLASSIFY_H
#define XLB_CLASSIFY_H

#include "hash.h"
#include "maps.h"
#include "parse.h"
#include "stats.h"
#include "trace.h"

/* The most specific mark rule for the packet: one LPM lookup for rules naming its port, one for every-port
 * rules. Returns the rule or NULL. */
static __always_inline struct mark_val *match_mark(struct pkt *p)
{
	struct mark_key mk = {
		.prefixlen = 32 + 128,
		.family = p->family,
		.proto = p->proto,
		.port = p->dport,
	};
	__builtin_memcpy(mk.addr, p->dst, 16);
	struct mark_val *mv = mark_rules.lookup(&mk);
	if (mv)
		return mv;
	mk.port = 0;
	return mark_rules.lookup(&mk);
}

static __always_inline int vip_filter_bit(__u32 h)
{
	__u32 w = (h >> 6) & (XLB_VIP_FILTER_WORDS - 1);
	__u64 *bits = vip_filter.lookup(&w);
	return bits && ((*bits >> (h & 63)) & 1);
}

/* Could the packet be for a service? The VIP filter (xlb/vipfilter.py) has a bit for every VIP and every address
 * of a small mark prefix, hashed, and one for every /24 (IPv4) or /64 (IPv6) network of a larger one. A clear
 * bit for both the destination and its network means no VIP and no mark rule: the packet passes after a few
 * nanoseconds instead of a connection-table miss and the service lookups. A set bit may be a collision: the
 * full lookups decide. */
static __always_inline int may_be_vip(struct pkt *p)
{
	if (vip_filter_bit(hash_addr(p->dst)))
		return 1;
	__be32 net[4] = {p->dst[0], 0, 0, 0};
	if (p->family == XLB_AF_INET)
		net[0] &= bpf_htonl(0xffffff00);
	else
		net[1] = p->dst[1];
	return vip_filter_bit(mix32(hash_addr(net) + 1));
}

/* Find the service for a TCP/UDP packet. *key receives the matched service's key (the persistence identity). A mark
 * rule's hit counts `bytes`; 0: not counted (a lookup for a packet of a known connection, bpf/halfopen.h). */
static __always_inline struct svc_meta *lookup_service(struct pkt *p, struct settings *st, struct svc_key *key,
						       __u64 bytes)
{
	__builtin_memset(key, 0, sizeof(*key));
	key->family = p->family;
	if (st->flags & XLB_SET_F_MARKS) {
		struct mark_val *mv = match_mark(p);
		if (mv) {
			trace_mark(mv);
			__u32 rule = mv->rule_id;
			if (bytes)
				count(mark_stats.lookup(&rule), bytes, 0);
			key->mark = mv->mark;
			struct svc_meta *svc = services.lookup(key);
			if (svc)
				return svc;
			key->mark = 0;
		}
	}
	__builtin_memcpy(key->addr, p->dst, 16);
	key->proto = p->proto;
	key->port = p->dport;
	struct svc_meta *svc = services.lookup(key);
	if (svc)
		return svc;
	/* Port-zero services are persistent by definition (the control plane refuses others). */
	key->port = 0;
	return services.lookup(key);
}

/* Is this fragment's destination one of ours (a VIP or a mark rule's prefix)? */
static __always_inline int is_vip(struct pkt *p)
{
	struct vip_key vk = { .prefixlen = 32 + 128, .family = p->family };
	__builtin_memcpy(vk.addr, p->dst, 16);
	return vip_prefixes.lookup(&vk) != NULL;
}

#endif
