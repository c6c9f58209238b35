/* parse.h — the packet parser: Ethernet, IPv4/IPv6 (with extension headers), TCP/UDP/SCTP (and where ICMP
 * starts), into struct pkt.
 * One cursor, one bounds idiom: if ((void *)(h + 1) > data_end) the header is truncated. */
#ifndef XLB_PARSE_H
#define XLB_PARSE_H

#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>

#include "consts.h"

#define XLB_TCP_FIN 0x01
#define XLB_TCP_SYN 0x02
#define XLB_TCP_RST 0x04
#define XLB_TCP_ACK 0x10

#ifndef IPPROTO_SCTP
#define IPPROTO_SCTP 132
#endif

/* SCTP's common header and its first chunk's header (RFC 9260 3.1, 3.2). */
struct xlb_sctphdr {
	__be16 source;
	__be16 dest;
	__be32 vtag;
	__le32 checksum;    /* CRC32c: DR leaves the packet as it is, so it is never recomputed */
	__u8 chunk_type;
	__u8 chunk_flags;
	__be16 chunk_len;
};

/* First-chunk types that move an association's state as TCP's flags move a connection's. */
#define XLB_SCTP_INIT 1
#define XLB_SCTP_ABORT 6
#define XLB_SCTP_SHUTDOWN 7
#define XLB_SCTP_SHUTDOWN_ACK 8
#define XLB_SCTP_SHUTDOWN_COMPLETE 14

/* IPv6 extension headers walked before giving up (XLB_DROP_IPV6_EXT). */
#define XLB_IPV6_MAX_EXT 4

/* What the rest of the program needs to know about a packet. */
struct pkt {
	__be32 src[4];      /* network order; IPv4 in [0] */
	__be32 dst[4];
	__be16 sport;       /* network order */
	__be16 dport;
	__u8 proto;         /* IPPROTO_TCP / IPPROTO_UDP / IPPROTO_SCTP once parsed */
	__u8 family;        /* XLB_AF_INET / XLB_AF_INET6 */
	__u8 tcp_flags;     /* XLB_TCP_*; SCTP: its first chunk as the TCP flags of the same step (sctp_flags) */
	__u8 fragment;      /* 1: an IP fragment (no L4 header to trust) */
	__u16 ip_len;       /* IPv4 total length / IPv6 payload + 40, host order: for bpf_fib_lookup */
	/* Fragments and ICMP (bpf/frag.h, bpf/icmp.h) */
	__u16 l4_off;       /* where the L4 (or ICMP) header starts, bytes from the frame's start (NAT
			     * rewrites ports and checksums there; the SIP engine reads on) */
	__be32 frag_id;     /* a fragment's identification: IPv4's 16 bits (in the low half, as on the wire) or
			     * IPv6's 32 */
	__u8 frag_later;    /* 1: a fragment with a non-zero offset (no L4 header: it follows its first fragment) */
	__u8 frag_pad[3];
};

/* TCP and SCTP keep connection state (SYN, established, closing); UDP does not. */
static __always_inline int is_stream(struct pkt *p)
{
	return p->proto == IPPROTO_TCP || p->proto == IPPROTO_SCTP;
}

static __always_inline int is_l4(__u8 proto)
{
	return proto == IPPROTO_TCP || proto == IPPROTO_UDP || proto == IPPROTO_SCTP;
}

/* An SCTP packet's first chunk as TCP flags (docs/design.md, SCTP): INIT opens (SYN), ABORT resets (RST), the
 * SHUTDOWN chunks close (FIN), anything else (DATA, COOKIE ECHO, SACK, HEARTBEAT...) belongs to an association
 * that is up (ACK). */
static __always_inline __u8 sctp_flags(__u8 chunk_type)
{
	switch (chunk_type) {
	case XLB_SCTP_INIT:
		return XLB_TCP_SYN;
	case XLB_SCTP_ABORT:
		return XLB_TCP_RST;
	case XLB_SCTP_SHUTDOWN:
	case XLB_SCTP_SHUTDOWN_ACK:
	case XLB_SCTP_SHUTDOWN_COMPLETE:
		return XLB_TCP_FIN;
	default:
		return XLB_TCP_ACK;
	}
}

/* The ports that open TCP's, UDP's and SCTP's headers, once the header's first hlen bytes are in the frame and
 * in the IP packet. Returns 0 or XLB_DROP_TRUNC_L4. */
static __always_inline int read_ports(void *l4, __u32 hlen, void *ip_end, void *data_end, struct pkt *p)
{
	if (l4 + hlen > data_end || l4 + hlen > ip_end)
		return XLB_DROP_TRUNC_L4;
	__be16 *ports = l4;
	p->sport = ports[0];
	p->dport = ports[1];
	return 0;
}

/* Parse the L4 header at l4. ip_end: where the IP packet ends (its length says; the frame may go on, with
 * Ethernet padding). Returns 0 or a drop reason. */
static __always_inline int parse_l4(void *l4, void *ip_end, void *data_end, struct pkt *p)
{
	int ret;
	if (p->proto == IPPROTO_TCP) {
		struct tcphdr *th = l4;
		ret = read_ports(l4, sizeof(*th), ip_end, data_end, p);
		if (ret)
			return ret;
		if (th->doff < 5)
			return XLB_DROP_BAD_TCP;
		/* Byte 13 of the TCP header holds the flags. */
		p->tcp_flags = ((__u8 *)th)[13];
		return 0;
	}
	if (p->proto == IPPROTO_UDP)
		return read_ports(l4, sizeof(struct udphdr), ip_end, data_end, p);
	if (p->proto == IPPROTO_SCTP) {
		/* The common header and at least one chunk's header: a packet without a chunk is malformed. */
		struct xlb_sctphdr *sh = l4;
		ret = read_ports(l4, sizeof(*sh), ip_end, data_end, p);
		if (ret)
			return ret;
		p->tcp_flags = sctp_flags(sh->chunk_type);
		return 0;
	}
	return XLB_PASS_OTHER_PROTO;
}

static __always_inline int parse_ipv4(void *cur, void *data_end, struct pkt *p, void **l4, void **ip_end)
{
	struct iphdr *iph = cur;
	if ((void *)(iph + 1) > data_end)
		return XLB_DROP_TRUNC_IP;
	/* The addresses first: a malformed packet to no VIP is not ours to judge (xlb_xdp passes it). */
	p->family = XLB_AF_INET;
	p->src[0] = iph->saddr;
	p->dst[0] = iph->daddr;
	if (iph->version != 4 || iph->ihl < 5)
		return XLB_DROP_BAD_IP;
	__u32 hlen = iph->ihl * 4;
	__u16 tot = bpf_ntohs(iph->tot_len);
	if (tot < hlen || cur + tot > data_end)
		return XLB_DROP_TRUNC_IP;
	p->proto = iph->protocol;
	p->ip_len = tot;
	/* MF set or a fragment offset: only a first fragment carries ports, and none can be trusted alone. */
	if (iph->frag_off & bpf_htons(0x3fff)) {
		p->fragment = 1;
		p->frag_id = iph->id;
		p->frag_later = (iph->frag_off & bpf_htons(0x1fff)) != 0;
	}
	*l4 = cur + hlen;
	*ip_end = cur + tot;
	return 0;
}

static __always_inline int parse_ipv6(void *cur, void *data_end, struct pkt *p, void **l4, void **ip_end)
{
	struct ipv6hdr *ip6 = cur;
	if ((void *)(ip6 + 1) > data_end)
		return XLB_DROP_TRUNC_IP;
	p->family = XLB_AF_INET6;
	__builtin_memcpy(p->src, &ip6->saddr, 16);
	__builtin_memcpy(p->dst, &ip6->daddr, 16);
	if (ip6->version != 6)
		return XLB_DROP_BAD_IP;
	__u32 plen = bpf_ntohs(ip6->payload_len);
	if ((void *)(ip6 + 1) + plen > data_end)
		return XLB_DROP_TRUNC_IP;
	p->ip_len = plen + sizeof(*ip6);
	*ip_end = (void *)(ip6 + 1) + plen;
	__u8 next = ip6->nexthdr;
	__be16 frag;
	cur = ip6 + 1;
	/* Walk a bounded number of extension headers; the verifier needs the constant bound. */
#pragma unroll
	for (int i = 0; i < XLB_IPV6_MAX_EXT; i++) {
		if (is_l4(next))
			break;
		struct ipv6_opt_hdr *eh = cur;
		if ((void *)(eh + 1) > data_end)
			return XLB_DROP_IPV6_EXT;
		switch (next) {
		case IPPROTO_HOPOPTS:
		case IPPROTO_ROUTING:
		case IPPROTO_DSTOPTS:
			cur += (eh->hdrlen + 1) * 8;
			break;
		case IPPROTO_AH:
			cur += (eh->hdrlen + 2) * 4;
			break;
		case IPPROTO_FRAGMENT:
			/* struct frag_hdr: nexthdr, reserved, frag_off (offset << 3 | M), id. */
			if (cur + 8 > data_end)
				return XLB_DROP_IPV6_EXT;
			frag = *(__be16 *)(cur + 2);
			/* Offset 0 and M clear: an atomic fragment, a whole packet (RFC 6946). */
			if (frag & bpf_htons(0xfff9)) {
				p->fragment = 1;
				p->frag_id = *(__be32 *)(cur + 4);
			}
			/* A later fragment (offset not 0) carries payload after this header, not headers. */
			if (frag & bpf_htons(0xfff8)) {
				p->frag_later = 1;
				p->proto = eh->nexthdr;
				*l4 = cur + 8;
				return 0;
			}
			cur += 8;
			break;
		default:
			/* ICMPv6, ESP, no next header...: not ours to balance. */
			p->proto = next;
			*l4 = cur;
			return 0;
		}
		next = eh->nexthdr;
	}
	if (!is_l4(next)) {
		p->proto = next;
		return XLB_DROP_IPV6_EXT;
	}
	p->proto = next;
	*l4 = cur;
	return 0;
}

/* parse_packet's "a TCP/UDP/SCTP packet: handle it". Not 0: reasons start at 0 (XLB_PASS_NOT_IP). */
#define XLB_PARSE_OK (-1)
/* parse_packet's "an unfragmented ICMP (IPv4) or ICMPv6 (IPv6) packet starting at p->l4_off": bpf/icmp.h. */
#define XLB_PARSE_ICMP (-2)

/* Fill *p from the frame. Returns XLB_PARSE_OK when p describes a TCP/UDP/SCTP packet (p->fragment says if it is a
 * fragment; a first fragment's ports are parsed, a later one has none), XLB_PARSE_ICMP, else the pass or drop
 * reason; with a drop reason, p->family is set once the fixed IP header (and so
 * its destination address) was in the frame. */
static __always_inline int parse_packet(void *data, void *data_end, struct pkt *p)
{
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return XLB_DROP_TRUNC_ETH;
	void *l4 = 0, *ip_end = 0;
	int ret;
	/* Tagged frames are not balanced: DR would need the real's next hop on the same VLAN (docs/design.md). */
	if (eth->h_proto == bpf_htons(ETH_P_8021Q) || eth->h_proto == bpf_htons(ETH_P_8021AD))
		return XLB_PASS_VLAN;
	if (eth->h_proto == bpf_htons(ETH_P_IP))
		ret = parse_ipv4(eth + 1, data_end, p, &l4, &ip_end);
	else if (eth->h_proto == bpf_htons(ETH_P_IPV6))
		ret = parse_ipv6(eth + 1, data_end, p, &l4, &ip_end);
	else
		return XLB_PASS_NOT_IP;
	if (ret)
		return ret;
	if (!is_l4(p->proto)) {
		/* A fragmented ICMP message (a big ping) is the kernel's, as before. */
		int icmp = p->family == XLB_AF_INET ? p->proto == IPPROTO_ICMP : p->proto == IPPROTO_ICMPV6;
		if (!icmp || p->fragment)
			return XLB_PASS_OTHER_PROTO;
		p->l4_off = l4 - data;
		return XLB_PARSE_ICMP;
	}
	if (p->frag_later)
		return XLB_PARSE_OK;
	p->l4_off = l4 - data;
	ret = parse_l4(l4, ip_end, data_end, p);
	return ret ? ret : XLB_PARSE_OK;
}

#endif
