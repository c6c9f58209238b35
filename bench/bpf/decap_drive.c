/* decap_drive.c — the driver of bench/decap.py. Not part of the product.
 *
 * Decapsulation moves the frame's start, so a program rerun on its own output (BPF_PROG_TEST_RUN repeat=N) would
 * see the inner packet from the second run on. xb_decap_drive puts the frame back first: it moves the start back
 * to where the stored frame begins (one bpf_xdp_adjust_head on every run, by 0 bytes after a program that left
 * the frame alone) and writes the stored bytes over it, then tail-calls the program under test
 * (decap_target[0]). The baselines are the same driver in front of XDP_PASS (xb_pass, bench/bpf/baselines.c) and
 * in front of xb_strip, the least a decapsulator does. */
#include <uapi/linux/bpf.h>

#define XB_DECAP_FRAME 128

struct decap_frame {
	__u32 len;                    /* the frame's length: every frame is exactly XB_DECAP_FRAME bytes */
	__u32 pad;
	__u8 bytes[XB_DECAP_FRAME];
};

BPF_ARRAY(decap_frame, struct decap_frame, 1);
BPF_PROG_ARRAY(decap_target, 1);

int xb_decap_drive(struct xdp_md *ctx)
{
	__u32 zero = 0;
	struct decap_frame *f = decap_frame.lookup(&zero);
	if (!f)
		return XDP_ABORTED;
	/* Called on every run, by 0 bytes when the program under test left the frame as it was: the restore is the
	 * harness's cost, and the XDP_PASS baseline must pay it too, or every decapsulation's ratio carries it. */
	int grow = (int)f->len - (int)(ctx->data_end - ctx->data);
	if (grow < 0 || grow >= XB_DECAP_FRAME || bpf_xdp_adjust_head(ctx, -grow))
		return XDP_ABORTED;
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	if (data + XB_DECAP_FRAME > data_end)
		return XDP_ABORTED;
	__builtin_memcpy(data, f->bytes, XB_DECAP_FRAME);
	decap_target.call(ctx, 0);
	return XDP_ABORTED;
}

/* The floor of decapsulation: remove 20 bytes after the Ethernet header (an outer IPv4 header), move the Ethernet
 * header up, pass. No parsing, no lookups, no counting. */
int xb_strip(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u8 eth[14];
	if (data + sizeof(eth) > data_end)
		return XDP_ABORTED;
	__builtin_memcpy(eth, data, sizeof(eth));
	if (bpf_xdp_adjust_head(ctx, 20))
		return XDP_ABORTED;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (data + sizeof(eth) > data_end)
		return XDP_ABORTED;
	__builtin_memcpy(data, eth, sizeof(eth));
	return XDP_PASS;
}
