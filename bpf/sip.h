/* sip.h — the SIP persistence engine (IPVS's ip_vs_pe_sip): a UDP datagram of a `persistence_engine sip` service
 * is placed by the template of its Call-ID, not its client. A bounded scan of the payload finds the header
 * ("Call-ID:" or the compact "i:", the name in any case, at a line's start) and hashes its value: the bytes after
 * the colon and its blanks up to the end of the line, 1..255 of them, which must end in CR or LF as IPVS
 * requires. A datagram without one is dropped (XLB_DROP_SIP_NO_CALLID), as IPVS drops it. */
#ifndef XLB_SIP_H
#define XLB_SIP_H

#include "maps.h"
#include "parse.h"

#define XLB_SIP_FOUND 1
#define XLB_SIP_NONE 2

/* Does the service place this packet by its Call-ID? */
static __always_inline int sip_engine(struct svc_meta *svc, struct pkt *p)
{
	return (svc->flags & XLB_SVC_F_PE_SIP) && (svc->flags & XLB_SVC_F_PERSIST) && p->proto == IPPROTO_UDP &&
	       !p->fragment;
}

/* Lower-case view of a byte for header names (letters only matter: the names are letters, '-' and ':'). */
#define SIP_LOW(b) ((__u64)((b) | 0x20))
/* "call-id:" as eight lowered bytes, the last in the low byte. */
#define SIP_CALL_ID 0x63616c6c2d69643aULL
/* "i:" as two lowered bytes. */
#define SIP_COMPACT 0x693aULL

/* Find the Call-ID header; leaves h->sip_pos at the payload offset just past its colon, plus one (0: none).
 * The position goes through memory: the code after the loop then sees one state for every way out of it. */
static __always_inline void sip_find(void *payload, void *data_end, struct handoff *h)
{
	__u8 *s = payload;
	__u64 low = 0, raw = 0;
	h->sip_pos = 0;
	for (__u32 i = 0; i < XLB_SIP_SCAN; i++) {
		if ((void *)(s + i + 1) > data_end)
			break;
		__u8 b = s[i];
		__u8 before9 = raw >> 56;  /* the raw byte eight before this one */
		low = (low << 8) | SIP_LOW(b);
		raw = (raw << 8) | b;
		if ((low == SIP_CALL_ID && before9 == '\n') ||
		    ((low & 0xffff) == SIP_COMPACT && ((raw >> 16) & 0xff) == '\n')) {
			h->sip_pos = i + 2;
			break;
		}
	}
}

/* Offsets into the payload are masked to this (a power of two above XLB_SIP_SCAN + 8) for the verifier. */
#define SIP_OFF_MASK 0x7ff

/* Hash the value that starts at payload offset pos (blanks skipped); 1 if it is a valid Call-ID. */
static __always_inline int sip_hash(__u8 *s, void *data_end, __u32 pos, struct handoff *h)
{
	/* Skip the blanks after the colon (a bounded few). */
	for (__u32 i = 0; i < 8; i++) {
		pos &= SIP_OFF_MASK;
		if ((void *)(s + pos + 1) > data_end)
			return 0;
		if (s[pos] != ' ' && s[pos] != '\t')
			break;
		pos++;
	}
	h->sip_pos = pos;
	pos = *(volatile __u32 *)&h->sip_pos & SIP_OFF_MASK;
	__u32 a = 0x811c9dc5, b = 0x9e3779b9, c = 0x85ebca6b, d = 0xc2b2ae35, n = 0;
	for (__u32 i = 0; i <= XLB_SIP_CALLID_MAX; i++) {
		if ((void *)(s + pos + i + 1) > data_end)
			return 0;  /* no line end: IPVS refuses it too */
		__u8 ch = s[pos + i];
		if (ch == '\r' || ch == '\n') {
			n = i;
			break;
		}
		a = (a ^ ch) * 0x01000193;
		b = (b ^ ch) * 0x5bd1e995;
		c = (c ^ ch) * 0x27d4eb2f;
		d = (d ^ ch) * 0x165667b1;
	}
	if (!n)
		return 0;  /* empty, or longer than 255 */
	h->sip_hash[0] = mix32(a ^ n);
	h->sip_hash[1] = mix32(b ^ n);
	h->sip_hash[2] = mix32(c ^ n);
	h->sip_hash[3] = mix32(d ^ n);
	return 1;
}

/* The Call-ID of the handed-off datagram into h (sip_state, sip_hash). */
static __always_inline void sip_callid(struct xdp_md *ctx, struct handoff *h)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 off = h->p.l4_off;
	h->sip_state = XLB_SIP_NONE;
	if (off > 512)  /* Ethernet, IPv4 options or IPv6 extension headers: far less */
		return;
	void *payload = data + off + sizeof(struct udphdr);
	sip_find(payload, data_end, h);
	__u32 pos = *(volatile __u32 *)&h->sip_pos;
	if (!pos)
		return;
	if (sip_hash(payload, data_end, (pos - 1) & SIP_OFF_MASK, h))
		h->sip_state = XLB_SIP_FOUND;
}

/* The template key of a Call-ID: the service, the client under the netmask (as IPVS's template also matches
 * it), and the Call-ID's hash folded in. */
static __always_inline void sip_key(struct persist_key *pk, struct handoff *h)
{
#pragma unroll
	for (int i = 0; i < 4; i++)
		pk->client[i] ^= h->sip_hash[i];
}

#endif
