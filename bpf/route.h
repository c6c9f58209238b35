/* route.h — the route toward an address: bpf_fib_lookup filled from the packet, its result as a verdict reason.
 * The one place that asks the kernel's FIB (next hops to reals, NAT replies to clients). */
#ifndef XLB_ROUTE_H
#define XLB_ROUTE_H

#include "parse.h"

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif

/* Look up the route from src (0: any) to dst (16 bytes, IPv4 in [0]; of family, XLB_AF_*) for packet p, as if it
 * came in on the ingress interface; tot_len: the length to check against the route's MTU (0: none). Returns 0
 * with *fib filled (next hop MACs, egress ifindex; ipv4_dst / ipv6_dst become the gateway when there is one), or
 * a drop reason. */
static __always_inline int route_to(struct xdp_md *ctx, struct pkt *p, __u8 family, __u16 tot_len,
				    const __be32 *src, const __be32 *dst, struct bpf_fib_lookup *fib)
{
	fib->ifindex = ctx->ingress_ifindex;
	fib->l4_protocol = p->proto;
	fib->tot_len = tot_len;
	if (family == XLB_AF_INET) {
		fib->family = AF_INET;
		fib->ipv4_dst = dst[0];
		if (src)
			fib->ipv4_src = src[0];
	} else {
		fib->family = AF_INET6;
		__builtin_memcpy(fib->ipv6_dst, dst, 16);
		if (src)
			__builtin_memcpy(fib->ipv6_src, src, 16);
	}
	int rc = bpf_fib_lookup(ctx, fib, sizeof(*fib), 0);
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH)
		return XLB_DROP_NO_NEIGH;
	if (rc == BPF_FIB_LKUP_RET_FRAG_NEEDED)
		return XLB_DROP_TOO_BIG;
	if (rc != BPF_FIB_LKUP_RET_SUCCESS)
		return XLB_DROP_FIB;
	return 0;
}

/* Address the frame to dmac from smac and send it out of interface ifindex: XDP_TX when that is the ingress
 * interface (reason tx), else a redirect (reason redirect). Returns the verdict reason; *action gets the XDP
 * action. The one sender of forwarded frames (bpf/fwd.h to reals, bpf/nat.h replies to clients). */
static __always_inline int send_hop(struct xdp_md *ctx, __u32 ifindex, const __u8 *dmac, const __u8 *smac, int tx,
				    int redirect, int *action)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end) {
		*action = XDP_DROP;
		return XLB_DROP_TRUNC_ETH;
	}
	__builtin_memcpy(eth->h_dest, dmac, 6);
	__builtin_memcpy(eth->h_source, smac, 6);
	if (ifindex == ctx->ingress_ifindex) {
		*action = XDP_TX;
		return tx;
	}
	*action = bpf_redirect(ifindex, 0);
	return redirect;
}

#endif
