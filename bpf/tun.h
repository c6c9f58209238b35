/* tun.h — tunnel forwarding: put the outer headers toward the real in front of the packet (IPIP, GUE and GRE as
 * IPVS puts them on the wire; GUE without its header as Katran), or answer a packet that would no longer fit the
 * egress MTU with ICMP frag-needed / ICMPv6 Packet Too Big. struct tunnel (tunnels[real id]) says how. */
#ifndef XLB_TUN_H
#define XLB_TUN_H

#include <linux/icmp.h>
#include <linux/icmpv6.h>

#include "maps.h"
#include "tunhdr.h"

#define XLB_ICMP_QUOTE4 68         /* ICMP: the largest IPv4 header and 8 bytes of its payload (RFC 792) */
#define XLB_ICMP_QUOTE6 1232       /* ICMPv6: as much as fits 1280 bytes (RFC 4443 2.4(c)) */
#define XLB_PTB_TTL 64

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
	__u32 over = tun_overhead(t, f.lco);
	if (p->ip_len + over > nh->mtu) {
		/* xlb does not fragment. Without DF too, the sender is told the MTU: its stack lowers the path's MTU
		 * for any ICMP frag-needed whose quote names its socket, and fragments to fit from then on (a quote
		 * without ports, a later fragment's, changes nothing there). Passing the packet to the kernel instead
		 * would deliver it here or route it without the tunnel. */
		int reason = tun_ptb(ctx, p, (int)nh->mtu - (int)over, action);
		return reason == XLB_TUN_PTB && p->family == XLB_AF_INET && !f.df ? XLB_TUN_PTB_NO_DF : reason;
	}
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
	eth->h_proto = t->family == XLB_AF_INET ? bpf_htons(ETH_P_IP) : bpf_htons(ETH_P_IPV6);
	if (tun_put(eth + 1, data_end, t, &f, h, p->family, p->ip_len, over, r->addr))
		return XLB_DROP_TUN_ADJUST;
	return 0;
}

#endif
