/* tun.h — tunnel forwarding: put the outer headers toward the real in front of the packet (IPIP, GUE and GRE as
 * IPVS puts them on the wire; GUE without its header as Katran), or answer a packet that would no longer fit the
 * egress MTU with ICMP frag-needed / ICMPv6 Packet Too Big. struct tunnel (tunnels[real id]) says how. */
#ifndef XLB_TUN_H
#define XLB_TUN_H

#include <linux/icmp.h>
#include <linux/icmpv6.h>

#include "maps.h"
#include "parse.h"
#include "hash.h"

#define XLB_GUE_HLEN 4             /* IPVS's GUE header: version 0, no options, the inner protocol */
#define XLB_GRE_HLEN 4             /* flags and version, protocol; 4 more with the checksum */
#define XLB_ICMP_QUOTE4 68         /* ICMP: the largest IPv4 header and 8 bytes of its payload (RFC 792) */
#define XLB_ICMP_QUOTE6 1232       /* ICMPv6: as much as fits 1280 bytes (RFC 4443 2.4(c)) */
#define XLB_PTB_TTL 64

/* The flow's hash: the GUE source port (entropy for ECMP and RSS at the real) and per-flow outer sources. */
static __always_inline __u32 tun_flow_hash(struct pkt *p)
{
	return mix32(hash_addr(p->src) ^ ((((__u32)p->sport << 16) | p->dport) * 0x85ebca77) ^ p->proto);
}

/* Bytes the tunnel puts in front of the inner IP packet. lco: the inner packet's sum is known (struct inner_facts);
 * without it GRE goes without its checksum word. */
static __always_inline __u32 tun_overhead(struct tunnel *t, int lco)
{
	__u32 n = t->family == XLB_AF_INET ? sizeof(struct iphdr) : sizeof(struct ipv6hdr);
	if (t->type == XLB_TUN_GUE)
		n += sizeof(struct udphdr) + (t->flags & XLB_TUN_F_BARE ? 0 : XLB_GUE_HLEN);
	else if (t->type == XLB_TUN_GRE)
		n += XLB_GRE_HLEN + ((t->flags & XLB_TUN_F_CSUM) && lco ? 4 : 0);
	return n;
}

/* Fold a sum of 16/32-bit words to 16 bits of one's complement. */
static __always_inline __u32 csum_fold64(__u64 s)
{
	s = (s & 0xffffffff) + (s >> 32);
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (s & 0xffff) + (s >> 16);
}

static __always_inline __u64 sum_addr(const __be32 *a, int family)
{
	if (family == XLB_AF_INET)
		return a[0];
	return (__u64)a[0] + a[1] + a[2] + a[3];
}

/* What the outer headers copy from the inner packet, read before the frame moves. */
struct inner_facts {
	__u64 sum;                 /* one's complement sum of the whole inner IP packet, when lco */
	__be16 id;                 /* IPv4 identification */
	__be16 df;                 /* IPv4 DF bit (network order), 0 for IPv6 */
	__u8 dsfield;              /* TOS / traffic class, ECN as INET_ECN_encapsulate leaves it */
	__u8 ttl;                  /* TTL / hop limit */
	__u8 lco;                  /* 1: sum is known without reading the payload (a valid TCP/UDP checksum) */
};

/* Is the inner packet's sum known from its headers: a whole TCP or UDP segment (not a fragment, whose checksum
 * covers the datagram; not SCTP, whose CRC32c sums nothing; not ICMP, forwarded errors about a flow)? */
static __always_inline int offloadable(struct pkt *p)
{
	return (p->proto == IPPROTO_TCP || p->proto == IPPROTO_UDP) && !p->fragment;
}

/* Read the inner packet's TOS, TTL, DF and, for the outer checksums, its sum by local checksum offload: a TCP/UDP
 * segment with a valid checksum sums to the complement of its pseudo-header, an IPv4 header to zero, so the sum of
 * the whole packet is known from its headers alone. Returns 0, or -1 if the headers are not in the frame. */
static __always_inline int inner_facts(void *data, void *data_end, struct pkt *p, struct inner_facts *f)
{
	void *ip = data + sizeof(struct ethhdr);
	__u64 s;
	__be16 check;
	__u8 dsf;
	if (p->family == XLB_AF_INET) {
		struct iphdr *iph = ip;
		if ((void *)(iph + 1) > data_end)
			return -1;
		dsf = iph->tos;
		f->ttl = iph->ttl;
		f->id = iph->id;
		f->df = iph->frag_off & bpf_htons(0x4000);
		__u32 hlen = iph->ihl * 4;
		__u8 *l4 = ip + hlen;
		__u32 off = p->proto == IPPROTO_TCP ? 16 : 6;
		if (!offloadable(p))
			goto no_offload;
		if (hlen > 60 || (void *)(l4 + off + 2) > data_end)
			return -1;
		check = *(__be16 *)(l4 + off);
		/* Pseudo-header: addresses, protocol, transport length; the header itself sums to zero. */
		s = (__u64)iph->saddr + iph->daddr + bpf_htons(p->proto) + bpf_htons(p->ip_len - hlen);
		f->sum = (~csum_fold64(s)) & 0xffff;
		f->lco = check != 0;
	} else {
		struct ipv6hdr *ip6 = ip;
		__u8 *b = ip;
		if ((void *)(ip6 + 1) > data_end)
			return -1;
		dsf = (b[0] << 4) | (b[1] >> 4);
		f->ttl = ip6->hop_limit;
		f->id = 0;
		f->df = 0;
		__u8 *l4 = (void *)(ip6 + 1);
		__u32 off = p->proto == IPPROTO_TCP ? 16 : 6;
		if (!offloadable(p))
			goto no_offload;
		if ((void *)(l4 + off + 2) > data_end)
			return -1;
		check = *(__be16 *)(l4 + off);
		/* Header minus pseudo-header: the addresses and the length cancel, leaving the first word, next header
		 * with hop limit, and minus the protocol. Extension headers would add their own bytes: no offload then. */
		s = (__u64)*(__u32 *)b + *(__u16 *)(b + 6) + (__u16)~bpf_htons(p->proto);
		f->sum = s;
		f->lco = check != 0 && ip6->nexthdr == p->proto;
	}
no_offload:
	/* INET_ECN_encapsulate: CE is not copied outward (ECT(0) instead). */
	f->dsfield = (dsf & 3) == 3 ? (dsf & ~3) | 2 : dsf;
	return 0;
}

/* The outer IP header at ip toward dst, for a payload of payload bytes of protocol proto; its source (t->src, host
 * bits from the flow's hash h) goes to src too. IPVS's rules: TOS and TTL copied, DF from an IPv4 inner packet (an
 * IPv6 one goes without), no flow label. */
static __always_inline void put_outer_ip(void *ip, struct tunnel *t, struct inner_facts *f, __u32 h, __u8 proto,
					 __u32 payload, __be32 *src, const __be32 *dst)
{
#pragma unroll
	for (int i = 0; i < 4; i++)
		src[i] = t->src[i] | (h & t->src_host[i]);
	if (t->family == XLB_AF_INET) {
		struct iphdr *o = ip;
		*(__be16 *)o = bpf_htons(0x4500 | f->dsfield);
		o->tot_len = bpf_htons(payload + sizeof(*o));
		o->id = f->id;
		o->frag_off = f->df;
		o->ttl = f->ttl;
		o->protocol = proto;
		o->check = 0;
		o->saddr = src[0];
		o->daddr = dst[0];
		o->check = ~csum_fold64(bpf_csum_diff(0, 0, (__be32 *)o, sizeof(*o), 0));
		return;
	}
	struct ipv6hdr *o6 = ip;
	*(__be32 *)o6 = bpf_htonl(0x60000000 | ((__u32)f->dsfield << 20));
	o6->payload_len = bpf_htons(payload);
	o6->nexthdr = proto;
	o6->hop_limit = f->ttl;
	__builtin_memcpy(&o6->saddr, src, 16);
	__builtin_memcpy(&o6->daddr, dst, 16);
}

/* Answer a packet too big for the tunnel (IPv4 with or without DF, IPv6) with ICMP frag-needed / Packet Too Big
 * from the VIP, carrying mtu, the longest inner packet the tunnel takes. The frame becomes the reply: cut to the
 * quoted part of the packet, the new headers put in front, sent back out of the ingress interface. */
static __always_inline int tun_ptb(struct xdp_md *ctx, struct pkt *p, int mtu, int *action)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	*action = XDP_DROP;
	if ((void *)(eth + 1) > data_end)
		return XLB_DROP_TRUNC_ETH;
	if (mtu < (p->family == XLB_AF_INET ? 68 : 1280))
		return XLB_DROP_TUN_TOO_BIG;
	__u8 client[6], me[6];
	__builtin_memcpy(client, eth->h_source, 6);
	__builtin_memcpy(me, eth->h_dest, 6);
	int v4 = p->family == XLB_AF_INET;
	int quote = v4 ? XLB_ICMP_QUOTE4 : XLB_ICMP_QUOTE6;
	int hdrs = v4 ? sizeof(struct iphdr) + 8 : sizeof(struct ipv6hdr) + 8;
	/* The packet is longer than mtu, itself at least the family's minimum: the quote is there. */
	if (bpf_xdp_adjust_tail(ctx, (int)sizeof(*eth) + quote - (int)(data_end - data)))
		return XLB_DROP_TUN_ADJUST;
	if (bpf_xdp_adjust_head(ctx, -hdrs))
		return XLB_DROP_TUN_ADJUST;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	if (v4) {
		struct iphdr *ip = (void *)(eth + 1);
		struct icmphdr *ic = (void *)(ip + 1);
		if ((void *)(ic + 1) + XLB_ICMP_QUOTE4 > data_end)
			return XLB_DROP_TUN_ADJUST;
		__builtin_memcpy(eth->h_dest, client, 6);
		__builtin_memcpy(eth->h_source, me, 6);
		eth->h_proto = bpf_htons(ETH_P_IP);
		*(__u16 *)ip = bpf_htons(0x4500);
		ip->tot_len = bpf_htons(sizeof(*ip) + sizeof(*ic) + XLB_ICMP_QUOTE4);
		ip->id = 0;
		ip->frag_off = 0;
		ip->ttl = XLB_PTB_TTL;
		ip->protocol = IPPROTO_ICMP;
		ip->check = 0;
		ip->saddr = p->dst[0];
		ip->daddr = p->src[0];
		ip->check = ~csum_fold64(bpf_csum_diff(0, 0, (__be32 *)ip, sizeof(*ip), 0));
		ic->type = ICMP_DEST_UNREACH;
		ic->code = ICMP_FRAG_NEEDED;
		ic->checksum = 0;
		ic->un.frag.__unused = 0;
		ic->un.frag.mtu = bpf_htons(mtu);
		ic->checksum = ~csum_fold64(bpf_csum_diff(0, 0, (__be32 *)ic, sizeof(*ic) + XLB_ICMP_QUOTE4, 0));
	} else {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		struct icmp6hdr *ic6 = (void *)(ip6 + 1);
		__u8 *q = (void *)(ic6 + 1);
		if ((void *)(q + XLB_ICMP_QUOTE6) > data_end)
			return XLB_DROP_TUN_ADJUST;
		__builtin_memcpy(eth->h_dest, client, 6);
		__builtin_memcpy(eth->h_source, me, 6);
		eth->h_proto = bpf_htons(ETH_P_IPV6);
		*(__be32 *)ip6 = bpf_htonl(0x60000000);
		__u32 len = sizeof(*ic6) + XLB_ICMP_QUOTE6;
		ip6->payload_len = bpf_htons(len);
		ip6->nexthdr = IPPROTO_ICMPV6;
		ip6->hop_limit = XLB_PTB_TTL;
		__builtin_memcpy(&ip6->saddr, p->dst, 16);
		__builtin_memcpy(&ip6->daddr, p->src, 16);
		ic6->icmp6_type = ICMPV6_PKT_TOOBIG;
		ic6->icmp6_code = 0;
		ic6->icmp6_cksum = 0;
		ic6->icmp6_mtu = bpf_htonl(mtu);
		/* bpf_csum_diff sums at most 512 bytes a call. */
		__u64 s = sum_addr(p->dst, XLB_AF_INET6) + sum_addr(p->src, XLB_AF_INET6) + bpf_htonl(len) +
			  bpf_htonl(IPPROTO_ICMPV6);
		__u32 c = bpf_csum_diff(0, 0, (__be32 *)ic6, 512, 0);
		c = bpf_csum_diff(0, 0, (__be32 *)((void *)ic6 + 512), 512, c);
		c = bpf_csum_diff(0, 0, (__be32 *)((void *)ic6 + 1024), sizeof(*ic6) + XLB_ICMP_QUOTE6 - 1024, c);
		ic6->icmp6_cksum = ~csum_fold64(s + c);
	}
	*action = XDP_TX;
	return XLB_TUN_PTB;
}

/* Encapsulate the packet toward its real (tunnels[real_id]) for next hop nh. Returns 0 when the frame is ready to
 * send, else the verdict reason with *action set (a drop, or the Packet Too Big reply to send back). */
static __always_inline int encap_tun(struct xdp_md *ctx, struct pkt *p, struct nexthop *nh, __u32 real_id,
				    int *action)
{
	*action = XDP_DROP;
	struct tunnel *t = tunnels.lookup(&real_id);
	struct real *r = reals.lookup(&real_id);
	if (!t || !t->type || !r)
		return XLB_DROP_TUN_NO_TUNNEL;
	struct inner_facts f = {};
	if (inner_facts((void *)(long)ctx->data, (void *)(long)ctx->data_end, p, &f))
		return XLB_DROP_TRUNC_IP;
	int csum = (t->flags & XLB_TUN_F_CSUM) && f.lco;
	__u32 over = tun_overhead(t, f.lco);
	if (p->ip_len + over > nh->mtu) {
		/* xlb does not fragment. Without DF too, the sender is told the MTU: its stack lowers the path's MTU
		 * for any ICMP frag-needed whose quote names its socket, and fragments to fit from then on (a quote
		 * without ports, a later fragment's, changes nothing there). Passing the packet to the kernel instead
		 * would deliver it here or route it without the tunnel. */
		int reason = tun_ptb(ctx, p, (int)nh->mtu - (int)over, action);
		return reason == XLB_TUN_PTB && p->family == XLB_AF_INET && !f.df ? XLB_TUN_PTB_NO_DF : reason;
	}
	__u8 inner_proto = p->family == XLB_AF_INET ? IPPROTO_IPIP : IPPROTO_IPV6;
	__u8 proto = t->type == XLB_TUN_GUE ? IPPROTO_UDP : t->type == XLB_TUN_GRE ? IPPROTO_GRE : inner_proto;
	__u32 h = tun_flow_hash(p);
	if (bpf_xdp_adjust_head(ctx, -(int)over))
		return XLB_DROP_TUN_ADJUST;
	/* adjust_head voids every packet pointer: re-read and re-check. */
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return XLB_DROP_TUN_ADJUST;
	__builtin_memcpy(eth->h_dest, nh->dmac, 6);
	__builtin_memcpy(eth->h_source, nh->smac, 6);
	__be32 src[4];
	__u64 pseudo;
	void *l4;
	__u32 payload;
	if (t->family == XLB_AF_INET) {
		struct iphdr *o = (void *)(eth + 1);
		if ((void *)(o + 1) > data_end)
			return XLB_DROP_TUN_ADJUST;
		eth->h_proto = bpf_htons(ETH_P_IP);
		payload = p->ip_len + over - sizeof(*o);
		put_outer_ip(o, t, &f, h, proto, payload, src, r->addr);
		pseudo = sum_addr(src, XLB_AF_INET) + r->addr[0];
		l4 = o + 1;
	} else {
		struct ipv6hdr *o6 = (void *)(eth + 1);
		if ((void *)(o6 + 1) > data_end)
			return XLB_DROP_TUN_ADJUST;
		eth->h_proto = bpf_htons(ETH_P_IPV6);
		payload = p->ip_len + over - sizeof(*o6);
		put_outer_ip(o6, t, &f, h, proto, payload, src, r->addr);
		pseudo = sum_addr(src, XLB_AF_INET6) + sum_addr(r->addr, XLB_AF_INET6);
		l4 = o6 + 1;
	}
	if (t->type == XLB_TUN_GUE) {
		struct udphdr *uh = l4;
		__be32 *g = (void *)(uh + 1);
		if ((void *)(g + 1) > data_end)
			return XLB_DROP_TUN_ADJUST;
		uh->source = bpf_htons(0xc000 | (h & 0x3fff));
		uh->dest = t->port;
		uh->len = bpf_htons(payload);
		uh->check = 0;
		__u64 s = 0;
		if (!(t->flags & XLB_TUN_F_BARE)) {
			/* Version 0, no control bit, no optional fields; then the inner protocol, no flags. */
			*g = bpf_htonl((__u32)inner_proto << 16);
			s = *g;
		}
		/* IPVS's csum and remcsum both set the UDP checksum (a forwarded packet is never CHECKSUM_PARTIAL, so
		 * IPVS puts no remote-checksum option on it). Without the inner sum: none, which UDP allows. */
		if (csum) {
			s += pseudo + bpf_htons(IPPROTO_UDP) + 2 * (__u64)uh->len + uh->source + uh->dest + f.sum;
			__u16 c = ~csum_fold64(s);
			uh->check = c ? c : 0xffff;
		}
	} else if (t->type == XLB_TUN_GRE) {
		__be16 *g = l4;
		if ((void *)(g + 4) > data_end)
			return XLB_DROP_TUN_ADJUST;
		g[0] = csum ? bpf_htons(0x8000) : 0;
		g[1] = inner_proto == IPPROTO_IPIP ? bpf_htons(ETH_P_IP) : bpf_htons(ETH_P_IPV6);
		if (csum) {
			g[2] = 0;
			g[3] = 0;
			g[2] = ~csum_fold64((__u64)g[0] + g[1] + f.sum);
		}
	}
	return 0;
}

#endif
