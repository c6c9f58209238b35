/* baselines.c — the reference points xlb's per-packet cost is measured against (bench/micro.py) and the forwarding
 * floor (bench/forward.py). Not part of the product. */
#include <uapi/linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>

int xb_drop(struct xdp_md *ctx)
{
	return XDP_DROP;
}

int xb_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

/* The least a forwarder must do: parse Ethernet and the IP header, rewrite both MACs, send it back out. */
int xb_min_fwd(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return XDP_DROP;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *iph = (void *)(eth + 1);
		if ((void *)(iph + 1) > data_end)
			return XDP_DROP;
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > data_end)
			return XDP_DROP;
	} else {
		return XDP_PASS;
	}
	const __u8 dmac[6] = {0x02, 0, 0, 0, 0, 0x11};
	const __u8 smac[6] = {0x02, 0, 0, 0, 0, 0x02};
	__builtin_memcpy(eth->h_dest, dmac, 6);
	__builtin_memcpy(eth->h_source, smac, 6);
	return XDP_TX;
}

/* The forwarding floor: every frame straight to one interface (floor_out[0], an ifindex). */
BPF_ARRAY(floor_out, __u32, 1);

int xb_floor(struct xdp_md *ctx)
{
	__u32 zero = 0;
	__u32 *ifindex = floor_out.lookup(&zero);
	if (!ifindex)
		return XDP_DROP;
	return bpf_redirect(*ifindex, 0);
}
