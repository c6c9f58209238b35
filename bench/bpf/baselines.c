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
static __always_inline int min_fwd(struct xdp_md *ctx)
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

int xb_min_fwd(struct xdp_md *ctx)
{
	return min_fwd(ctx);
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

/* Floors for stateful forwarding: the least any load balancer that keeps per-flow state must add to xb_min_fwd.
 * Both read the IPv4 client address and ports at fixed offsets (no options): the bench sends nothing else. */
struct xb_flow {
	__u32 saddr;
	__u32 ports;
};

static __always_inline int xb_flow_of(struct xdp_md *ctx, struct xb_flow *f)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *iph = (void *)(eth + 1);
	__u32 *ports = (void *)(iph + 1);
	if ((void *)(ports + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return -1;
	f->saddr = iph->saddr;
	f->ports = *ports;
	return 0;
}

/* One 64-byte entry per flow, in a table as dense as can be: as many entries as the bench's flows (16384, 1 MB),
 * indexed by a hash of the client address and ports. */
struct xb_state {
	__u64 v[8];
};
BPF_ARRAY(xb_states, struct xb_state, 16384);

int xb_flow_read(struct xdp_md *ctx)
{
	struct xb_flow f;
	if (xb_flow_of(ctx, &f))
		return XDP_PASS;
	__u32 h = (f.saddr ^ (f.ports * 0x9e3779b1)) * 0x85ebca6b;
	__u32 idx = (h ^ (h >> 15)) & 16383;
	struct xb_state *s = xb_states.lookup(&idx);
	if (!s || s->v[0] == 1)
		return XDP_DROP;
	return min_fwd(ctx);
}

/* Recording a new flow: one insert into a 1M-entry LRU hash with per-CPU lists, as xlb's connection table. */
struct xb_conn_key {
	__u32 saddr;
	__u32 ports;
};
BPF_TABLE("lru_hash", struct xb_conn_key, struct xb_state, xb_conns, 1048576);

int xb_conn_insert(struct xdp_md *ctx)
{
	struct xb_flow f;
	if (xb_flow_of(ctx, &f))
		return XDP_PASS;
	struct xb_conn_key k = {.saddr = f.saddr, .ports = f.ports};
	struct xb_state s = {};
	if (xb_conns.update(&k, &s))
		return XDP_DROP;
	return min_fwd(ctx);
}
