/* xlb.c — the XDP entry point: parse, find the connection or the service, place new connections (persistence
 * template, else the scheduler), forward to the real, count the verdict; a sync master also exports new
 * connections and state changes (sync.h). Each step lives in its own header. */
#include <uapi/linux/bpf.h>

#include "consts.h"
#include "structs.h"
#include "maps.h"
#include "parse.h"
#include "stats.h"
#include "classify.h"
#include "conn.h"
#include "persist.h"
#include "sched.h"
#include "fwd.h"
#include "flowcache.h"
#include "sync.h"
#include "trace.h"

/* Place a new connection of service svc: its persistence template when one is in force, else the scheduler.
 * Returns the real id (0: none available) and fills *r. */
static __always_inline __u32 place(struct pkt *p, struct svc_key *sk, struct svc_meta *svc, __u64 now,
				   struct settings *st, __u8 state, struct real **r)
{
	struct persist_key pk;
	struct persist *t = 0;
	__u32 real_id;
	if (svc->flags & XLB_SVC_F_PERSIST) {
		persist_key_of(sk, svc, p, &pk);
		t = persist.lookup(&pk);
		trace_tmpl(t);
		if (t && persist_valid(t, svc, now)) {
			real_id = t->real_id;
			*r = reals.lookup(&real_id);
			if (persist_real_ok(t, *r, svc)) {
				XLB_TRACE_FLAG(XLB_TRACE_F_TMPL_HIT);
				if (XLB_TRACING)
					return real_id;
				/* A new connection restarts the template's timer. */
				t->last_new_ns = now;
				__u64 until = now + conn_timeout(st, state);
				if ((__s64)(until - t->held_until_ns) > 0)
					t->held_until_ns = until;
				return real_id;
			}
		}
	}
	real_id = pick_real(svc, p);
	*r = reals.lookup(&real_id);
	if (!real_id || !*r)
		return 0;
	if (XLB_TRACING)
		return real_id;
	if (svc->flags & XLB_SVC_F_PERSIST) {
		struct persist nt = {
			.last_new_ns = now,
			.held_until_ns = now + conn_timeout(st, state),
			.real_id = real_id,
			.real_gen = (*r)->gen,
		};
		if (t) {
			/* The old template expired or lost its real: replace it in place. */
			*t = nt;
		} else if (persist.update(&pk, &nt)) {
			return 0;
		}
	}
	return real_id;
}

static __always_inline int handle(struct xdp_md *ctx, struct pkt *p, __u64 bytes)
{
	__u32 zero = 0;
	struct settings *st = settings.lookup(&zero);
	if (!st)
		return verdict(XLB_DROP_INTERNAL, XDP_PASS, bytes);
	if (p->fragment) {
		if (is_vip(p))
			return verdict(XLB_DROP_FRAGMENT, XDP_DROP, bytes);
		return verdict(XLB_PASS_FRAGMENT, XDP_PASS, bytes);
	}

	if ((st->flags & XLB_SET_F_VIP_FILTER) && !may_be_vip(p))
		return verdict(XLB_PASS_NO_SERVICE, XDP_PASS, bytes);

	int action = XDP_PASS;
	int reason;
	__u32 gen = st->gen;  /* before the connection entry is checked: see flowcache.h */
	__u32 slot = flow_slot(p);

	/* An established flow seen within the flow cache's TTL: its real, without the connection table. */
	struct flow_entry *fe = flow_cached(p, st, slot);
	if (fe) {
		__u32 real_id = fe->real_id;
		struct nexthop *nh = nh_cache.lookup(&real_id);
		if (nh && nexthop_for(nh, fe->real_gen)) {
			count_flow(fe->svc_id, real_id, bytes, 0);
			reason = send_dr(ctx, p, nh, &action);
			return verdict(reason, action, bytes);
		}
	}

	struct conn_key ck;
	conn_key_of(p, &ck);

	/* Established flow: keep its real while it lives and the real is still configured. */
	__u64 now = 0;
	struct conn *c = conns.lookup(&ck);
	trace_conn(c);
	if (c) {
		now = bpf_ktime_get_coarse_ns();
		if (!conn_expired(c, st, now) && !conn_reused(c, p)) {
			__u32 real_id = c->real_id;
			struct real *r = reals.lookup(&real_id);
			if (r && (r->flags & XLB_REAL_F_LIVE) && r->gen == c->real_gen) {
				XLB_TRACE_FLAG(XLB_TRACE_F_CONN_HIT);
				if (conn_touch(c, p, now))
					sync_export(st, &ck, c);
				count_flow(c->svc_id, real_id, bytes, 0);
				reason = forward_dr(ctx, p, r, real_id, now, &action);
				if (action != XDP_DROP)
					flow_fill(p, slot, gen, st, c, r);
				return verdict(reason, action, bytes);
			}
		}
		/* Its real was removed: reschedule below rather than black-hole the flow. */
	}

	struct svc_key sk;
	struct svc_meta *svc = lookup_service(p, st, &sk, bytes);
	trace_svc(&sk, svc);
	if (!svc)
		return verdict(XLB_PASS_NO_SERVICE, XDP_PASS, bytes);
	if (p->proto == IPPROTO_TCP && (p->tcp_flags & XLB_TCP_RST))
		return verdict(XLB_DROP_RST_NO_CONN, XDP_DROP, bytes);

	/* A new connection: hand over to xlb_new_conn. */
	struct handoff *h = handoffs.lookup(&zero);
	if (!h)
		return verdict(XLB_DROP_INTERNAL, XDP_PASS, bytes);
	h->p = *p;
	h->sk = sk;
	h->svc = *svc;
	h->now = c ? now : bpf_ktime_get_coarse_ns();
	h->gen = gen;
	h->flow_idx = slot;
	h->bytes = bytes;
	h->has_old = c != 0;
	if (c)
		h->old = *c;
	progs.call(ctx, XLB_PROG_NEW_CONN);
	return verdict(XLB_DROP_INTERNAL, XDP_PASS, bytes);  /* the tail call failed: the loader did not fill progs */
}

/* Second program (tail call): place a new connection (template, else scheduler), record it, forward it. */
int xlb_new_conn(struct xdp_md *ctx)
{
	__u32 zero = 0;
	struct handoff *h = handoffs.lookup(&zero);
	struct settings *st = settings.lookup(&zero);
	if (!h || !st)
		return verdict(XLB_DROP_INTERNAL, XDP_PASS, 0);
	struct pkt *p = &h->p;
	__u64 now = h->now, bytes = h->bytes;
	__u8 state = conn_first_state(p);
	struct real *r = 0;
	__u32 real_id = place(p, &h->sk, &h->svc, now, st, state, &r);
	if (!real_id || !r)
		return verdict(XLB_DROP_NO_REAL, XDP_DROP, bytes);

	struct conn nc = {
		.seen_ns = now,
		.real_id = real_id,
		.real_gen = r->gen,
		.svc_id = h->svc.id,
		.state = state,
	};
	struct conn_key ck;
	conn_key_of(p, &ck);
	if (h->has_old)
		conn_forget(&h->old);
	int recorded = !XLB_TRACING && !conns.update(&ck, &nc);
	if (recorded) {
		conn_count(real_id, state, 1, r);
		sync_export(st, &ck, &nc);
	}
	count_flow(h->svc.id, real_id, bytes, 1);
	int action = XDP_PASS;
	int reason = forward_dr(ctx, p, r, real_id, now, &action);
	if (recorded && action != XDP_DROP)
		flow_fill(p, h->flow_idx, h->gen, st, &nc, r);
	return verdict(reason, action, bytes);
}

int xlb_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 bytes = data_end - data;
	struct pkt p = {};
	int reason = parse_packet(data, data_end, &p);
	if (reason == XLB_PARSE_OK)
		return handle(ctx, &p, bytes);
	if (reason == XLB_PASS_NOT_IP || reason == XLB_PASS_OTHER_PROTO || reason == XLB_PASS_VLAN)
		return verdict(reason, XDP_PASS, bytes);
	/* Malformed. To no VIP and no mark prefix: not ours, the kernel judges it as it would without xlb. */
	if (p.family && !is_vip(&p))
		return verdict(XLB_PASS_NO_SERVICE, XDP_PASS, bytes);
	return verdict(reason, XDP_DROP, bytes);
}

/* Not on the packet path: the control plane runs it (BPF_PROG_TEST_RUN, xlb/clock.py) to learn the kernel's tick
 * rate, the unit of settings.flow_ttl. Writes bpf_jiffies64() and bpf_ktime_get_ns() over the frame's first 16
 * bytes. */
int xlb_clock(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 *out = data;
	if ((void *)(out + 2) > data_end)
		return XDP_ABORTED;
	out[0] = bpf_jiffies64();
	out[1] = bpf_ktime_get_ns();
	return XDP_PASS;
}
