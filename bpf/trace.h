/* trace.h — `xlb trace`: the same program built with -DXLB_TRACE records what it decided for one packet in trace_out
 * and writes no live state (connections, templates, rr positions, counters, next-hop cache); xlb/trace.py points it
 * at the live maps and runs it with BPF_PROG_TEST_RUN. In the normal build every macro here is empty and
 * XLB_TRACING is 0, so the guarded writes compile as before. A new data-plane map write needs a guard too:
 * tests/test_trace.py compares every map before and after a trace. */
#ifndef XLB_TRACE_H
#define XLB_TRACE_H

#include "maps.h"

#ifdef XLB_TRACE
#define XLB_TRACING 1

static __always_inline struct trace_rec *trace_rec(void)
{
	__u32 zero = 0;
	return trace_out.lookup(&zero);
}

/* Set one field / or a flag into the record. */
#define XLB_TRACE_NOTE(field, val) do { struct trace_rec *t__ = trace_rec(); if (t__) t__->field = (val); } while (0)
#define XLB_TRACE_FLAG(f) do { struct trace_rec *t__ = trace_rec(); if (t__) t__->flags |= (f); } while (0)

/* The connection entry of the packet's tuple (c may be NULL). */
static __always_inline void trace_conn(struct conn *c)
{
	struct trace_rec *t = trace_rec();
	if (!t || !c)
		return;
	t->flags |= XLB_TRACE_F_CONN_FOUND;
	t->conn_seen_ns = c->seen_ns;
	t->conn_real_id = c->real_id;
	t->svc_id = c->svc_id;       /* a service lookup, if one follows, overwrites it */
	t->conn_state = c->state;
}

/* The persistence template under the packet's key (tp may be NULL). */
static __always_inline void trace_tmpl(struct persist *tp)
{
	struct trace_rec *t = trace_rec();
	if (!t || !tp)
		return;
	t->flags |= XLB_TRACE_F_TMPL_FOUND;
	t->tmpl_last_new_ns = tp->last_new_ns;
	t->tmpl_held_until_ns = tp->held_until_ns;
	t->tmpl_real_id = tp->real_id;
}

/* The matched service (svc may be NULL). */
static __always_inline void trace_svc(struct svc_key *sk, struct svc_meta *svc)
{
	struct trace_rec *t = trace_rec();
	if (!t || !svc)
		return;
	t->flags |= XLB_TRACE_F_SVC;
	t->svc = *sk;
	t->svc_id = svc->id;
}

static __always_inline void trace_mark(struct mark_val *mv)
{
	struct trace_rec *t = trace_rec();
	if (!t)
		return;
	t->flags |= XLB_TRACE_F_MARK;
	t->mark = mv->mark;
	t->rule_id = mv->rule_id;
}

static __always_inline void trace_verdict(__u32 reason, int action)
{
	struct trace_rec *t = trace_rec();
	if (!t)
		return;
	t->reason = reason;
	t->action = action;
	t->now_ns = bpf_ktime_get_coarse_ns();
}

/* The next-hop cache entry a lookup would fill: the record's scratch copy instead of the live cache.
 * NULL return becomes XLB_DROP_INTERNAL (it cannot happen: trace_out has its one entry). */
#define XLB_TRACE_SCRATCH_NH(nh) do { struct trace_rec *t__ = trace_rec(); if (!t__) return XLB_DROP_INTERNAL; \
	nh = &t__->nh_scratch; } while (0)

#else
#define XLB_TRACING 0
#define XLB_TRACE_NOTE(field, val) do { } while (0)
#define XLB_TRACE_FLAG(f) do { } while (0)
#define trace_conn(c) do { } while (0)
#define trace_tmpl(tp) do { } while (0)
#define trace_svc(sk, svc) do { } while (0)
#define trace_mark(mv) do { } while (0)
#define trace_verdict(reason, action) do { } while (0)
#define XLB_TRACE_SCRATCH_NH(nh) do { } while (0)
#endif

#endif
