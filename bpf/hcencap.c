/* hcencap.c — check_via_vip for tunnel reals: a TC egress program on the balancer's interface toward the reals.
 * A health check's packets carry the mark of their (VIP, real) pair (SO_MARK, xlb/ops/viavip.py); this program
 * wraps each such packet in the outer IP header of IPIP to that real, as bpf/tun.h wraps a client's, so the check
 * reaches VIP:port only through the real's decapsulation. Same family only (4in4, 6in6); every other packet, and
 * every packet without a known mark, leaves untouched. The real answers the balancer directly (not wrapped). */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>

#define HC_AF_INET 4
#define HC_AF_INET6 6

struct hc_dst {
	__u32 saddr[4];   /* the outer source (network order; IPv4 in saddr[0]) */
	__u32 daddr[4];   /* the real */
	__u8 family;      /* HC_AF_INET or HC_AF_INET6: the outer's (and the inner's) */
	__u8 pad[3];
};

BPF_HASH(hc_reals, __u32, struct hc_dst, 65536);   /* the check socket's mark -> where its packets go */
BPF_ARRAY(hc_counts, __u64, 4);                    /* 0 wrapped, 1 not ours, 2 wrong family, 3 failed */

static __always_inline int count(__u32 i)
{
	__u64 *n = hc_counts.lookup(&i);
	if (n)
		__sync_fetch_and_add(n, 1);
	return TC_ACT_OK;
}

static __always_inline __u16 hc_csum_fold(__u64 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return ~sum;
}

/* Make room for the outer header right after Ethernet and write it there. */
static __always_inline int wrap(struct __sk_buff *skb, void *outer, __u32 size, __u64 flags)
{
	if (bpf_skb_adjust_room(skb, size, BPF_ADJ_ROOM_MAC, flags))
		return count(3);
	if (bpf_skb_store_bytes(skb, ETH_HLEN, outer, size, 0) < 0)
		return count(3);
	return count(0);
}

/* The inner packet's header, of the outer's family: 0, or why the packet is left alone (a hc_counts index). */
static __always_inline __u32 inner_header(struct __sk_buff *skb, __u16 proto, void *hdr, __u32 size)
{
	if (skb->protocol != bpf_htons(proto))
		return 2;
	if (bpf_skb_load_bytes(skb, ETH_HLEN, hdr, size) < 0)
		return 3;
	return 0;
}

static __always_inline int wrap4(struct __sk_buff *skb, struct hc_dst *d, __u32 len)
{
	struct iphdr inner;
	__u32 why = inner_header(skb, ETH_P_IP, &inner, sizeof(inner));
	if (why)
		return count(why);
	struct iphdr outer = {.version = 4, .ihl = 5, .tos = inner.tos, .ttl = 64, .protocol = IPPROTO_IPIP,
			      .tot_len = bpf_htons(len + sizeof(struct iphdr)),
			      .frag_off = bpf_htons(0x4000),   /* DF, as the check's own packets */
			      .saddr = d->saddr[0], .daddr = d->daddr[0]};
	outer.check = hc_csum_fold(bpf_csum_diff(0, 0, (__be32 *)&outer, sizeof(outer), 0));
	return wrap(skb, &outer, sizeof(outer), BPF_F_ADJ_ROOM_ENCAP_L3_IPV4);
}

static __always_inline int wrap6(struct __sk_buff *skb, struct hc_dst *d, __u32 len)
{
	struct ipv6hdr inner;
	__u32 why = inner_header(skb, ETH_P_IPV6, &inner, sizeof(inner));
	if (why)
		return count(why);
	struct ipv6hdr outer = {};
	outer.version = 6;
	outer.priority = inner.priority;
	__builtin_memcpy(outer.flow_lbl, inner.flow_lbl, 3);
	outer.payload_len = bpf_htons(len);
	outer.nexthdr = IPPROTO_IPV6;
	outer.hop_limit = 64;
	__builtin_memcpy(&outer.saddr, d->saddr, 16);
	__builtin_memcpy(&outer.daddr, d->daddr, 16);
	return wrap(skb, &outer, sizeof(outer), BPF_F_ADJ_ROOM_ENCAP_L3_IPV6);
}

int xlb_hc_encap(struct __sk_buff *skb)
{
	__u32 mark = skb->mark;
	struct hc_dst *d = hc_reals.lookup(&mark);
	if (!d)
		return count(1);
	__u32 len = skb->len - ETH_HLEN;
	return d->family == HC_AF_INET ? wrap4(skb, d, len) : wrap6(skb, d, len);
}
