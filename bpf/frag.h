/* frag.h — IP fragments to a VIP. The first fragment carries the ports: it takes the ordinary path (its flow's
 * connection entry, else the service's scheduler) and frag_note records where it went under (src, dst, id, proto);
 * every later fragment of the datagram follows that record (frag_follow). The rule for a later fragment with no
 * record (it overtook its first, or the first was lost or went to another balancer): dropped and counted
 * (drop_frag_no_first), as IPVS drops what it cannot attribute to a connection; its real could not reassemble
 * the datagram without the first fragment anyway. */
#ifndef XLB_FRAG_H
#define XLB_FRAG_H

#include "fwd.h"
#include "stats.h"

/* The datagram a fragment belongs to (RFC 791's reassembly key; IPv6's has no protocol, which changes nothing). */
static __always_inline struct frag_key frag_key_of(struct pkt *p)
{
	struct frag_key fk = { .id = p->frag_id, .proto = p->proto, .family = p->family };
	__builtin_memcpy(fk.src, p->src, 16);
	__builtin_memcpy(fk.dst, p->dst, 16);
	return fk;
}

/* A first fragment went to real_id (0: passed to the kernel): its later fragments will follow. No-op for a whole
 * packet. */
static __always_inline void frag_note(struct pkt *p, __u32 real_id, __u32 real_gen, __u32 svc_id)
{
	if (!p->fragment || XLB_TRACING)
		return;
	struct frag_key fk = frag_key_of(p);
	struct frag_val fv = {
		.real_id = real_id,
		.real_gen = real_gen,
		.svc_id = svc_id,
	};
	frags.update(&fk, &fv);
}

/* A later fragment to a VIP: to its first fragment's real, by that real's method (as forward_real sends any packet). */
static __always_inline int frag_follow(struct xdp_md *ctx, struct pkt *p, __u64 bytes)
{
	struct frag_key fk = frag_key_of(p);
	struct frag_val *fv = frags.lookup(&fk);
	if (!fv)
		return verdict(XLB_DROP_FRAG_NO_FIRST, XDP_DROP, bytes);
	__u32 real_id = fv->real_id;
	if (!real_id)
		return verdict(XLB_PASS_FRAGMENT, XDP_PASS, bytes);
	struct real *r = reals.lookup(&real_id);
	if (!r || !(r->flags & XLB_REAL_F_LIVE) || r->gen != fv->real_gen)
		return verdict(XLB_DROP_NO_REAL, XDP_DROP, bytes);
	XLB_TRACE_NOTE(svc_id, fv->svc_id);
	count_flow(fv->svc_id, real_id, bytes, 0);
	int action = XDP_PASS;
	int reason = forward_real(ctx, p, r, real_id, bpf_ktime_get_coarse_ns(), &action);
	return verdict(forwarded(reason) ? XLB_FWD_FRAGMENT : reason, action, bytes);
}

#endif
