/* decap.c — `xlb decap`, the real server's side of tunnel forwarding: strip the outer headers the balancer puts on
 * (IPIP in each family combination, GUE with IPVS's header or Katran's none, GRE) from packets addressed to this
 * host and pass the inner packet to the stack. Everything else passes byte for byte; every verdict is counted. */
#include <uapi/linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>

#include "decap.h"

/* Where the outer IP packet's payload lies, what it carries and to whom. */
struct outer {
	void *l4;                  /* first byte after the outer IP header */
	void *end;                 /* first byte after the outer IP packet (Ethernet padding may follow) */
	void *daddr;               /* the outer destination address (4 or 16 bytes, in the header) */
	__u32 port_kind;           /* UDP: enum xlb_decap_port of the destination port */
	__u8 proto;                /* the outer payload's protocol (a fragment's: from its fragment header) */
	__u8 family;               /* XLB_AF_INET / XLB_AF_INET6 */
	__u8 fragment;             /* 1: an outer fragment */
};

static __always_inline int verdict(__u32 reason, int action, __u64 bytes)
{
	struct counters *c = decap_verdicts.lookup(&reason);
	if (c) {
		c->packets++;
		c->bytes += bytes;
	}
	return action;
}

/* The bytes before p lie inside both the outer IP packet (end) and the frame (data_end). */
static __always_inline int within(void *p, void *end, void *data_end)
{
	return p <= end && p <= data_end;
}

/* Parse the outer IPv4 header at cur into *o; 0, or XLB_DECAP_PASS_BAD_OUTER. */
static __always_inline int outer_ipv4(void *cur, void *data_end, struct outer *o)
{
	struct iphdr *iph = cur;
	if ((void *)(iph + 1) > data_end || iph->version != 4 || iph->ihl < 5)
		return XLB_DECAP_PASS_BAD_OUTER;
	__u32 hlen = iph->ihl * 4;
	__u16 tot = bpf_ntohs(iph->tot_len);
	if (tot < hlen || cur + tot > data_end)
		return XLB_DECAP_PASS_BAD_OUTER;
	o->l4 = cur + hlen;
	o->end = cur + tot;
	o->daddr = &iph->daddr;
	o->proto = iph->protocol;
	o->family = XLB_AF_INET;
	/* MF or an offset: the tunnel header may be elsewhere, and the kernel reassembles better than we could. */
	o->fragment = !!(iph->frag_off & bpf_htons(0x3fff));
	return 0;
}

/* The same for an outer IPv6 header. The balancer adds no extension headers: any but a fragment header means
 * "not a tunnel packet of ours". */
static __always_inline int outer_ipv6(void *cur, void *data_end, struct outer *o)
{
	struct ipv6hdr *ip6 = cur;
	if ((void *)(ip6 + 1) > data_end || ip6->version != 6)
		return XLB_DECAP_PASS_BAD_OUTER;
	o->end = (void *)(ip6 + 1) + bpf_ntohs(ip6->payload_len);
	if (o->end > data_end)
		return XLB_DECAP_PASS_BAD_OUTER;
	o->l4 = ip6 + 1;
	o->daddr = &ip6->daddr;
	o->proto = ip6->nexthdr;
	o->family = XLB_AF_INET6;
	if (o->proto == IPPROTO_FRAGMENT) {
		/* struct frag_hdr: next header first. */
		__u8 *fh = o->l4;
		if (!within(fh + 8, o->end, data_end))
			return XLB_DECAP_PASS_BAD_OUTER;
		o->proto = fh[0];
		o->fragment = 1;
	}
	return 0;
}

/* Is the outer destination one of this host's addresses (decap_local)? */
static __always_inline int is_local(struct outer *o)
{
	__u32 zero = 0;
	struct decap_local *l = decap_local.lookup(&zero);
	if (!l)
		return 0;
	__be32 d[4];
	if (o->family == XLB_AF_INET) {
		__builtin_memcpy(d, o->daddr, 4);
#pragma unroll
		for (int i = 0; i < XLB_DECAP_ADDRS; i++) {
			if (i >= l->n4)
				return 0;
			if (l->v4[i] == d[0])
				return 1;
		}
		return 0;
	}
	__builtin_memcpy(d, o->daddr, 16);
#pragma unroll
	for (int i = 0; i < XLB_DECAP_ADDRS; i++) {
		if (i >= l->n6)
			return 0;
		__be32 *w = &l->v6[i * 4];
		if (w[0] == d[0] && w[1] == d[1] && w[2] == d[2] && w[3] == d[3])
			return 1;
	}
	return 0;
}

/* Is the outer packet one we decapsulate? 0, or the reason to pass it untouched. Cheapest tests first: most
 * traffic on a real server is no tunnel at all and is told so before any map lookup. */
static __always_inline int ours(struct outer *o, void *data_end)
{
	if (o->proto != IPPROTO_IPIP && o->proto != IPPROTO_IPV6 && o->proto != IPPROTO_GRE &&
	    o->proto != IPPROTO_UDP)
		return XLB_DECAP_PASS_NOT_TUNNEL;
	if (o->proto == IPPROTO_UDP && !o->fragment) {
		struct udphdr *uh = o->l4;
		if (!within(uh + 1, o->end, data_end))
			return XLB_DECAP_PASS_BAD_OUTER;
		__u32 port = bpf_ntohs(uh->dest);
		__u32 *kind = decap_ports.lookup(&port);
		if (!kind || *kind == XLB_DECAP_PORT_NONE)
			return XLB_DECAP_PASS_NOT_TUNNEL;
		o->port_kind = *kind;
	}
	if (!is_local(o))
		return XLB_DECAP_PASS_NOT_LOCAL;
	return o->fragment ? XLB_DECAP_PASS_FRAGMENT : 0;
}

/* Check the inner packet at in (family 4 or 6) lies whole inside the outer one; sets *in_end to where it ends.
 * Returns 0 or XLB_DECAP_DROP_BAD_INNER. */
static __always_inline int inner_ok(void *in, int family, void *end, void *data_end, void **in_end)
{
	if (family == 4) {
		struct iphdr *iph = in;
		if (!within((void *)(iph + 1), end, data_end) || iph->version != 4 || iph->ihl < 5)
			return XLB_DECAP_DROP_BAD_INNER;
		__u16 tot = bpf_ntohs(iph->tot_len);
		if (tot < iph->ihl * 4 || in + tot > end)
			return XLB_DECAP_DROP_BAD_INNER;
		*in_end = in + tot;
		return 0;
	}
	struct ipv6hdr *ip6 = in;
	if (!within((void *)(ip6 + 1), end, data_end) || ip6->version != 6)
		return XLB_DECAP_DROP_BAD_INNER;
	*in_end = (void *)(ip6 + 1) + bpf_ntohs(ip6->payload_len);
	if (*in_end > end)
		return XLB_DECAP_DROP_BAD_INNER;
	return 0;
}

/* Remote checksum offload (GUE_PFLAG_REMCSUM): the sender left the inner TCP/UDP checksum field holding only the
 * pseudo-header sum; the receiver sums [in + start, in_end) (that field included) and stores the folded complement
 * in the field at in + offset, as the kernel's remcsum_adjust does. Returns 0, or -1 on offsets out of bounds. */
static __always_inline int finish_remcsum(void *in, void *in_end, void *data_end, __u32 start, __u32 offset)
{
	if (start > XLB_DECAP_CSUM_START_MAX || offset < start || offset > start + XLB_DECAP_CSUM_FIELD_MAX)
		return -1;
	__u8 *field = in + offset;
	if (!within((void *)(field + 2), in_end, data_end))
		return -1;
	void *p = in + start;
	__u32 sum = 0;
	int i;
	/* bpf_csum_diff takes sizes the verifier knows: whole 256-byte blocks, then one of each power of two. */
	for (i = 0; i < XLB_DECAP_CSUM_BLOCKS; i++) {
		if (p + 256 > in_end)
			break;
		if (p + 256 > data_end)
			return -1;
		sum = bpf_csum_diff(0, 0, p, 256, sum);
		p += 256;
	}
	if (i == XLB_DECAP_CSUM_BLOCKS)
		return -1;
#define XLB_CSUM_STEP(n)                                          \
	if (p + (n) <= in_end) {                                  \
		if (p + (n) > data_end)                           \
			return -1;                                \
		sum = bpf_csum_diff(0, 0, p, (n), sum);           \
		p += (n);                                         \
	}
	XLB_CSUM_STEP(128)
	XLB_CSUM_STEP(64)
	XLB_CSUM_STEP(32)
	XLB_CSUM_STEP(16)
	XLB_CSUM_STEP(8)
	XLB_CSUM_STEP(4)
#undef XLB_CSUM_STEP
	/* 0 to 3 bytes left: as one 32-bit word padded with zeroes, which keeps the 16-bit pairing. */
	__u8 tail[4] = {};
	__u8 *b = p;
	if (within(b + 1, in_end, data_end))
		tail[0] = b[0];
	if (within(b + 2, in_end, data_end))
		tail[1] = b[1];
	if (within(b + 3, in_end, data_end))
		tail[2] = b[2];
	sum = bpf_csum_diff(0, 0, (__be32 *)tail, 4, sum);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	__u16 folded = ~sum;
	/* The verifier has forgotten the check above by now: make it again on a pointer the compiler cannot reuse. */
	asm volatile("" : "+r"(offset));
	if (offset > XLB_DECAP_CSUM_START_MAX + XLB_DECAP_CSUM_FIELD_MAX)
		return -1;
	field = in + offset;
	if ((void *)(field + 2) > data_end)
		return -1;
	__builtin_memcpy(field, &folded, 2);
	return 0;
}

/* GUE on a configured port: the inner packet's start and family, or a drop reason. */
static __always_inline int parse_gue(struct outer *o, void *data_end, __u32 kind, void **in, int *family,
				     __u32 *reason)
{
	struct gue_base *g = o->l4 + sizeof(struct udphdr);
	if (!within((void *)(g + 1), o->end, data_end))
		return XLB_DECAP_DROP_TRUNC_TUNNEL;
	__u8 b0 = g->ver_c_hlen;
	if (XLB_GUE_VERSION(b0) == 1) {
		/* Variant 1: the inner IP header itself; its version nibble says which (4: 0100, 6: 0110). */
		*in = g;
		*family = b0 >> 4;
		*reason = XLB_DECAP_GUE_BARE;
		return (*family == 4 || *family == 6) ? 0 : XLB_DECAP_DROP_BAD_GUE;
	}
	if (kind != XLB_DECAP_PORT_GUE || XLB_GUE_VERSION(b0) != 0 || (b0 & XLB_GUE_CONTROL))
		return XLB_DECAP_DROP_BAD_GUE;
	if (g->proto_ctype == IPPROTO_IPIP)
		*family = 4;
	else if (g->proto_ctype == IPPROTO_IPV6)
		*family = 6;
	else
		return XLB_DECAP_DROP_BAD_GUE;
	__u32 optlen = XLB_GUE_HLEN(b0) * 4;
	*in = (void *)(g + 1) + optlen;
	*reason = XLB_DECAP_GUE;
	__u16 flags = bpf_ntohs(g->flags);
	if (flags & ~XLB_GUE_FLAG_PRIV)
		return XLB_DECAP_DROP_BAD_GUE;
	if (!flags)
		return 0;
	/* The private-flags word; with REMCSUM, the (start, offset) field after it. hlen must cover both. */
	__be32 *priv = (void *)(g + 1);
	__be16 *rc = (void *)(priv + 1);
	if (optlen < 4 || !within(rc, o->end, data_end))
		return XLB_DECAP_DROP_BAD_GUE;
	__u32 pflags = bpf_ntohl(*priv);
	if (pflags & ~XLB_GUE_PFLAG_REMCSUM)
		return XLB_DECAP_DROP_BAD_GUE;
	if (!pflags)
		return 0;
	if (optlen < 8 || !within(rc + 2, o->end, data_end))
		return XLB_DECAP_DROP_BAD_GUE;
	void *in_end;
	if (inner_ok(*in, *family, o->end, data_end, &in_end))
		return XLB_DECAP_DROP_BAD_INNER;
	if (finish_remcsum(*in, in_end, data_end, bpf_ntohs(rc[0]), bpf_ntohs(rc[1])))
		return XLB_DECAP_DROP_BAD_GUE;
	return 0;
}

/* GRE as IPVS sends it (no key, no sequence; the checksum word when `csum` is on, not verified here: the inner
 * TCP/UDP checksum still is, by the stack). */
static __always_inline int parse_gre(struct outer *o, void *data_end, void **in, int *family)
{
	struct gre_base *g = o->l4;
	if (!within((void *)(g + 1), o->end, data_end))
		return XLB_DECAP_DROP_TRUNC_TUNNEL;
	__u16 flags = bpf_ntohs(g->flags);
	if (flags & ~XLB_GRE_CSUM)
		return XLB_DECAP_PASS_GRE_OTHER;
	if (g->proto == bpf_htons(ETH_P_IP))
		*family = 4;
	else if (g->proto == bpf_htons(ETH_P_IPV6))
		*family = 6;
	else
		return XLB_DECAP_PASS_GRE_OTHER;
	*in = (void *)(g + 1) + (flags & XLB_GRE_CSUM ? 4 : 0);
	return 0;
}

/* Decide what the outer packet carries: 0 with the inner packet's start, family and the reason to count, or the
 * reason to pass/drop it as it is. */
static __always_inline int classify(struct outer *o, void *data_end, void **in, int *family, __u32 *reason)
{
	if (o->proto == IPPROTO_IPIP || o->proto == IPPROTO_IPV6) {
		*in = o->l4;
		*family = o->proto == IPPROTO_IPIP ? 4 : 6;
		*reason = XLB_DECAP_IPIP;
		return 0;
	}
	if (o->proto == IPPROTO_GRE) {
		*reason = XLB_DECAP_GRE;
		return parse_gre(o, data_end, in, family);
	}
	return parse_gue(o, data_end, o->port_kind, in, family, reason);
}

int xlb_decap(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 bytes = data_end - data;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return verdict(XLB_DECAP_PASS_BAD_OUTER, XDP_PASS, bytes);
	struct outer o = {};
	int ret;
	if (eth->h_proto == bpf_htons(ETH_P_IP))
		ret = outer_ipv4(eth + 1, data_end, &o);
	else if (eth->h_proto == bpf_htons(ETH_P_IPV6))
		ret = outer_ipv6(eth + 1, data_end, &o);
	else
		return verdict(XLB_DECAP_PASS_NOT_IP, XDP_PASS, bytes);
	if (!ret)
		ret = ours(&o, data_end);
	if (ret)
		return verdict(ret, XDP_PASS, bytes);
	void *in = 0, *in_end;
	int family = 0;
	__u32 reason = 0;
	ret = classify(&o, data_end, &in, &family, &reason);
	if (!ret)
		ret = inner_ok(in, family, o.end, data_end, &in_end);
	/* A tunnel packet of ours that is malformed is dropped; GRE the balancer never sends is a kernel device's. */
	if (ret)
		return verdict(ret, ret == XLB_DECAP_PASS_GRE_OTHER ? XDP_PASS : XDP_DROP, bytes);
	/* The Ethernet header moves to just before the inner packet; its type follows the inner family. */
	struct ethhdr e;
	__builtin_memcpy(&e, eth, sizeof(e));
	e.h_proto = family == 4 ? bpf_htons(ETH_P_IP) : bpf_htons(ETH_P_IPV6);
	if (bpf_xdp_adjust_head(ctx, in - data - (int)sizeof(e)))
		return verdict(XLB_DECAP_DROP_ADJUST, XDP_DROP, bytes);
	/* adjust_head voids every packet pointer: re-read and re-check. */
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	if ((void *)(eth + 1) > data_end)
		return verdict(XLB_DECAP_DROP_ADJUST, XDP_DROP, bytes);
	__builtin_memcpy(eth, &e, sizeof(e));
	return verdict(reason, XDP_PASS, bytes);
}
