/* tunhdr.h — a tunnel's outer headers (IPIP, GUE with IPVS's header or Katran's none, GRE) as IPVS puts them on the
 * wire, written from struct tunnel and what they copy from the inner packet. Shared by the data plane's tunnel
 * forwarding (bpf/tun.h, XDP) and check_via_vip's check wrapper (bpf/hcencap.c, TC), so both write the same bytes:
 * no map and no program context here, only the bytes at a pointer. */
#ifndef XLB_TUNHDR_H
#define XLB_TUNHDR_H

#include "structs.h"
#include "parse.h"
#include "hash.h"

#define XLB_GUE_HLEN 4             /* IPVS's GUE header: version 0, no options, the inner protocol */
#define XLB_GRE_HLEN 4             /* flags and version, protocol; 4 more with the checksum */

/* The flow's hash: the GUE source port (entropy for ECMP and RSS at the real) and per-flow outer sources. */
static __always_inline __u32 tun_flow_hash(struct pkt *p)
{
	return mix32(hash_addr(p->src) ^ ((((__u32)p->sport << 16) | p->dport) * 0x85ebca77) ^ p->proto);
}

/* Bytes the tunnel puts in front of the inner IP packet. lco: the inner packet's sum is known (struct inner_facts);
 * without it GRE goes without its checksum word. */
static __always_inline __u32 tun_overhead(struct tunnel *t, int lco)
{
	__u32 n = t->family == XLB_AF_INET ? sizeof(struct iphdr) : sizeof(struct ipv6hdr);
	if (t->type == XLB_TUN_GUE)
		n += sizeof(struct udphdr) + (t->flags & XLB_TUN_F_BARE ? 0 : XLB_GUE_HLEN);
	else if (t->type == XLB_TUN_GRE)
		n += XLB_GRE_HLEN + ((t->flags & XLB_TUN_F_CSUM) && lco ? 4 : 0);
	return n;
}

/* Fold a sum of 16/32-bit words to 16 bits of one's complement. */
static __always_inline __u32 csum_fold64(__u64 s)
{
	s = (s & 0xffffffff) + (s >> 32);
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (s & 0xffff) + (s >> 16);
}

static __always_inline __u64 sum_addr(const __be32 *a, int family)
{
	if (family == XLB_AF_INET)
		return a[0];
	return (__u64)a[0] + a[1] + a[2] + a[3];
}

/* What the outer headers copy from the inner packet, read before the frame moves. */
struct inner_facts {
	__u64 sum;                 /* one's complement sum of the whole inner IP packet, when lco */
	__be16 id;                 /* IPv4 identification */
	__be16 df;                 /* IPv4 DF bit (network order), 0 for IPv6 */
	__u8 dsfield;              /* TOS / traffic class, ECN as INET_ECN_encapsulate leaves it */
	__u8 ttl;                  /* TTL / hop limit */
	__u8 lco;                  /* 1: sum is known without reading the payload (a valid TCP/UDP checksum) */
};

/* Is the inner packet's sum known from its headers: a whole TCP or UDP segment (not a fragment, whose checksum
 * covers the datagram; not SCTP, whose CRC32c sums nothing; not ICMP, forwarded errors about a flow)? */
static __always_inline int offloadable(struct pkt *p)
{
	return (p->proto == IPPROTO_TCP || p->proto == IPPROTO_UDP) && !p->fragment;
}

/* Read the inner packet's TOS, TTL, DF and, for the outer checksums, its sum by local checksum offload: a TCP/UDP
 * segment with a valid checksum sums to the complement of its pseudo-header, an IPv4 header to zero, so the sum of
 * the whole packet is known from its headers alone. Returns 0, or -1 if the headers are not in the frame. */
static __always_inline int inner_facts(void *data, void *data_end, struct pkt *p, struct inner_facts *f)
{
	void *ip = data + sizeof(struct ethhdr);
	__u64 s;
	__be16 check;
	__u8 dsf;
	if (p->family == XLB_AF_INET) {
		struct iphdr *iph = ip;
		if ((void *)(iph + 1) > data_end)
			return -1;
		dsf = iph->tos;
		f->ttl = iph->ttl;
		f->id = iph->id;
		f->df = iph->frag_off & bpf_htons(0x4000);
		__u32 hlen = iph->ihl * 4;
		__u8 *l4 = ip + hlen;
		__u32 off = p->proto == IPPROTO_TCP ? 16 : 6;
		if (!offloadable(p))
			goto no_offload;
		if (hlen > 60 || (void *)(l4 + off + 2) > data_end)
			return -1;
		check = *(__be16 *)(l4 + off);
		/* Pseudo-header: addresses, protocol, transport length; the header itself sums to zero. */
		s = (__u64)iph->saddr + iph->daddr + bpf_htons(p->proto) + bpf_htons(p->ip_len - hlen);
		f->sum = (~csum_fold64(s)) & 0xffff;
		f->lco = check != 0;
	} else {
		struct ipv6hdr *ip6 = ip;
		__u8 *b = ip;
		if ((void *)(ip6 + 1) > data_end)
			return -1;
		dsf = (b[0] << 4) | (b[1] >> 4);
		f->ttl = ip6->hop_limit;
		f->id = 0;
		f->df = 0;
		__u8 *l4 = (void *)(ip6 + 1);
		__u32 off = p->proto == IPPROTO_TCP ? 16 : 6;
		if (!offloadable(p))
			goto no_offload;
		if ((void *)(l4 + off + 2) > data_end)
			return -1;
		check = *(__be16 *)(l4 + off);
		/* Header minus pseudo-header: the addresses and the length cancel, leaving the first word, next header
		 * with hop limit, and minus the protocol. Extension headers would add their own bytes: no offload then. */
		s = (__u64)*(__u32 *)b + *(__u16 *)(b + 6) + (__u16)~bpf_htons(p->proto);
		f->sum = s;
		f->lco = check != 0 && ip6->nexthdr == p->proto;
	}
no_offload:
	/* INET_ECN_encapsulate: CE is not copied outward (ECT(0) instead). */
	f->dsfield = (dsf & 3) == 3 ? (dsf & ~3) | 2 : dsf;
	return 0;
}

/* The outer IP header at ip toward dst, for a payload of payload bytes of protocol proto; its source (t->src, host
 * bits from the flow's hash h) goes to src too. IPVS's rules: TOS and TTL copied, DF from an IPv4 inner packet (an
 * IPv6 one goes without), no flow label. */
static __always_inline void put_outer_ip(void *ip, struct tunnel *t, struct inner_facts *f, __u32 h, __u8 proto,
					 __u32 payload, __be32 *src, const __be32 *dst)
{
#pragma unroll
	for (int i = 0; i < 4; i++)
		src[i] = t->src[i] | (h & t->src_host[i]);
	if (t->family == XLB_AF_INET) {
		struct iphdr *o = ip;
		*(__be16 *)o = bpf_htons(0x4500 | f->dsfield);
		o->tot_len = bpf_htons(payload + sizeof(*o));
		o->id = f->id;
		o->frag_off = f->df;
		o->ttl = f->ttl;
		o->protocol = proto;
		o->check = 0;
		o->saddr = src[0];
		o->daddr = dst[0];
		o->check = ~csum_fold64(bpf_csum_diff(0, 0, (__be32 *)o, sizeof(*o), 0));
		return;
	}
	struct ipv6hdr *o6 = ip;
	*(__be32 *)o6 = bpf_htonl(0x60000000 | ((__u32)f->dsfield << 20));
	o6->payload_len = bpf_htons(payload);
	o6->nexthdr = proto;
	o6->hop_limit = f->ttl;
	__builtin_memcpy(&o6->saddr, src, 16);
	__builtin_memcpy(&o6->daddr, dst, 16);
}

/* The tunnel's headers at o (right after Ethernet) toward dst, in front of an inner packet of ip_len bytes of family
 * inner_family: the outer IP header, then GUE's UDP header (and GUE header) or GRE's. over: their length
 * (tun_overhead). Returns 0, or -1 when they do not lie within data_end. */
static __always_inline int tun_put(void *o, void *data_end, struct tunnel *t, struct inner_facts *f, __u32 h,
				   __u8 inner_family, __u32 ip_len, __u32 over, const __be32 *dst)
{
	__u8 inner_proto = inner_family == XLB_AF_INET ? IPPROTO_IPIP : IPPROTO_IPV6;
	__u8 proto = t->type == XLB_TUN_GUE ? IPPROTO_UDP : t->type == XLB_TUN_GRE ? IPPROTO_GRE : inner_proto;
	int csum = (t->flags & XLB_TUN_F_CSUM) && f->lco;
	__be32 src[4];
	__u64 pseudo;
	void *l4;
	__u32 payload;
	if (t->family == XLB_AF_INET) {
		struct iphdr *o4 = o;
		if ((void *)(o4 + 1) > data_end)
			return -1;
		payload = ip_len + over - sizeof(*o4);
		put_outer_ip(o4, t, f, h, proto, payload, src, dst);
		pseudo = sum_addr(src, XLB_AF_INET) + dst[0];
		l4 = o4 + 1;
	} else {
		struct ipv6hdr *o6 = o;
		if ((void *)(o6 + 1) > data_end)
			return -1;
		payload = ip_len + over - sizeof(*o6);
		put_outer_ip(o6, t, f, h, proto, payload, src, dst);
		pseudo = sum_addr(src, XLB_AF_INET6) + sum_addr(dst, XLB_AF_INET6);
		l4 = o6 + 1;
	}
	if (t->type == XLB_TUN_GUE) {
		struct udphdr *uh = l4;
		__be32 *g = (void *)(uh + 1);
		if ((void *)(g + 1) > data_end)
			return -1;
		uh->source = bpf_htons(0xc000 | (h & 0x3fff));
		uh->dest = t->port;
		uh->len = bpf_htons(payload);
		uh->check = 0;
		__u64 s = 0;
		if (!(t->flags & XLB_TUN_F_BARE)) {
			/* Version 0, no control bit, no optional fields; then the inner protocol, no flags. */
			*g = bpf_htonl((__u32)inner_proto << 16);
			s = *g;
		}
		/* IPVS's csum and remcsum both set the UDP checksum (a forwarded packet is never CHECKSUM_PARTIAL, so
		 * IPVS puts no remote-checksum option on it). Without the inner sum: none, which UDP allows. */
		if (csum) {
			s += pseudo + bpf_htons(IPPROTO_UDP) + 2 * (__u64)uh->len + uh->source + uh->dest + f->sum;
			__u16 c = ~csum_fold64(s);
			uh->check = c ? c : 0xffff;
		}
	} else if (t->type == XLB_TUN_GRE) {
		__be16 *g = l4;
		if ((void *)(g + 4) > data_end)
			return -1;
		g[0] = csum ? bpf_htons(0x8000) : 0;
		g[1] = inner_proto == IPPROTO_IPIP ? bpf_htons(ETH_P_IP) : bpf_htons(ETH_P_IPV6);
		if (csum) {
			g[2] = 0;
			g[3] = 0;
			g[2] = ~csum_fold64((__u64)g[0] + g[1] + f->sum);
		}
	}
	return 0;
}

#endif
