/* fwd.h — forwarding to the chosen real. Direct routing: the IP packet is untouched; the Ethernet header is
 * rewritten toward the real, whose next hop and egress interface come from bpf_fib_lookup (cached per CPU).
 * NAT rewrites the IP packet first (bpf/nat.h); tunnelled reals get their outer headers from bpf/tun.h.
 * forward_real is the one dispatch, on the real's method, for new and established flows, ICMP errors about a
 * flow and later fragments (bpf/icmp.h, bpf/frag.h). */
#ifndef XLB_FWD_H
#define XLB_FWD_H

#include "maps.h"
#include "nat.h"
#include "parse.h"
#include "route.h"
#include "trace.h"
#include "tun.h"

/* 16-byte address equality (BPF has no memcmp). */
static __always_inline int addr_eq(const __be32 *a, const __be32 *b)
{
	return ((a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3])) == 0;
}

/* Is this per-CPU next-hop entry filled, for this generation of the real? */
static __always_inline int nexthop_for(struct nexthop *nh, __u32 real_gen)
{
	return nh->stamp_ns && nh->real_gen == real_gen;
}

/* Resolve the real's next hop. Returns 0 with *nh filled, or a drop reason. */
static __always_inline int nexthop_lookup(struct xdp_md *ctx, struct pkt *p, struct real *r, __u32 real_id,
					  __u64 now, struct nexthop **out)
{
	struct nexthop *nh = nh_cache.lookup(&real_id);
	if (!nh)
		return XLB_DROP_INTERNAL;
	if (nexthop_for(nh, r->gen) && now - nh->stamp_ns < XLB_NH_TTL_NS) {
		*out = nh;
		return 0;
	}
	struct bpf_fib_lookup fib = {};
	int tun = r->method == XLB_METHOD_TUN;
	/* A tunnel's packets are longer than this one (send_tun checks them against the device's MTU), and its real
	 * may be of the other family (4in6, 6in4). */
	int reason = route_to(ctx, p, r->family, tun ? 0 : p->ip_len, 0, r->addr, &fib);
	if (reason)
		return reason;
	/* bpf_fib_lookup replaces the destination with the gateway when there is one: DR needs the real on-link
	 * (NAT does not: it routes by the rewritten destination; nor a tunnel, whose outer packet may go through a
	 * gateway). */
	if (r->method == XLB_METHOD_DR &&
	    (r->family == XLB_AF_INET ? fib.ipv4_dst != r->addr[0] : !addr_eq(fib.ipv6_dst, r->addr)))
		return XLB_DROP_NOT_ONLINK;
	/* The egress interface's MTU, for send_dr's per-frame check (fib's mtu_result is set only on FRAG_NEEDED;
	 * bpf_check_mtu writes the device's MTU whatever this frame's length). */
	__u32 mtu = 0;
	if (bpf_check_mtu(ctx, fib.ifindex, &mtu, 0, 0) < 0)
		return XLB_DROP_FIB;
	XLB_TRACE_SCRATCH_NH(nh);
	nh->mtu = mtu > 0xffff ? 0xffff : mtu;
	__builtin_memcpy(nh->dmac, fib.dmac, 6);
	__builtin_memcpy(nh->smac, fib.smac, 6);
	nh->ifindex = fib.ifindex;
	nh->real_gen = r->gen;
	nh->stamp_ns = now;
	*out = nh;
	return 0;
}

/* Direct routing: address the frame to next hop nh and send it. Returns the verdict reason; *action gets the XDP
 * action. */
static __always_inline int send_dr(struct xdp_md *ctx, struct pkt *p, struct nexthop *nh, int *action)
{
	/* Checked per frame: the cached next hop was looked up for some earlier, maybe shorter, packet. */
	if (p->ip_len > nh->mtu) {
		*action = XDP_DROP;
		return XLB_DROP_TOO_BIG;
	}
	return send_hop(ctx, nh->ifindex, nh->dmac, nh->smac, XLB_FWD_TX, XLB_FWD_REDIRECT, action);
}

/* Tunnel: the outer headers toward the real (bpf/tun.h), then out to next hop nh (encap_tun addressed the frame
 * already; send_hop's copy of the MACs is the same bytes again). */
static __always_inline int send_tun(struct xdp_md *ctx, struct pkt *p, struct nexthop *nh, __u32 real_id,
				    int *action)
{
	int reason = encap_tun(ctx, p, nh, real_id, action);
	return reason ? reason : send_hop(ctx, nh->ifindex, nh->dmac, nh->smac, XLB_FWD_TX, XLB_FWD_REDIRECT, action);
}

/* Send the packet to real r by its method, to next hop nh. Returns the verdict reason; *action gets the XDP
 * action. */
static __always_inline int send_real(struct xdp_md *ctx, struct pkt *p, struct real *r, __u32 real_id,
				     struct nexthop *nh, int *action)
{
	if (r->method == XLB_METHOD_NAT) {
		/* Checked before the rewrite: a frame that send_dr drops as too big is dropped whole. */
		int reason = p->ip_len > nh->mtu ? XLB_DROP_TOO_BIG : nat_rewrite(ctx, p, XLB_NAT_DST, r->addr,
										   nat_port(r, p), 1);
		if (reason) {
			*action = XDP_DROP;
			return reason;
		}
	}
	if (r->method == XLB_METHOD_TUN)
		return send_tun(ctx, p, nh, real_id, action);
	return send_dr(ctx, p, nh, action);
}

/* Send the packet to real r. Returns the verdict reason; *action gets the XDP action. */
static __always_inline int forward_real(struct xdp_md *ctx, struct pkt *p, struct real *r, __u32 real_id,
					__u64 now, int *action)
{
	XLB_TRACE_NOTE(real_id, real_id);
	struct nexthop *nh = 0;
	int reason = nexthop_lookup(ctx, p, r, real_id, now, &nh);
	if (reason) {
		*action = XDP_DROP;
		return reason;
	}
	return send_real(ctx, p, r, real_id, nh, action);
}

/* Did forward_real send the packet (fwd_tx or fwd_redirect)? */
static __always_inline int forwarded(int reason)
{
	return reason == XLB_FWD_TX || reason == XLB_FWD_REDIRECT;
}

#endif
