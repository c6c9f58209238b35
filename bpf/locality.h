/* locality.h — lblc and lblcr, IPVS's locality-based least-connection schedulers (for cache clusters): the real
 * (lblc) or set of reals (lblcr) a destination address was given is kept while it is not overloaded; otherwise
 * wlc picks among the service's candidates. Entries live in the lblc map; the control plane's sweep expires them
 * (xlb/dataplane/sweep.py). Racing CPUs may both place a destination: the last write wins, as a lost update of
 * a cache hint. */
#ifndef XLB_LOCALITY_H
#define XLB_LOCALITY_H

#include "maps.h"
#include "sched.h"

static __always_inline int is_locality(struct svc_meta *svc)
{
	return svc->sched == XLB_SCHED_LBLC || svc->sched == XLB_SCHED_LBLCR;
}

/* Has the i-th candidate fewer active connections than half its weight? */
static __always_inline int under_half(struct svc_meta *svc, __u32 i)
{
	struct real *c;
	struct real_conns *cc;
	candidate(svc, i, &c, &cc);
	return c && cc && count_of(cc->active) * 2 < c->weight;
}

/* IPVS's is_overloaded: the real has more active connections than its weight while some candidate has fewer than
 * half of its own. */
static __always_inline int local_overloaded(struct svc_meta *svc, __u32 id)
{
	struct real *r = reals.lookup(&id);
	struct real_conns *rc = real_conns.lookup(&id);
	if (!r || !rc)
		return 1;
	if (count_of(rc->active) <= r->weight)
		return 0;
	for (__u32 i = 0; i < XLB_CAND_MAX && i < svc->table_len; i++)
		if (under_half(svc, i))
			return 1;
	return 0;
}

/* A member still configured (same generation) that takes new connections. */
static __always_inline int member_takes(__u32 id, __u32 gen)
{
	struct real *r = reals.lookup(&id);
	return real_available(r, real_conns.lookup(&id)) && r->gen == gen;
}

/* A member still configured (same generation). */
static __always_inline int member_live(__u32 id, __u32 gen)
{
	struct real *r = reals.lookup(&id);
	return id && r && (r->flags & XLB_REAL_F_LIVE) && r->gen == gen;
}

/* wlc's cost of a real as num/den; den 0: none (weight 0 or no counts). */
static __always_inline __u64 member_load(__u32 id, __u64 *den)
{
	struct real *r = reals.lookup(&id);
	struct real_conns *rc = real_conns.lookup(&id);
	*den = r && rc ? r->weight : 0;
	return rc ? (count_of(rc->active) << 8) + count_of(rc->inactive) : 0;
}

/* lblcr: the most loaded live member of a set (IPVS's ip_vs_dest_set_max: weight > 0), 0 if none. The loops keep
 * only scalars across iterations so the verifier's states converge. */
static __always_inline __u32 set_max(struct lblc_dests *e)
{
	__u32 best = 0;
	__u64 best_num = 0, best_den = 1;
	for (__u32 i = 0; i < XLB_LBLCR_SET; i++) {
		__u32 id = e->real_id[i];
		if (!member_live(id, e->real_gen[i]))
			continue;
		__u64 den, num = member_load(id, &den);
		if (den && (!best || num * best_den > best_num * den)) {
			best = id;
			best_num = num;
			best_den = den;
		}
	}
	return best;
}

/* lblcr: the least loaded member that takes connections (ip_vs_dest_set_min), 0 if none; *live: live members. */
static __always_inline __u32 set_min(struct lblc_dests *e, __u32 *live)
{
	__u32 best = 0, n = 0;
	__u64 best_num = 0, best_den = 1;
	for (__u32 i = 0; i < XLB_LBLCR_SET; i++) {
		__u32 id = e->real_id[i];
		if (!member_live(id, e->real_gen[i]))
			continue;
		n++;
		if (!member_takes(id, e->real_gen[i]))
			continue;
		__u64 den, num = member_load(id, &den);
		if (!best || num * best_den < best_num * den) {
			best = id;
			best_num = num;
			best_den = den;
		}
	}
	*live = n;
	return best;
}

/* Put real id (generation gen) in place of member `old`; with old 0, in the first empty or removed member's place.
 * Returns 1 if placed. */
static __always_inline int set_put(struct lblc_dests *e, __u32 old, __u32 id, __u32 gen)
{
	for (__u32 i = 0; i < XLB_LBLCR_SET; i++) {
		__u32 m = e->real_id[i];
		if (old ? m == old : !member_live(m, e->real_gen[i])) {
			e->real_id[i] = id;
			e->real_gen[i] = gen;
			return 1;
		}
	}
	return 0;
}

/* The destination's kept real for a new connection of an lblc/lblcr service, or 0 when the scheduler (wlc) must
 * pick: lblc's real while it takes connections and is not overloaded; lblcr's least loaded member unless it is
 * overloaded. A set of more than one real unchanged for XLB_LBLCR_SET_EXPIRE_NS first drops its most loaded
 * member, as IPVS's. */
static __always_inline __u32 local_keep(struct svc_meta *svc, struct lblc_key *k, __u64 now)
{
	struct lblc_dests *e = lblc.lookup(k);
	if (!e)
		return 0;
	__u32 id;
	if (svc->sched == XLB_SCHED_LBLC) {
		id = e->real_id[0];
		if (!member_takes(id, e->real_gen[0]))
			return 0;
	} else {
		__u32 live = 0;
		id = set_min(e, &live);
		if (!XLB_TRACING && live > 1 && (__s64)(now - e->lastmod_ns) > (__s64)XLB_LBLCR_SET_EXPIRE_NS) {
			__u32 most = set_max(e);
			if (most) {
				set_put(e, most, 0, 0);
				e->lastmod_ns = now;
			}
		}
	}
	if (!XLB_TRACING)
		e->lastuse_ns = now;
	if (!id || local_overloaded(svc, id))
		return 0;
	return id;
}

/* Record the scheduler's pick for the destination: lblc's entry now names it; it joins lblcr's set (in an empty
 * or removed member's place, else the most loaded member's: the set is bounded). */
static __always_inline void local_record(struct svc_meta *svc, struct lblc_key *k, __u32 id, __u32 gen, __u64 now)
{
	if (XLB_TRACING)
		return;
	struct lblc_dests *e = lblc.lookup(k);
	if (e && svc->sched == XLB_SCHED_LBLCR) {
		for (__u32 i = 0; i < XLB_LBLCR_SET; i++)
			if (e->real_id[i] == id && e->real_gen[i] == gen)
				return;  /* already a member */
		if (!set_put(e, 0, id, gen))
			set_put(e, set_max(e), id, gen);
		e->lastmod_ns = now;
		return;
	}
	struct lblc_dests ne = {.lastuse_ns = now, .lastmod_ns = now};
	ne.real_id[0] = id;
	ne.real_gen[0] = gen;
	lblc.update(k, &ne);
}

/* The real for a new connection of an lblc/lblcr service (0: none available): the destination's kept real, else
 * wlc's pick, recorded for the destination. */
static __always_inline __u32 pick_local(struct svc_meta *svc, struct pkt *p, __u64 now)
{
	if (!svc->table_len)
		return 0;
	XLB_TRACE_FLAG(XLB_TRACE_F_SCHED);
	struct lblc_key k = {.svc_id = svc->id, .family = p->family};
	__builtin_memcpy(k.addr, p->dst, 16);
	__u32 id = local_keep(svc, &k, now);
	if (id)
		return id;
	id = pick_by_conns(svc);
	struct real *r = reals.lookup(&id);
	if (!id || !r)
		return 0;
	local_record(svc, &k, id, r->gen, now);
	return id;
}

#endif
