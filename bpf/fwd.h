/* fwd.h — forwarding to the chosen real. Direct routing: the IP packet is untouched; the Ethernet header is
 * rewritten toward the real, whose next hop and egress interface come from bpf_fib_lookup (cached per CPU).
 * Tunnelled reals (XLB_REAL_F_TUN) get their outer headers from bpf/tun.h. */
#ifndef XLB_FWD_H
#define XLB_FWD_H

#include "maps.h"
#include "parse.h"
#include "trace.h"
#include "tun.h"

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif

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
	fib.ifindex = ctx->ingress_ifindex;
	int tun = r->flags & XLB_REAL_F_TUN;
	fib.l4_protocol = p->proto;
	/* A tunnel's packets are longer than this one: send_tun checks them against the device's MTU. */
	fib.tot_len = tun ? 0 : p->ip_len;
	if (r->family == XLB_AF_INET) {
		fib.family = AF_INET;
		fib.ipv4_dst = r->addr[0];
	} else {
		fib.family = AF_INET6;
		__builtin_memcpy(fib.ipv6_dst, r->addr, 16);
	}
	int rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH)
		return XLB_DROP_NO_NEIGH;
	if (rc == BPF_FIB_LKUP_RET_FRAG_NEEDED)
		return XLB_DROP_TOO_BIG;
	if (rc != BPF_FIB_LKUP_RET_SUCCESS)
		return XLB_DROP_FIB;
	/* bpf_fib_lookup replaces the destination with the gateway when there is one: DR needs the real on-link (a
	 * tunnel's outer packet may go through a gateway). */
	if (!tun && (r->family == XLB_AF_INET ? fib.ipv4_dst != r->addr[0] : !addr_eq(fib.ipv6_dst, r->addr)))
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

/* Send the frame, addressed to next hop nh, out of its interface. */
static __always_inline int send_nh(struct xdp_md *ctx, struct nexthop *nh, int *action)
{
	if (nh->ifindex == ctx->ingress_ifindex) {
		*action = XDP_TX;
		return XLB_FWD_TX;
	}
	*action = bpf_redirect(nh->ifindex, 0);
	return XLB_FWD_REDIRECT;
}

/* Direct routing: address the frame to next hop nh and send it. Returns the verdict reason; *action gets the
 * XDP action. */
static __always_inline int send_dr(struct xdp_md *ctx, struct pkt *p, struct nexthop *nh, int *action)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end) {
		*action = XDP_DROP;
		return XLB_DROP_TRUNC_ETH;
	}
	/* Checked per frame: the cached next hop was looked up for some earlier, maybe shorter, packet. */
	if (p->ip_len > nh->mtu) {
		*action = XDP_DROP;
		return XLB_DROP_TOO_BIG;
	}
	__builtin_memcpy(eth->h_dest, nh->dmac, 6);
	__builtin_memcpy(eth->h_source, nh->smac, 6);
	return send_nh(ctx, nh, action);
}

/* Tunnel: the outer headers toward the real (bpf/tun.h), then out to next hop nh. */
static __always_inline int send_tun(struct xdp_md *ctx, struct pkt *p, struct nexthop *nh, __u32 real_id,
				    int *action)
{
	int reason = encap_tun(ctx, p, nh, real_id, action);
	return reason ? reason : send_nh(ctx, nh, action);
}

/* Send the packet to real r, by its method. Returns the verdict reason; *action gets the XDP action. */
static __always_inline int forward(struct xdp_md *ctx, struct pkt *p, struct real *r, __u32 real_id, __u64 now,
				   int *action)
{
	XLB_TRACE_NOTE(real_id, real_id);
	struct nexthop *nh = 0;
	int reason = nexthop_lookup(ctx, p, r, real_id, now, &nh);
	if (reason) {
		*action = XDP_DROP;
		return reason;
	}
	if (r->flags & XLB_REAL_F_TUN)
		return send_tun(ctx, p, nh, real_id, action);
	return send_dr(ctx, p, nh, action);
}

#endif
