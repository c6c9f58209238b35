/* sched.h — choosing a real for a new connection. Table kinds (rr, wrr, sh, dh, mh) do one lookup into the
 * service's precomputed slot table (built by xlb/sched.py); connection-count kinds (lc, wlc, sed, nq, fo, ovf)
 * weigh the candidates in it by their live counts in real_conns, as IPVS defines each. */
#ifndef XLB_SCHED_H
#define XLB_SCHED_H

#include "maps.h"
#include "hash.h"
#include "trace.h"

/* The hash sh and mh index by: the client address, and its port with sh-port / mh-port. */
static __always_inline __u32 hash_client(struct svc_meta *svc, struct pkt *p)
{
	__u32 h = hash_addr(p->src);
	if (svc->flags & XLB_SVC_F_HASH_PORT)
		h = mix32(h ^ ((__u32)p->sport * 0x9e3779b1));
	return h;
}

static __always_inline __u32 slot_real(struct svc_meta *svc, __u32 idx)
{
	__u32 slot = svc->table_off + idx;
	__u32 *id = sched_slots.lookup(&slot);
	return id ? *id : 0;
}

/* Can this real take a new connection? Configured, not health-failed, weight > 0, not overloaded. */
static __always_inline int real_available(struct real *r, struct real_conns *rc)
{
	return r && rc && (r->flags & (XLB_REAL_F_LIVE | XLB_REAL_F_DOWN)) == XLB_REAL_F_LIVE && r->weight &&
	       !(rc->flags & XLB_RC_F_OVERLOAD);
}

/* The i-th candidate of a connection-count service's table, with its real and its counts. */
static __always_inline __u32 candidate(struct svc_meta *svc, __u32 i, struct real **r, struct real_conns **rc)
{
	__u32 id = slot_real(svc, i);
	*r = reals.lookup(&id);
	*rc = real_conns.lookup(&id);
	return id;
}

static __always_inline int real_takes(__u32 id)
{
	return real_available(reals.lookup(&id), real_conns.lookup(&id));
}

static __always_inline __u64 count_of(__s64 n)
{
	return n > 0 ? (__u64)n : 0;  /* a count the reconcile has not caught up with can dip below zero */
}

/* IPVS's choice among the candidates: the lowest cost num/den (cross-multiplied: exact, no division), the first
 * in table order on ties. nq takes the first idle real; ovf skips reals whose active count reached their weight.
 * The loop keeps only scalars across iterations (no map pointers) so the verifier's states converge. */
static __always_inline __u32 pick_by_conns(struct svc_meta *svc)
{
	__u32 best = 0;
	__u64 best_num = 0, best_den = 1;
	__u32 len = svc->table_len;
	for (__u32 i = 0; i < XLB_CAND_MAX; i++) {
		if (i >= len)
			break;
		struct real *r;
		struct real_conns *rc;
		__u32 id = candidate(svc, i, &r, &rc);
		if (!real_available(r, rc))
			continue;
		__u64 act = count_of(rc->active), inact = count_of(rc->inactive), w = r->weight;
		__u64 num = 1, den = w;  /* fo, ovf: the highest weight */
		switch (svc->sched) {
		case XLB_SCHED_LC:
			num = (act << 8) + inact;
			den = 1;
			break;
		case XLB_SCHED_WLC:
		case XLB_SCHED_LBLC:   /* lblc/lblcr schedule with wlc (bpf/locality.h) */
		case XLB_SCHED_LBLCR:
			num = (act << 8) + inact;
			break;
		case XLB_SCHED_NQ:
			if (!act)
				return id;
			/* fall through */
		case XLB_SCHED_SED:
			num = act + 1;
			break;
		case XLB_SCHED_OVF:
			if (act >= w)
				continue;
			break;
		}
		if (!best || num * best_den < best_num * den) {
			best = id;
			best_num = num;
			best_den = den;
		}
	}
	return best;
}

/* Take n slots of the service's rotation; returns where they start (the trace build only reads it). */
static __always_inline __u32 rr_take(struct rr_pos *pos, __u32 n)
{
	if (XLB_TRACING)
		return pos->next;
	bpf_spin_lock(&pos->lock);
	__u32 at = pos->next;
	pos->next = at + n;
	bpf_spin_unlock(&pos->lock);
	return at;
}

/* Round robin over the table, one rotation per service as IPVS's: every CPU takes the next slot from the service's
 * shared position (a free-running count taken modulo the table's length), skipping overloaded or quiescent reals;
 * the position then moves past the skipped ones too. */
static __always_inline __u32 pick_rr(struct svc_meta *svc)
{
	__u32 id = svc->id;
	struct rr_pos *pos = rr_pos.lookup(&id);
	if (!pos)
		return 0;
	__u32 len = svc->table_len;
	__u32 idx = rr_take(pos, 1) % len;
	for (__u32 i = 0; i < XLB_RR_TRIES; i++) {
		if (idx >= len)
			idx = 0;
		__u32 real_id = slot_real(svc, idx);
		XLB_TRACE_NOTE(sched_idx, idx);
		idx++;
		if (real_takes(real_id)) {
			if (i)
				rr_take(pos, i);
			return real_id;
		}
	}
	return 0;
}

/* Hash kinds: the slot the hash names; when its real is unavailable, nothing (IPVS's default) unless the service
 * has sh-fallback / mh-fallback, which re-hashes up to XLB_FALLBACK_TRIES times. */
static __always_inline __u32 pick_hashed(struct svc_meta *svc, __u32 h)
{
	__u32 len = svc->table_len;
	__u32 id = slot_real(svc, h % len);
	if (real_takes(id))
		return id;
	if (!(svc->flags & XLB_SVC_F_FALLBACK))
		return 0;
	for (__u32 i = 1; i <= XLB_FALLBACK_TRIES; i++) {
		id = slot_real(svc, mix32(h + i * 0x9e3779b9) % len);
		if (real_takes(id))
			return id;
	}
	return 0;
}

/* Returns the id of a real that takes the new connection, or 0 when none does. */
static __always_inline __u32 pick_real(struct svc_meta *svc, struct pkt *p)
{
	if (!svc->table_len)
		return 0;
	XLB_TRACE_FLAG(XLB_TRACE_F_SCHED);
	switch (svc->sched) {
	case XLB_SCHED_RR:
		return pick_rr(svc);
	case XLB_SCHED_SH:
	case XLB_SCHED_MH:
		return pick_hashed(svc, hash_client(svc, p));
	case XLB_SCHED_DH:
		return pick_hashed(svc, hash_addr(p->dst));
	default:
		return pick_by_conns(svc);
	}
}

#endif
