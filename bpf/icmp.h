/* icmp.h — ICMP and ICMPv6 to a VIP (or a mark rule's prefix). Echo requests are answered here (XDP_TX) while
 * settings say so, as IPVS's director answers for its VIPs. Errors about a VIP flow (destination unreachable,
 * frag-needed, time exceeded, Packet Too Big) go to that flow's real by its method: the flow is the embedded
 * packet (the real's, from the VIP to the client) reversed, looked up in conns; a NAT flow's get the outer
 * destination and the quoted source rewritten to the real's (bpf/nat.h). Errors to other addresses about a NAT
 * connection (from the reals' side, quoting the client's packet as the real got it) go back to the client with the
 * outer source and the quoted destination rewritten to the VIP's, as IPVS does. A frag-needed or Packet Too Big to
 * a VIP whose MTU is below the protocol's minimum is dropped. Everything else passes to the kernel as before. */
#ifndef XLB_ICMP_H
#define XLB_ICMP_H

#include "classify.h"
#include "conn.h"
#include "fwd.h"
#include "maps.h"
#include "parse.h"
#include "stats.h"
#include "trace.h"

#define XLB_ICMP_ECHOREPLY 0
#define XLB_ICMP_DEST_UNREACH 3
#define XLB_ICMP_FRAG_NEEDED 4     /* code of XLB_ICMP_DEST_UNREACH */
#define XLB_ICMP_ECHO 8
#define XLB_ICMP_TIME_EXCEEDED 11
#define XLB_ICMP6_DEST_UNREACH 1
#define XLB_ICMP6_PKT_TOOBIG 2
#define XLB_ICMP6_TIME_EXCEED 3
#define XLB_ICMP6_ECHO_REQUEST 128
#define XLB_ICMP6_ECHO_REPLY 129

#define XLB_ICMP_MIN_MTU 68        /* RFC 791: every IPv4 host takes 68-byte packets */
#define XLB_ICMP6_MIN_MTU 1280     /* RFC 8200 */
#define XLB_ECHO_TTL 64            /* TTL / hop limit of an echo reply (the kernel's default) */
/* Where the ICMP header may start (IPv6 extension headers before it); beyond, the kernel judges the packet. */
#define XLB_ICMP_MAX_OFF 2048

/* A 16-bit word of a checksummed region changed from old to new: the checksum, updated (RFC 1624 eqn. 3). Byte
 * order does not matter as long as all three are in the same one. */
static __always_inline __u16 csum_replace16(__u16 check, __u16 old, __u16 new)
{
	__u32 sum = (__u16)~check + (__u16)~old + (__u32)new;
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return ~sum;
}

/* Turn the echo request into its reply in place: MACs and addresses swapped (the pseudo-header's sum does not
 * change), TTL / hop limit reset, the type changed; both checksums updated for the words that changed. */
static __always_inline int icmp_echo_reply(struct xdp_md *ctx, struct pkt *p, __u8 *ic, __u64 bytes)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return verdict(XLB_DROP_TRUNC_ETH, XDP_DROP, bytes);
	__u8 mac[6];
	__builtin_memcpy(mac, eth->h_source, 6);
	__builtin_memcpy(eth->h_source, eth->h_dest, 6);
	__builtin_memcpy(eth->h_dest, mac, 6);
	__u8 reply_type = XLB_ICMP6_ECHO_REPLY;
	if (p->family == XLB_AF_INET) {
		struct iphdr *iph = (void *)(eth + 1);
		if ((void *)(iph + 1) > data_end)
			return verdict(XLB_DROP_TRUNC_IP, XDP_DROP, bytes);
		__u16 *ttl_word = (__u16 *)&iph->ttl;  /* TTL and protocol: one checksummed word */
		__u16 old = *ttl_word;
		iph->ttl = XLB_ECHO_TTL;
		iph->check = csum_replace16(iph->check, old, *ttl_word);
		__be32 a = iph->saddr;
		iph->saddr = iph->daddr;
		iph->daddr = a;
		reply_type = XLB_ICMP_ECHOREPLY;
	} else {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > data_end)
			return verdict(XLB_DROP_TRUNC_IP, XDP_DROP, bytes);
		ip6->hop_limit = XLB_ECHO_TTL;
		struct in6_addr a = ip6->saddr;
		ip6->saddr = ip6->daddr;
		ip6->daddr = a;
	}
	__u16 *type_word = (__u16 *)ic;  /* type and code */
	__u16 *check = (__u16 *)(ic + 2);
	__u16 old = *type_word;
	ic[0] = reply_type;
	*check = csum_replace16(*check, old, *type_word);
	return verdict(XLB_ICMP_ECHO_REPLY, XDP_TX, bytes);
}

/* The flow an ICMP error quotes, reversed (the embedded packet's source as destination, and so on): for an error to
 * a VIP, the client's flow as conns keys it; for an error from the reals' side about a NAT connection, the real's
 * reply as nat_revs keys it. Returns 0 with *flow filled, XLB_DROP_ICMP_TRUNC (the embedded IP or port header is
 * beyond the frame) or XLB_PASS_OTHER_PROTO (a later fragment, neither TCP nor UDP). */
static __always_inline int icmp_quoted(struct xdp_md *ctx, struct pkt *p, __u8 *ic, struct pkt *flow)
{
	void *data_end = (void *)(long)ctx->data_end;
	void *emb = ic + 8;
	void *ports;
	flow->family = p->family;
	if (p->family == XLB_AF_INET) {
		struct iphdr *e = emb;
		if ((void *)(e + 1) > data_end || e->version != 4 || e->ihl < 5)
			return XLB_DROP_ICMP_TRUNC;
		if (e->frag_off & bpf_htons(0x1fff))
			return XLB_PASS_OTHER_PROTO;  /* a later fragment: no ports to match */
		flow->proto = e->protocol;
		flow->src[0] = e->daddr;
		flow->dst[0] = e->saddr;
		ports = emb + e->ihl * 4;
	} else {
		struct ipv6hdr *e = emb;
		if ((void *)(e + 1) > data_end || e->version != 6)
			return XLB_DROP_ICMP_TRUNC;
		/* Extension headers in the embedded packet: the real's DR replies carry none; not ours. */
		flow->proto = e->nexthdr;
		__builtin_memcpy(flow->src, &e->daddr, 16);
		__builtin_memcpy(flow->dst, &e->saddr, 16);
		ports = e + 1;
	}
	if (flow->proto != IPPROTO_TCP && flow->proto != IPPROTO_UDP)
		return XLB_PASS_OTHER_PROTO;
	/* RFC 792 quotes 8 bytes past the IP header; the ports are the first 4. */
	if (ports + 4 > data_end)
		return XLB_DROP_ICMP_TRUNC;
	flow->sport = ((__be16 *)ports)[1];
	flow->dport = ((__be16 *)ports)[0];
	return 0;
}

/* An error to a VIP about a NAT flow (it quotes a reply, VIP:vport -> client), as IPVS does: the outer destination
 * and the quoted source rewritten to the real's address and port (bpf/nat.h), then to the real's next hop. */
static __always_inline int icmp_error_nat(struct xdp_md *ctx, struct pkt *p, struct pkt *flow, struct real *r,
					  __u32 real_id, int *action)
{
	struct nexthop *nh = 0;
	*action = XDP_DROP;
	int reason = nexthop_lookup(ctx, p, r, real_id, bpf_ktime_get_coarse_ns(), &nh);
	if (reason)
		return reason;
	if (p->ip_len > nh->mtu)
		return XLB_DROP_TOO_BIG;
	reason = nat_icmp_rewrite(ctx, p, XLB_NAT_DST, r->addr, nat_port(r, flow), 1);
	if (reason)
		return reason;
	return send_hop(ctx, nh->ifindex, nh->dmac, nh->smac, XLB_FWD_TX, XLB_FWD_REDIRECT, action);
}

/* An error about a packet the real sent (from the VIP): to that flow's real, by its method. */
static __always_inline int icmp_error(struct xdp_md *ctx, struct pkt *p, __u8 *ic, __u64 bytes)
{
	struct pkt flow = {};  /* the flow as the client sends it: the embedded packet reversed */
	int reason = icmp_quoted(ctx, p, ic, &flow);
	if (reason)
		return verdict(reason, reason == XLB_DROP_ICMP_TRUNC ? XDP_DROP : XDP_PASS, bytes);
	struct conn_key ck;
	conn_key_of(&flow, &ck);
	struct conn *c = conns.lookup(&ck);
	if (!c)
		c = half_open.lookup(&ck);  /* a connection in its handshake (bpf/halfopen.h) */
	trace_conn(c);
	if (!c)
		return verdict(XLB_PASS_OTHER_PROTO, XDP_PASS, bytes);
	__u32 real_id = c->real_id;
	struct real *r = reals.lookup(&real_id);
	if (!r || !(r->flags & XLB_REAL_F_LIVE) || r->gen != c->real_gen)
		return verdict(XLB_PASS_OTHER_PROTO, XDP_PASS, bytes);
	XLB_TRACE_FLAG(XLB_TRACE_F_CONN_HIT);
	count_flow(c->svc_id, real_id, bytes, 0);
	int action = XDP_PASS;
	if (r->method == XLB_METHOD_NAT)
		reason = icmp_error_nat(ctx, p, &flow, r, real_id, &action);
	else
		reason = forward_real(ctx, p, r, real_id, bpf_ktime_get_coarse_ns(), &action);
	return verdict(forwarded(reason) ? XLB_FWD_ICMP_ERROR : reason, action, bytes);
}

/* Is this ICMP / ICMPv6 type an error xlb relays (destination unreachable, time exceeded; Packet Too Big)? */
static __always_inline int icmp_is_error(struct pkt *p, __u8 type)
{
	if (p->family == XLB_AF_INET)
		return type == XLB_ICMP_DEST_UNREACH || type == XLB_ICMP_TIME_EXCEEDED;
	return type == XLB_ICMP6_DEST_UNREACH || type == XLB_ICMP6_PKT_TOOBIG || type == XLB_ICMP6_TIME_EXCEED;
}

/* An ICMP error to no VIP: from the reals' side (the real, or a router between it and the balancer) about a NAT
 * connection when it quotes a client's packet as the real got it (client -> real:rport), found in nat_revs (or
 * nat_half: a half-open one's) by the quote reversed. Rewritten as IPVS does: the outer source and the quoted
 * destination back to VIP:vport, then toward the client as the connection's replies go (bpf/nat.h). Anything else
 * passes untouched: not ours. */
static __always_inline int icmp_error_out(struct xdp_md *ctx, struct pkt *p, struct settings *st, __u8 *ic,
					  __u64 bytes)
{
	struct pkt flow = {};
	if (!(st->flags & XLB_SET_F_NAT) || !icmp_is_error(p, ic[0]) || icmp_quoted(ctx, p, ic, &flow))
		return verdict(XLB_PASS_OTHER_PROTO, XDP_PASS, bytes);
	struct conn_key k;
	conn_key_of(&flow, &k);
	int half;
	struct nat_rev *nr = nat_rev_lookup(&k, 0, &half);  /* a quote's TCP flags are not always there: as any reply */
	if (!nr)
		return verdict(XLB_PASS_OTHER_PROTO, XDP_PASS, bytes);
	int action = XDP_PASS;
	int reason = nat_reply_send(ctx, p, st, bytes, nr, 1, &action);
	if (reason == XLB_FWD_REPLY_TX || reason == XLB_FWD_REPLY_REDIRECT)
		reason = XLB_FWD_ICMP_NAT_OUT;
	return verdict(reason, action, bytes);
}

/* An unfragmented ICMP (IPv4) or ICMPv6 (IPv6) packet whose header starts p->l4_off bytes into the frame. */
static __always_inline int handle_icmp(struct xdp_md *ctx, struct pkt *p, struct settings *st, __u64 bytes)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 off = p->l4_off;
	if (off > XLB_ICMP_MAX_OFF)
		return verdict(XLB_PASS_OTHER_PROTO, XDP_PASS, bytes);
	__u8 *ic = data + off;
	int trunc = (void *)(ic + 8) > data_end;
	/* To no VIP (the VIP filter first: most ICMP a balancer sees is to other addresses): only an error about a NAT
	 * connection is ours; a truncated one is not ours to judge. */
	if (((st->flags & XLB_SET_F_VIP_FILTER) && !may_be_vip(p)) || !is_vip(p))
		return trunc ? verdict(XLB_PASS_OTHER_PROTO, XDP_PASS, bytes) : icmp_error_out(ctx, p, st, ic, bytes);
	if (trunc)
		return verdict(XLB_DROP_ICMP_TRUNC, XDP_DROP, bytes);
	__u8 type = ic[0], code = ic[1];
	if (p->family == XLB_AF_INET) {
		if (type == XLB_ICMP_ECHO && code == 0 && (st->flags & XLB_SET_F_ECHO))
			return icmp_echo_reply(ctx, p, ic, bytes);
		if (type == XLB_ICMP_DEST_UNREACH && code == XLB_ICMP_FRAG_NEEDED &&
		    bpf_ntohs(*(__be16 *)(ic + 6)) < XLB_ICMP_MIN_MTU)
			return verdict(XLB_DROP_ICMP_MTU, XDP_DROP, bytes);
		if (icmp_is_error(p, type))
			return icmp_error(ctx, p, ic, bytes);
	} else {
		if (type == XLB_ICMP6_ECHO_REQUEST && code == 0 && (st->flags & XLB_SET_F_ECHO))
			return icmp_echo_reply(ctx, p, ic, bytes);
		if (type == XLB_ICMP6_PKT_TOOBIG && bpf_ntohl(*(__be32 *)(ic + 4)) < XLB_ICMP6_MIN_MTU)
			return verdict(XLB_DROP_ICMP_MTU, XDP_DROP, bytes);
		if (icmp_is_error(p, type))
			return icmp_error(ctx, p, ic, bytes);
	}
	return verdict(XLB_PASS_OTHER_PROTO, XDP_PASS, bytes);
}

#endif
