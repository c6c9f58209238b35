/* traffic.c — flows for the benchmarks. Not part of the product.
 *
 * Every run of xb_gen or xb_drive writes the template's headers over the frame (live frames keep what the stack
 * or the program under test wrote into a page: MACs, TTL, DNAT addresses), turns it into the next flow of a set
 * (client address and source port, from a per-CPU counter) and fixes the checksums from the template's.
 * - xb_gen (bench/forward.py) runs under BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES and redirects the
 *   frame out of gen_cfg.ifindex: the load generator.
 * - xb_drive (bench/micro.py) tail-calls the program under test (drive_target[0]): with repeat=N, N runs over
 *   N successive flows on warm caches. Each run first shrinks the frame back to the template's length, since
 *   repeat=N reruns on the previous run's output and a target that encapsulates (Katran's IPIP) grew it.
 * xb_sink counts what arrives and drops it. */
#include <uapi/linux/bpf.h>
#include <linux/in.h>

struct gen_cfg {
	__u32 ifindex;     /* where generated frames leave */
	__u32 nflows;      /* flows cycled through: nclients clients x (nflows / nclients) source ports */
	__u32 nclients;
	__u16 ip_csum;     /* the template's IPv4 header checksum, as stored (client 0) */
	__u16 l4_csum;     /* the template's TCP/UDP checksum, as stored (client 0, first port) */
	__u16 sport;       /* the template's source port, host order */
	__u8 family;       /* 4 or 6 */
	__u8 proto;        /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 frame[80];    /* the template frame (client 0, first port); at least 60 bytes are used */
	__u16 len;         /* the template frame's length, bytes */
};

BPF_ARRAY(gen_cfg, struct gen_cfg, 1);
BPF_PERCPU_ARRAY(gen_pos, __u32, 1);
BPF_PERCPU_ARRAY(sink_count, __u64, 1);
BPF_PROG_ARRAY(drive_target, 1);

/* RFC 1624 incremental update of a stored checksum for two 16-bit words changing from 0 / old2. */
static __always_inline __u16 csum_update(__u16 csum, __u16 new1, __u16 old2, __u16 new2)
{
	__u32 s = (__u16)~csum;
	s += new1;
	s += (__u16)~old2;
	s += new2;
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return ~s;
}

/* Rewrite the frame into the next flow; returns 0, or -1 when the frame or the configuration is wrong. */
static __always_inline int next_flow(struct xdp_md *ctx, struct gen_cfg *c)
{
	__u32 zero = 0;
	__u32 *pos = gen_pos.lookup(&zero);
	if (!pos || !c->nflows || !c->nclients)
		return -1;
	__u32 f = *pos % c->nflows;
	*pos += 1;
	/* Client addresses end in 1..nclients (the template's ends in 0); ports follow the template's. */
	__u16 client = bpf_htons(1 + f % c->nclients);
	__u16 sport = bpf_htons(c->sport + f / c->nclients);
	__u16 sport0 = bpf_htons(c->sport);
	__u8 *d = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u16 l4_csum = csum_update(c->l4_csum, client, sport0, sport);
	if (c->proto == IPPROTO_UDP && !l4_csum)
		l4_csum = 0xffff;
	if ((void *)(d + 60) > data_end)
		return -1;
	__builtin_memcpy(d, c->frame, 60);
	if ((void *)(d + 74) <= data_end)
		__builtin_memcpy(d + 60, c->frame + 60, 14);
	/* Fixed offsets per layout: Ethernet 14, IPv4 20 / IPv6 40, then TCP (checksum at +16) or UDP (+6). */
	if (c->family == 4) {
		if ((void *)(d + 54) > data_end)
			return -1;
		*(__u16 *)(d + 28) = client;                 /* low half of the source address */
		*(__u16 *)(d + 24) = csum_update(c->ip_csum, client, 0, 0);
		*(__u16 *)(d + 34) = sport;
		if (c->proto == IPPROTO_TCP)
			*(__u16 *)(d + 50) = l4_csum;
		else
			*(__u16 *)(d + 40) = l4_csum;
	} else {
		if ((void *)(d + 62) > data_end)
			return -1;
		*(__u16 *)(d + 36) = client;                 /* last 16 bits of the source address */
		*(__u16 *)(d + 54) = sport;
		if (c->proto == IPPROTO_TCP) {
			if ((void *)(d + 74) > data_end)
				return -1;
			*(__u16 *)(d + 70) = l4_csum;
		} else {
			*(__u16 *)(d + 60) = l4_csum;
		}
	}
	return 0;
}

int xb_gen(struct xdp_md *ctx)
{
	__u32 zero = 0;
	struct gen_cfg *c = gen_cfg.lookup(&zero);
	if (!c || next_flow(ctx, c))
		return XDP_ABORTED;
	return bpf_redirect(c->ifindex, 0);
}

int xb_drive(struct xdp_md *ctx)
{
	__u32 zero = 0;
	struct gen_cfg *c = gen_cfg.lookup(&zero);
	if (!c)
		return XDP_ABORTED;
	/* Undo what the previous run grew (Katran's IPIP: 20 bytes in front). Every target pays this helper call,
	 * a zero adjustment for those that did not grow the frame, so the charge is the same for all. */
	int grown = (int)((long)ctx->data_end - (long)ctx->data) - c->len;
	if (bpf_xdp_adjust_head(ctx, grown) || next_flow(ctx, c))
		return XDP_ABORTED;
	drive_target.call(ctx, 0);
	return XDP_ABORTED;  /* no target */
}

int xb_sink(struct xdp_md *ctx)
{
	__u32 zero = 0;
	__u64 *n = sink_count.lookup(&zero);
	if (n)
		*n += 1;
	return XDP_DROP;
}
