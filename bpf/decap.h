/* decap.h — `xlb decap` (bpf/decap.c): its tunables, verdict reasons, maps and wire formats. The balancer's
 * program never includes this file. */
#ifndef XLB_DECAP_H
#define XLB_DECAP_H

#include "consts.h"
#include "structs.h"

/* Host addresses a tunnel may be addressed to, per family (struct decap_local). */
#define XLB_DECAP_ADDRS 16
/* Remote checksum offload: the summed region is walked in 256-byte blocks, at most this many (9216-byte frames). */
#ifndef XLB_DECAP_CSUM_BLOCKS
#define XLB_DECAP_CSUM_BLOCKS 36
#endif
/* Remote checksum offload: the farthest checksum start accepted (an inner IP header with options or extension
 * headers), and the farthest field after it (TCP's is 16 bytes in, UDP's 6). */
#define XLB_DECAP_CSUM_START_MAX 256
#define XLB_DECAP_CSUM_FIELD_MAX 32

/* The reason behind every verdict. Append only: never renumber (`xlb decap` prints these by name). */
enum xlb_decap_reason {
	XLB_DECAP_PASS_NOT_IP = 0,         /* not IPv4/IPv6 (ARP, VLAN-tagged, ...) */
	XLB_DECAP_PASS_BAD_OUTER = 1,      /* outer Ethernet/IP/UDP header truncated or malformed: the stack judges it */
	XLB_DECAP_PASS_NOT_LOCAL = 2,      /* the outer destination is not one of decap_addrs */
	XLB_DECAP_PASS_NOT_TUNNEL = 3,     /* for us, but neither IPIP, GRE nor UDP to a configured port */
	XLB_DECAP_PASS_FRAGMENT = 4,       /* an outer fragment of IPIP/GRE/UDP: passed untouched, never decapsulated */
	XLB_DECAP_PASS_GRE_OTHER = 5,      /* GRE with a key, sequence, routing, version or payload the balancer never
					    * sends: left to a kernel GRE device */
	XLB_DECAP_IPIP = 6,                /* IPIP / IP6IP6 / 4in6 / 6in4 stripped */
	XLB_DECAP_GUE = 7,                 /* UDP + GUE variant 0 header (IPVS) stripped */
	XLB_DECAP_GUE_BARE = 8,            /* UDP + inner IP, GUE variant 1 (Katran) stripped */
	XLB_DECAP_GRE = 9,                 /* GRE (IPVS: no key, optional checksum) stripped */
	XLB_DECAP_DROP_TRUNC_TUNNEL = 10,  /* GUE or GRE header beyond the outer packet */
	XLB_DECAP_DROP_BAD_GUE = 11,       /* GUE version, control bit, flags, length, protocol or remote checksum bad */
	XLB_DECAP_DROP_BAD_INNER = 12,     /* inner IP header truncated, of the wrong version, or past the outer packet */
	XLB_DECAP_DROP_ADJUST = 13,        /* bpf_xdp_adjust_head refused to remove the outer headers */
	XLB_DECAP_REASON_MAX
};

/* decap_ports values: what a UDP destination port carries. */
enum xlb_decap_port {
	XLB_DECAP_PORT_NONE = 0,   /* not a tunnel port */
	XLB_DECAP_PORT_GUE = 1,    /* GUE: variant 0 (IPVS's 4-byte header) or variant 1 (inner IP right after UDP) */
	XLB_DECAP_PORT_BARE = 2,   /* Katran's header-less GUE only (variant 1) */
};

/* decap_local: this host's addresses, scanned in order. A few compares cost less than hashing a key: a hash map
 * lookup was a third of the per-packet cost of a decapsulation (docs/performance.md). */
struct decap_local {
	__u32 n4;                           /* entries used in v4 */
	__u32 n6;                           /* entries used in v6 */
	__be32 v4[XLB_DECAP_ADDRS];         /* network order */
	__be32 v6[XLB_DECAP_ADDRS * 4];     /* network order, 4 words each (flat: bcc mirrors only 1-D arrays) */
};

/* Outer destinations that are this host's; one entry, written by the loader (xlb/decap.py). */
BPF_ARRAY(decap_local, struct decap_local, 1);
/* enum xlb_decap_port by UDP destination port (host order); written by the loader. */
BPF_ARRAY(decap_ports, __u32, 65536);
/* Packets and bytes per enum xlb_decap_reason; read by the loader. */
BPF_PERCPU_ARRAY(decap_verdicts, struct counters, XLB_DECAP_REASON_MAX);

/* GUE (draft-ietf-intarea-gue; the kernel's include/net/gue.h): byte 0 is version (2 bits), control (1 bit) and
 * hlen (5 bits, optional fields in 32-bit words); then the inner IP protocol and 16 flag bits. */
struct gue_base {
	__u8 ver_c_hlen;
	__u8 proto_ctype;          /* IPPROTO_IPIP / IPPROTO_IPV6 */
	__be16 flags;
};
#define XLB_GUE_VERSION(b) ((b) >> 6)
#define XLB_GUE_CONTROL 0x20
#define XLB_GUE_HLEN(b) ((b) & 0x1f)
#define XLB_GUE_FLAG_PRIV 0x0001           /* host order: a 32-bit private-flags word follows */
#define XLB_GUE_PFLAG_REMCSUM 0x80000000   /* host order: a remote-checksum field (start, offset) follows */

/* GRE (RFC 2784): flags and version, then the payload's Ethernet type; 4 more bytes when C is set. */
struct gre_base {
	__be16 flags;
	__be16 proto;              /* ETH_P_IP / ETH_P_IPV6 */
};
#define XLB_GRE_CSUM 0x8000                /* host order */

#endif
