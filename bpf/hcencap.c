/* hcencap.c — check_via_vip for tunnel reals: a TC egress program on the balancer's interface toward the reals.
 * A health check's packets carry the mark of their (VIP, real) pair (SO_MARK, xlb/ops/viavip.py); this program
 * wraps each such packet in the tunnel of that real's service (IPIP, GUE with or without its header, GRE; the outer
 * family the real's, the inner the VIP's) with the bytes bpf/tun.h puts on a client's packet: both write them with
 * bpf/tunhdr.h from the same struct tunnel. So the check reaches VIP:port only through the real's decapsulation.
 * Every packet without a known mark leaves untouched. The real answers the balancer directly (not wrapped). */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>

#include "tunhdr.h"

struct hc_dst {
	struct tunnel t;   /* the real's tunnel, as the data plane's tunnels map holds it (xlb/dataplane/tunnels.py) */
	__be32 daddr[4];   /* the real, network order (IPv4 in daddr[0]) */
};

BPF_HASH(hc_reals, __u32, struct hc_dst, 65536);   /* the check socket's mark -> where its packets go */
BPF_ARRAY(hc_counts, __u64, 4);                    /* 0 wrapped, 1 not ours, 2 not IP (left alone), 3 failed */

/* What is pulled into the linear area before reading: Ethernet, the largest IPv4 header, TCP's fixed header. */
#define HC_PULL (ETH_HLEN + 60 + 20)

static __always_inline void count(__u32 i)
{
	__u64 *n = hc_counts.lookup(&i);
	if (n)
		__sync_fetch_and_add(n, 1);
}

/* What the flow hash and the outer headers read from the check's packet, into struct pkt as bpf/parse.h fills it
 * (a check carries no IPv6 extension header). Returns 0, or -1 for a packet that is not IP or is cut short. */
static __always_inline int inner_pkt(void *data, void *data_end, struct pkt *p)
{
	struct ethhdr *eth = data;
	void *l4;
	if ((void *)(eth + 1) > data_end)
		return -1;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > data_end || ip->ihl < 5)
			return -1;
		p->family = XLB_AF_INET;
		p->proto = ip->protocol;
		p->src[0] = ip->saddr;
		p->dst[0] = ip->daddr;
		p->ip_len = bpf_ntohs(ip->tot_len);
		p->fragment = (ip->frag_off & bpf_htons(0x3fff)) != 0;
		l4 = (void *)ip + ip->ihl * 4;
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > data_end)
			return -1;
		p->family = XLB_AF_INET6;
		p->proto = ip6->nexthdr;
		__builtin_memcpy(p->src, &ip6->saddr, 16);
		__builtin_memcpy(p->dst, &ip6->daddr, 16);
		p->ip_len = bpf_ntohs(ip6->payload_len) + sizeof(*ip6);
		l4 = ip6 + 1;
	} else {
		return -1;
	}
	if ((p->proto == IPPROTO_TCP || p->proto == IPPROTO_UDP) && !p->fragment) {
		__be16 *ports = l4;
		if ((void *)(ports + 2) > data_end)
			return -1;
		p->sport = ports[0];
		p->dport = ports[1];
	}
	return 0;
}

/* A check to a real of the other family leaves its policy route with a placeholder next hop (no route of one family
 * goes through a next hop of the other for both: xlb/ops/viavip.py): its frame takes the addresses of the FIB's next
 * hop toward the real, as the data plane's do. Returns the interface to leave by, or 0 without a resolved one. */
static __always_inline __u32 next_hop(struct __sk_buff *skb, struct hc_dst *d, __u8 *mac)
{
	struct bpf_fib_lookup fib = {};
	fib.ifindex = skb->ifindex;
	if (d->t.family == XLB_AF_INET) {
		fib.family = 2;    /* AF_INET */
		fib.ipv4_dst = d->daddr[0];
	} else {
		fib.family = 10;   /* AF_INET6 */
		__builtin_memcpy(fib.ipv6_dst, d->daddr, 16);
	}
	if (bpf_fib_lookup(skb, &fib, sizeof(fib), BPF_FIB_LOOKUP_OUTPUT) != BPF_FIB_LKUP_RET_SUCCESS)
		return 0;
	__builtin_memcpy(mac, fib.dmac, 6);
	__builtin_memcpy(mac + 6, fib.smac, 6);
	return fib.ifindex;
}

int xlb_hc_encap(struct __sk_buff *skb)
{
	__u32 mark = skb->mark;
	struct hc_dst *d = hc_reals.lookup(&mark);
	if (!d) {
		count(1);
		return TC_ACT_OK;
	}
	__u32 pull = skb->len < HC_PULL ? skb->len : HC_PULL;
	bpf_skb_pull_data(skb, pull);
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct pkt p = {};
	struct inner_facts f = {};
	if (inner_pkt(data, data_end, &p) || inner_facts(data, data_end, &p, &f)) {
		count(2);
		return TC_ACT_OK;
	}
	struct tunnel *t = &d->t;
	__u8 mac[12];
	__u32 oif = 0;
	if (t->family != p.family) {
		oif = next_hop(skb, d, mac);
		if (!oif) {
			count(3);
			return TC_ACT_SHOT;
		}
	}
	__u32 over = tun_overhead(t, f.lco);
	__u32 h = tun_flow_hash(&p);
	__u64 flags = t->family == XLB_AF_INET ? BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 : BPF_F_ADJ_ROOM_ENCAP_L3_IPV6;
	if (t->type == XLB_TUN_GUE)
		flags |= BPF_F_ADJ_ROOM_ENCAP_L4_UDP;
	else if (t->type == XLB_TUN_GRE)
		flags |= BPF_F_ADJ_ROOM_ENCAP_L4_GRE;
	/* Room for the outer headers right after Ethernet; the kernel sets skb->protocol to the outer family. */
	if (bpf_skb_adjust_room(skb, over, BPF_ADJ_ROOM_MAC, flags)) {
		count(3);
		return TC_ACT_SHOT;
	}
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end ||
	    tun_put(eth + 1, data_end, t, &f, h, p.family, p.ip_len, over, d->daddr)) {
		count(3);
		return TC_ACT_SHOT;
	}
	eth->h_proto = t->family == XLB_AF_INET ? bpf_htons(ETH_P_IP) : bpf_htons(ETH_P_IPV6);
	count(0);
	if (!oif)
		return TC_ACT_OK;
	__builtin_memcpy(eth->h_dest, mac, 6);
	__builtin_memcpy(eth->h_source, mac + 6, 6);
	if (oif == skb->ifindex)
		return TC_ACT_OK;
	skb->mark = 0;     /* wrapped once: on the other interface's egress it is not a check to wrap again */
	return bpf_redirect(oif, 0);
}
