/* nat.h — masquerading (NAT): a packet to a NAT real gets its destination rewritten to the real's address and port;
 * the real's reply, found by its tuple in nat_revs, gets its source rewritten back to VIP:port and goes to the
 * client by the route toward it. Checksums are updated incrementally (RFC 1624), TTL / hop limit decremented:
 * xlb is a router hop for NAT. ICMP errors about NAT'd connections get their outer and embedded headers rewritten
 * (nat_icmp_rewrite; bpf/icmp.h finds their connection). */
#ifndef XLB_NAT_H
#define XLB_NAT_H

#include "conn.h"
#include "maps.h"
#include "parse.h"
#include "route.h"
#include "stats.h"

/* Which side of the packet nat_rewrite changes. */
#define XLB_NAT_DST 0  /* client -> real: destination */
#define XLB_NAT_SRC 1  /* real -> client: source */

/* Ones'-complement arithmetic over 16-bit words as they lie in memory: the sum is the same in any byte order
 * (RFC 1071), so fields are read raw. A checksum delta accumulates ~old + new for each changed word. */
static __always_inline __u32 csum_delta32(__u32 acc, __u32 from, __u32 to)
{
	__u32 nf = ~from;
	return acc + (nf & 0xffff) + (nf >> 16) + (to & 0xffff) + (to >> 16);
}

static __always_inline __u32 csum_delta16(__u32 acc, __u16 from, __u16 to)
{
	return acc + (__u16)~from + to;
}

/* The checksum field's new value: HC' = ~(~HC + delta) (RFC 1624, eqn. 3). */
static __always_inline __u16 csum_apply(__u16 check, __u32 delta)
{
	__u32 s = (__u16)~check + delta;
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return ~s;
}

/* The TCP/UDP half of nat_rewrite: the port, and the checksum by the pseudo-header's delta and the port's. The
 * frame's pointers are read afresh here: the compiler would otherwise spill the L4 pointer before its bounds
 * check and the verifier lose the check on the reload. */
static __always_inline int nat_rewrite_l4(struct xdp_md *ctx, struct pkt *p, int side, __be16 port, __u32 delta)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 off = p->l4_off;
	/* The verifier trusts a bounds check only on a variable offset below 64 KiB minus the header: the parser's
	 * offsets stay below 16 KiB (four IPv6 extension headers of at most 2 KiB). */
	if (off > 0x3fff)
		return XLB_DROP_TRUNC_L4;
	if (p->proto == IPPROTO_TCP) {
		struct tcphdr *th = data + off;
		if ((void *)(th + 1) > data_end)
			return XLB_DROP_TRUNC_L4;
		__u16 old = side == XLB_NAT_SRC ? th->source : th->dest;
		th->check = csum_apply(th->check, csum_delta16(delta, old, port));
		if (side == XLB_NAT_SRC)
			th->source = port;
		else
			th->dest = port;
		return 0;
	}
	struct udphdr *uh = data + off;
	if ((void *)(uh + 1) > data_end)
		return XLB_DROP_TRUNC_L4;
	__u16 old = side == XLB_NAT_SRC ? uh->source : uh->dest;
	if (uh->check || p->family == XLB_AF_INET6) {
		__u16 c = csum_apply(uh->check, csum_delta16(delta, old, port));
		uh->check = c ? c : 0xffff;  /* 0 means "no checksum" in UDP: a computed 0 is sent as all ones */
	}
	if (side == XLB_NAT_SRC)
		uh->source = port;
	else
		uh->dest = port;
	return 0;
}

/* Rewrite the IP header's side (XLB_NAT_SRC / XLB_NAT_DST) to addr (16 bytes, IPv4 in [0]), decrement the TTL / hop
 * limit if hop (xlb forwards the packet itself; not when the kernel will) and fix the IPv4 header's checksum.
 * *delta gets the pseudo-header's change (the TCP/UDP and ICMPv6 checksums cover the addresses). Returns 0 or a drop
 * reason. */
static __always_inline int nat_outer(struct xdp_md *ctx, struct pkt *p, int side, const __be32 *addr, int hop,
				     __u32 *delta)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 d = 0;
	if (p->family == XLB_AF_INET) {
		struct iphdr *iph = data + sizeof(struct ethhdr);
		if ((void *)(iph + 1) > data_end)
			return XLB_DROP_TRUNC_IP;
		if (hop && iph->ttl <= 1)
			return XLB_DROP_TTL;
		__be32 *a = side == XLB_NAT_SRC ? &iph->saddr : &iph->daddr;
		d = csum_delta32(0, *a, addr[0]);
		*a = addr[0];
		/* TTL shares a 16-bit word with the protocol: only the IP header's checksum covers it. */
		__u16 *ttl_word = (__u16 *)&iph->ttl;
		__u16 old_word = *ttl_word;
		iph->ttl -= hop;
		iph->check = csum_apply(iph->check, csum_delta16(d, old_word, *ttl_word));
	} else {
		struct ipv6hdr *ip6 = data + sizeof(struct ethhdr);
		if ((void *)(ip6 + 1) > data_end)
			return XLB_DROP_TRUNC_IP;
		if (hop && ip6->hop_limit <= 1)
			return XLB_DROP_TTL;
		ip6->hop_limit -= hop;
		__be32 *a = side == XLB_NAT_SRC ? ip6->saddr.in6_u.u6_addr32 : ip6->daddr.in6_u.u6_addr32;
#pragma unroll
		for (int i = 0; i < 4; i++) {
			d = csum_delta32(d, a[i], addr[i]);
			a[i] = addr[i];
		}
	}
	*delta = d;
	return 0;
}

/* Rewrite one side's address and port (nat_outer, then the TCP/UDP port and checksum: the pseudo-header's address
 * is the IP header's). A UDP/IPv4 checksum of 0 (none computed) stays 0. Returns 0 or a drop reason; on a drop the
 * frame may be half rewritten (it is dropped). */
static __always_inline int nat_rewrite(struct xdp_md *ctx, struct pkt *p, int side, const __be32 *addr,
				       __be16 port, int hop)
{
	__u32 delta = 0;  /* the L4 checksum's: the pseudo-header's address, then the port */
	int reason = nat_outer(ctx, p, side, addr, hop, &delta);
	if (reason)
		return reason;
	/* A later fragment has no L4 header: its first fragment's checksum covered the whole datagram. */
	if (p->frag_later)
		return 0;
	return nat_rewrite_l4(ctx, p, side, port, delta);
}

/* An ICMP error about a NAT connection, rewritten as IPVS does (ip_vs_nat_icmp): the outer header's side (XLB_NAT_DST:
 * the destination, toward the real; XLB_NAT_SRC: the source, toward the client) gets addr (nat_outer), the embedded
 * packet's opposite side gets addr and port (the quoted packet went the other way). The embedded IPv4 checksum and
 * the ICMP checksum (ICMPv6: with its pseudo-header's addresses) are updated incrementally; the embedded TCP/UDP
 * checksum is left as quoted (IPVS does the same; the 8 quoted bytes hold no TCP checksum). The caller checked the
 * embedded headers lie in the frame; they are checked again here on fresh pointers for the verifier. Returns 0 or a
 * drop reason (the frame may then be half rewritten: dropped). */
static __always_inline int nat_icmp_rewrite(struct xdp_md *ctx, struct pkt *p, int side, const __be32 *addr,
					    __be16 port, int hop)
{
	__u32 delta = 0;  /* the ICMP checksum's: ICMPv6's pseudo-header, the embedded header, its port */
	int reason = nat_outer(ctx, p, side, addr, hop, &delta);
	if (reason)
		return reason;
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 off = p->l4_off;
	if (off > 0x3fff)
		return XLB_DROP_ICMP_TRUNC;
	__u8 *ic = data + off;
	void *emb = ic + 8;
	__be16 *ports;
	if (p->family == XLB_AF_INET) {
		struct iphdr *e = emb;
		if ((void *)(e + 1) > data_end)
			return XLB_DROP_ICMP_TRUNC;
		__be32 *ea = side == XLB_NAT_SRC ? &e->daddr : &e->saddr;
		delta = csum_delta32(0, *ea, addr[0]);  /* ICMP (v4) has no pseudo-header */
		*ea = addr[0];
		__u16 old_check = e->check;
		e->check = csum_apply(old_check, delta);
		delta = csum_delta16(delta, old_check, e->check);
		ports = emb + e->ihl * 4;
	} else {
		struct ipv6hdr *e = emb;
		if ((void *)(e + 1) > data_end)
			return XLB_DROP_ICMP_TRUNC;
		__be32 *ea = side == XLB_NAT_SRC ? e->daddr.in6_u.u6_addr32 : e->saddr.in6_u.u6_addr32;
#pragma unroll
		for (int i = 0; i < 4; i++) {
			delta = csum_delta32(delta, ea[i], addr[i]);
			ea[i] = addr[i];
		}
		ports = (void *)(e + 1);
	}
	if ((void *)(ports + 2) > data_end)
		return XLB_DROP_ICMP_TRUNC;
	__be16 *pp = side == XLB_NAT_SRC ? &ports[1] : &ports[0];
	delta = csum_delta16(delta, *pp, port);
	*pp = port;
	__u16 *check = (__u16 *)(ic + 2);
	*check = csum_apply(*check, delta);
	return 0;
}

/* The port a NAT real receives: its own, or for a real without one (port-zero and fwmark services) the client's. */
static __always_inline __be16 nat_port(struct real *r, struct pkt *p)
{
	return r->port ? r->port : p->dport;
}

/* The reverse key of a NAT connection (its replies' tuple: real:rport -> client) from a client's packet p. */
static __always_inline void nat_rev_key(struct pkt *p, struct real *r, struct conn_key *k)
{
	__builtin_memset(k, 0, sizeof(*k));
	k->sport = nat_port(r, p);
	k->dport = p->sport;
	k->proto = p->proto;
	k->family = p->family;
	__builtin_memcpy(k->src, r->addr, 16);
	__builtin_memcpy(k->dst, p->src, 16);
}

/* Record a new NAT connection's reverse entry (its replies' tuple) beside its connection entry: in nat_half while
 * the connection is half-open (half), moved to nat_revs by its promotion (nat_promote). */
static __always_inline void nat_record(struct pkt *p, struct real *r, __u32 real_id, __u32 svc_id, __u64 now,
				       int half)
{
	if (XLB_TRACING)
		return;
	struct conn_key k;
	nat_rev_key(p, r, &k);
	struct nat_rev v = {
		.vport = p->dport,
		.real_id = real_id,
		.svc_id = svc_id,
		.born_ns = now,
	};
	__builtin_memcpy(v.vip, p->dst, 16);
	if (half)
		nat_half.update(&k, &v);
	else
		nat_revs.update(&k, &v);
}

/* A half-open NAT connection promoted (bpf/halfopen.h): its reverse entry moves from nat_half to nat_revs (with the
 * reply's next hop its SYN-ACK found), or is made anew there if a flood pushed it out of nat_half. */
static __always_inline void nat_promote(struct pkt *p, struct real *r, __u32 real_id, __u32 svc_id, __u64 now)
{
	if (XLB_TRACING)
		return;
	struct conn_key k;
	nat_rev_key(p, r, &k);
	struct nat_rev *hv = nat_half.lookup(&k);
	if (!hv || hv->real_id != real_id) {
		nat_record(p, r, real_id, svc_id, now, 0);
		return;
	}
	struct nat_rev v = *hv;
	if (!nat_revs.update(&k, &v))
		nat_half.delete(&k);
}

/* The NAT connection a reply's tuple (k) belongs to: in nat_revs, else (a half-open one's) in nat_half; 0 if none.
 * A SYN-ACK (syn) answers a handshake: nat_half first, since a reused tuple's earlier connection (the same client
 * port to another VIP on the same real:port) may still have the nat_revs entry until the sweep. *half: found in
 * nat_half. */
static __always_inline struct nat_rev *nat_rev_lookup(struct conn_key *k, int syn, int *half)
{
	struct nat_rev *nr = syn ? nat_half.lookup(k) : 0;
	*half = nr != 0;
	if (!nr)
		nr = nat_revs.lookup(k);
	if (!nr && !syn) {
		nr = nat_half.lookup(k);
		*half = 1;
	}
	return nr;
}

/* Look up the next hop from the VIP toward the reply's client and keep it in the reverse entry (hop). Returns 0 or a
 * verdict reason. */
static __always_inline int nat_reply_hop(struct xdp_md *ctx, struct pkt *p, struct nat_rev *hop, __u32 now)
{
	struct bpf_fib_lookup fib = {};
	int reason = route_to(ctx, p, p->family, p->ip_len, hop->vip, p->dst, &fib);
	if (reason)
		return reason;
	/* The egress interface's MTU, checked per frame as for the reals' next hops (bpf/fwd.h). */
	__u32 mtu = 0;
	if (bpf_check_mtu(ctx, fib.ifindex, &mtu, 0, 0) < 0)
		return XLB_DROP_FIB;
	hop->mtu = mtu > 0xffff ? 0xffff : mtu;
	__builtin_memcpy(hop->dmac, fib.dmac, 6);
	__builtin_memcpy(hop->smac, fib.smac, 6);
	hop->ifindex = fib.ifindex;
	hop->hop_stamp = now ? now : 1;
	return 0;
}

/* The source of a real's reply (icmp: of an ICMP error from the reals' side, outer and embedded) back to vip:vport;
 * hop: decrement the TTL / hop limit (xlb forwards it). */
static __always_inline int nat_reply_rewrite(struct xdp_md *ctx, struct pkt *p, int icmp, const __be32 *vip,
					     __be16 vport, int hop)
{
	if (icmp)
		return nat_icmp_rewrite(ctx, p, XLB_NAT_SRC, vip, vport, hop);
	return nat_rewrite(ctx, p, XLB_NAT_SRC, vip, vport, hop);
}

/* A reply's OutPkts/OutBytes, for its service and its real. */
static __always_inline void nat_count_out(__u32 svc_id, __u32 real_id, __u64 bytes)
{
	count(svc_out_stats.lookup(&svc_id), bytes, 0);
	count(real_out_stats.lookup(&real_id), bytes, 0);
}

/* Rewrite a reply (icmp: an ICMP error) back to vip:vport, count it for svc_id and real_id and send it to the next
 * hop toward its client (ifindex, dmac, smac; mtu: the egress interface's). Returns the verdict reason with *action
 * set (XDP_DROP unless sent). The reply cache's hits (bpf/replycache.h) and nat_reply_send both end here. */
static __always_inline int nat_reply_out(struct xdp_md *ctx, struct pkt *p, int icmp, const __be32 *vip, __be16 vport,
					 __u16 mtu, __u32 ifindex, const __u8 *dmac, const __u8 *smac, __u32 svc_id,
					 __u32 real_id, __u64 bytes, int *action)
{
	*action = XDP_DROP;
	if (p->ip_len > mtu)
		return XLB_DROP_TOO_BIG;
	int reason = nat_reply_rewrite(ctx, p, icmp, vip, vport, 1);
	if (reason)
		return reason;
	nat_count_out(svc_id, real_id, bytes);
	return send_hop(ctx, ifindex, dmac, smac, XLB_FWD_REPLY_TX, XLB_FWD_REPLY_REDIRECT, action);
}

/* Send a packet of NAT connection nr from the reals' side toward its client: a reply (icmp 0) or an ICMP error about
 * the connection (icmp 1: a compile-time constant), rewritten back to VIP:port and sent by the route toward the
 * client (looked up at most once per flow-cache TTL per connection, kept in its reverse entry). Returns the verdict
 * reason with *action set. */
static __always_inline int nat_reply_send(struct xdp_md *ctx, struct pkt *p, struct settings *st, __u64 bytes,
					  struct nat_rev *nr, int icmp, int *action)
{
	struct nat_rev scratch;
	struct nat_rev *hop = nr;
	if (XLB_TRACING) {  /* the trace build writes no map but trace_out */
		scratch = *nr;
		scratch.hop_stamp = 0;
		hop = &scratch;
	}
	__u32 svc_id = hop->svc_id, real_id = hop->real_id;
	__be16 vport = hop->vport;
	*action = XDP_DROP;
	__u32 now = (__u32)bpf_jiffies64();
	if (!hop->hop_stamp || now - hop->hop_stamp >= st->flow_ttl) {
		int reason = nat_reply_hop(ctx, p, hop, now);
		if (reason == XLB_DROP_NO_NEIGH) {
			/* The client's next hop is not resolved (nothing but the kernel's own traffic resolves it): let
			 * the kernel forward this one, rewritten, and resolve it; the next replies go by XDP. */
			reason = nat_reply_rewrite(ctx, p, icmp, hop->vip, vport, 0);
			if (reason)
				return reason;
			nat_count_out(svc_id, real_id, bytes);
			*action = XDP_PASS;
			return XLB_PASS_REPLY_NEIGH;
		}
		if (reason)
			return reason;
	}
	return nat_reply_out(ctx, p, icmp, hop->vip, vport, hop->mtu, hop->ifindex, hop->dmac, hop->smac, svc_id,
			     real_id, bytes, action);
}

#endif
