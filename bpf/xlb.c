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
#include "nat.h"
#include "locality.h"
#include "sip.h"
#include "fwd.h"
#include "frag.h"
#include "icmp.h"
#include "flowcache.h"
#include "replycache.h"
#include "sync.h"
#include "halfopen.h"
#include "trace.h"

/* Place a new connection of service svc: its persistence template when one is in force, else the scheduler (with
 * placement = "consistent": the Maglev slot of the template's key, the same on every balancer).
 * Returns the real id (0: none available) and fills *r. */
static __always_inline __u32 place(struct xdp_md *ctx, struct handoff *h, struct settings *st, __u8 state,
				   struct real **r)
{
	struct pkt *p = &h->p;
	struct svc_key *sk = &h->sk;
	struct svc_meta *svc = &h->svc;
	__u64 now = h->now;
	struct persist_key pk;
	struct persist *t = 0;
	__u32 real_id;
	if (svc->flags & XLB_SVC_F_PERSIST) {
		persist_key_of(sk, svc, p, &pk);
		if (h->sip_state == XLB_SIP_FOUND)
			sip_key(&pk, h);
		t = persist.lookup(&pk);
		if ((!t || !persist_valid(t, svc, now)) && (st->flags & XLB_SET_F_HALF_LOOK)) {
			/* a template of a connection still in its handshake (bpf/halfopen.h) */
			struct persist *ht = persist_half.lookup(&pk);
			if (ht)
				t = ht;
		}
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
	*r = 0;
	if (svc->flags & XLB_SVC_F_CONSISTENT) {
		XLB_TRACE_FLAG(XLB_TRACE_F_SCHED);
		real_id = svc->table_len ? pick_hashed(svc, placement_hash(&pk)) : 0;
	} else if (is_locality(svc)) {
		/* lblc/lblcr pick in their own program (the verifier's budget), which calls this one again. */
		if (!h->local_done) {
			h->local_done = 1;
			progs.call(ctx, XLB_PROG_LOCALITY);
			return 0;
		}
		real_id = h->local_real;
	} else {
		real_id = pick_real(svc, p);
	}
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
		/* A new template, or the old one (expired, or its real gone) replaced. Not written through the looked-up
		 * pointer: keeping it live across the scheduler doubled what the verifier explores. A half-open
		 * connection's waits with it in persist_half (bpf/halfopen.h). */
		if (half_open_state(st, state) ? persist_half.update(&pk, &nt) : persist.update(&pk, &nt))
			return 0;
	}
	return real_id;
}

/* A TCP/UDP packet that is no service's: a real's reply to a NAT connection (bpf/nat.h), else the kernel's. A
 * balancer with no NAT service looks no further. */
static __always_inline int no_service(struct xdp_md *ctx, struct pkt *p, struct settings *st, __u64 bytes)
{
	int action = XDP_PASS;
	int reason = st->flags & XLB_SET_F_NAT ? nat_reply(ctx, p, st, bytes, &action) : -1;
	if (reason < 0)
		return verdict(XLB_PASS_NO_SERVICE, XDP_PASS, bytes);
	return verdict(reason, action, bytes);
}

/* The handoff: a packet's state from one program of the packet path to the next it tail-calls (one per CPU). */
static __always_inline struct handoff *handoff(void)
{
	__u32 zero = 0;
	return handoffs.lookup(&zero);
}

/* Tail-call program `prog` (its inputs in the handoff). Returns only if the call failed: the loader did not fill
 * progs. */
static __always_inline int tail_call(struct xdp_md *ctx, __u32 prog, __u64 bytes)
{
	progs.call(ctx, prog);
	return verdict(XLB_DROP_INTERNAL, XDP_PASS, bytes);
}

/* Hand a half-open connection's handshake ACK to xlb_promote (its own program: the entry's verifier budget). */
static __always_inline int promote_handoff(struct xdp_md *ctx, struct pkt *p, struct conn *c, __u64 now, __u32 gen,
					   __u32 slot, __u64 bytes)
{
	struct handoff *h = handoff();
	if (!h)
		return verdict(XLB_DROP_INTERNAL, XDP_PASS, bytes);
	h->p = *p;
	h->old = *c;
	h->now = now;
	h->gen = gen;
	h->flow_idx = slot;
	h->bytes = bytes;
	return tail_call(ctx, XLB_PROG_PROMOTE, bytes);
}

static __always_inline int handle(struct xdp_md *ctx, struct pkt *p, __u64 bytes)
{
	__u32 zero = 0;
	struct settings *st = settings.lookup(&zero);
	if (!st)
		return verdict(XLB_DROP_INTERNAL, XDP_PASS, bytes);
	if (p->fragment) {
		if (!is_vip(p))
			return verdict(XLB_PASS_FRAGMENT, XDP_PASS, bytes);
		if (p->frag_later)
			return frag_follow(ctx, p, bytes);
		/* A first fragment: placed by its ports below (never from the flow cache), noted for the later ones. */
	}

	int action = XDP_PASS;
	int reason;
	if ((st->flags & XLB_SET_F_VIP_FILTER) && !may_be_vip(p))
		return no_service(ctx, p, st, bytes);

	__u32 gen = st->gen;  /* before the connection entry is checked: see flowcache.h */
	__u32 slot = flow_slot(p);

	/* An established flow seen within the flow cache's TTL: its real, without the connection table. */
	struct flow_entry *fe = p->fragment ? 0 : flow_cached(p, st, slot);
	if (fe) {
		__u32 real_id = fe->real_id;
		struct nexthop *nh = nh_cache.lookup(&real_id);
		if (nh && nexthop_for(nh, fe->real_gen)) {
			count_flow(fe->svc_id, real_id, bytes, 0);
			if (fe->method == XLB_METHOD_DR) {
				reason = send_dr(ctx, p, nh, &action);
				return verdict(reason, action, bytes);
			}
			/* NAT needs the real's address and port, TUN its tunnel. */
			struct real *r = reals.lookup(&real_id);
			if (r && r->gen == fe->real_gen) {
				reason = send_real(ctx, p, r, real_id, nh, &action);
				return verdict(reason, action, bytes);
			}
		}
	}

	struct conn_key ck;
	conn_key_of(p, &ck);

	/* Established flow: keep its real while it lives and the real is still configured (a health-failed real:
	 * as its service's on_real_failure says, which needs the service). */
	__u64 now = 0;
	struct conn *c = conns.lookup(&ck);
	int half = 0;
	if (!c && is_stream(p) && (st->flags & XLB_SET_F_HALF_LOOK)) {
		c = half_open.lookup(&ck);  /* a connection in its handshake (bpf/halfopen.h) */
		half = c != 0;
	}
	struct real *r = 0;
	__u32 real_id = 0;
	int fate = XLB_FATE_NEW;
	trace_conn(c);
	if (c) {
		now = bpf_ktime_get_coarse_ns();
		if (!conn_expired(c, st, now) && !conn_reused(c, p)) {
			real_id = c->real_id;
			r = reals.lookup(&real_id);
			if (r && (r->flags & XLB_REAL_F_LIVE) && r->gen == c->real_gen)
				fate = (r->flags & XLB_REAL_F_DOWN) ? XLB_FATE_ASK : XLB_FATE_FOLLOW;
		}
		/* Its real was removed: reschedule below rather than black-hole the flow. */
	}

	struct svc_key sk;
	struct svc_meta *svc = 0;
	if (fate != XLB_FATE_FOLLOW) {
		svc = lookup_service(p, st, &sk, bytes);
		trace_svc(&sk, svc);
		if (fate == XLB_FATE_ASK)
			fate = failed_real_fate(svc, p);
	}
	if (fate == XLB_FATE_FOLLOW && c && r) {
		XLB_TRACE_FLAG(XLB_TRACE_F_CONN_HIT);
		if (half && !XLB_TRACING && half_open_promotes(p))
			return promote_handoff(ctx, p, c, now, gen, slot, bytes);
		if (conn_touch(c, p, now))
			sync_export(st, &ck, c);
		count_flow(c->svc_id, real_id, bytes, 0);
		frag_note(p, real_id, c->real_gen, c->svc_id);
		reason = forward_real(ctx, p, r, real_id, now, &action);
		if (action != XDP_DROP)
			flow_fill(p, slot, gen, st, c, r);
		return verdict(reason, action, bytes);
	}
	if (fate == XLB_FATE_RESET && c) {
		conn_expire(c, &ck);
		return verdict(XLB_DROP_REAL_FAILED, XDP_DROP, bytes);
	}
	if (!svc) {
		frag_note(p, 0, 0, 0);  /* the kernel's: so are its later fragments */
		return no_service(ctx, p, st, bytes);
	}
	if (is_stream(p) && (p->tcp_flags & XLB_TCP_RST))
		return verdict(XLB_DROP_RST_NO_CONN, XDP_DROP, bytes);

	/* A new connection: hand over to xlb_new_conn. */
	struct handoff *h = handoff();
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
	h->local_done = 0;
	h->sip_state = 0;
	if (c)
		h->old = *c;
	return tail_call(ctx, XLB_PROG_NEW_CONN, bytes);
}

/* A tail-called program's inputs: the handoff its entry filled (returned) and the settings (*st). */
static __always_inline struct handoff *tail_inputs(struct settings **st)
{
	__u32 zero = 0;
	*st = settings.lookup(&zero);
	return handoff();
}

/* Second program (tail call): place a new connection (its template, else the scheduler; SIP and lblc/lblcr
 * services through their own tail calls, which hand back here), then hand the real to xlb_new_fwd. */
int xlb_new_conn(struct xdp_md *ctx)
{
	struct settings *st;
	struct handoff *h = tail_inputs(&st);
	if (!h || !st)
		return verdict(XLB_DROP_INTERNAL, XDP_PASS, 0);
	struct pkt *p = &h->p;
	__u64 bytes = h->bytes;
	struct real *r = 0;
	if (sip_engine(&h->svc, p)) {
		if (!h->sip_state)
			return tail_call(ctx, XLB_PROG_SIP, bytes);
		if (h->sip_state != XLB_SIP_FOUND)
			return verdict(XLB_DROP_SIP_NO_CALLID, XDP_DROP, bytes);
	}
	__u32 real_id = place(ctx, h, st, conn_first_state(p), &r);
	if (!real_id || !r)
		return verdict(XLB_DROP_NO_REAL, XDP_DROP, bytes);
	h->real_id = real_id;
	return tail_call(ctx, XLB_PROG_NEW_FWD, bytes);
}

/* Third program (tail call from xlb_new_conn): record the placed connection (no entry for an ops datagram; a SIP
 * datagram's keyed by its Call-ID), send its packet to its real by its method (NAT also records the reply's tuple)
 * and fill the flow cache. Apart from the placing for the verifier's budget: the two together pass a million
 * explored instructions. */
int xlb_new_fwd(struct xdp_md *ctx)
{
	struct settings *st;
	struct handoff *h = tail_inputs(&st);
	if (!h || !st)
		return verdict(XLB_DROP_INTERNAL, XDP_PASS, 0);
	struct pkt *p = &h->p;
	__u64 now = h->now, bytes = h->bytes;
	__u8 state = conn_first_state(p);
	__u32 real_id = h->real_id;
	struct real *r = reals.lookup(&real_id);
	if (!r)
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
	int ops = (h->svc.flags & XLB_SVC_F_OPS) && p->proto == IPPROTO_UDP;
	int half = half_open_state(st, state);
	if (h->has_old && !ops) {
		conn_forget(&h->old);
		/* a reused tuple's closing entry goes: its handshake ACK must find the new half-open one */
		if (half && !XLB_TRACING)
			conns.delete(&ck);
	}
	/* The SIP engine's datagrams follow their Call-ID's template, never their tuple: their entries (which count
	 * them for the schedulers and expire as UDP) are keyed apart, by the Call-ID's hash in the key's pad, so the
	 * tuple lookup never finds them; one per (tuple, Call-ID), refreshed by its datagrams. */
	int sip = h->sip_state == XLB_SIP_FOUND;
	struct conn *seen = 0;
	if (sip) {
		ck.pad = (h->sip_hash[0] & 0xfffe) | 1;
		seen = conns.lookup(&ck);
		if (seen && (seen->real_id != real_id || seen->real_gen != r->gen)) {
			conn_forget(seen);
			seen = 0;
		}
	}
	int recorded = 0;
	if (seen) {
		if (!XLB_TRACING)
			seen->seen_ns = now;
	} else {
		recorded = !ops && !XLB_TRACING && !(half ? half_open.update(&ck, &nc) : conns.update(&ck, &nc));
	}
	if (recorded && (half || state == XLB_CS_EST))
		conn_event(half ? XLB_EV_HALF_OPEN : XLB_EV_MIDSTREAM);
	if (recorded) {
		conn_count(real_id, state, 1, r);
		/* a half-open entry is exported when its ACK promotes it (halfopen.h): as IPVS syncs TCP from ESTABLISHED
		 * on, and so that a flood's SYNs never reach a backup's tables through the sync */
		if (!half)
			sync_export(st, &ck, &nc);
	}
	if (recorded && r->method == XLB_METHOD_NAT)
		nat_record(p, r, real_id, h->svc.id, now, half);
	count_flow(h->svc.id, real_id, bytes, !seen);
	frag_note(p, real_id, r->gen, h->svc.id);
	int action = XDP_PASS;
	int reason = forward_real(ctx, p, r, real_id, now, &action);
	if (recorded && !sip && action != XDP_DROP)
		flow_fill(p, h->flow_idx, h->gen, st, &nc, r);
	return verdict(reason, action, bytes);
}

/* Seventh program (tail call from the entry): a half-open connection's handshake ACK (bpf/halfopen.h). */
int xlb_promote(struct xdp_md *ctx)
{
	struct settings *st;
	struct handoff *h = tail_inputs(&st);
	if (!h || !st)
		return verdict(XLB_DROP_INTERNAL, XDP_PASS, 0);
	return half_open_promote(ctx, h, st);
}

/* Fourth program (tail call): ICMP and ICMPv6 (bpf/icmp.h). */
int xlb_icmp(struct xdp_md *ctx)
{
	struct settings *st;
	struct handoff *h = tail_inputs(&st);
	if (!h || !st)
		return verdict(XLB_DROP_INTERNAL, XDP_PASS, 0);
	return handle_icmp(ctx, &h->p, st, h->bytes);
}

/* Hand an ICMP packet to xlb_icmp: the packet path's verifier states stay apart from the ICMP ones. */
static __always_inline int icmp_handoff(struct xdp_md *ctx, struct pkt *p, __u64 bytes)
{
	struct handoff *h = handoff();
	if (!h)
		return verdict(XLB_DROP_INTERNAL, XDP_PASS, bytes);
	h->p = *p;
	h->bytes = bytes;
	return tail_call(ctx, XLB_PROG_ICMP, bytes);
}

/* Fifth program (tail call from xlb_new_conn): lblc/lblcr's pick for a new connection, handed back to it. */
int xlb_new_local(struct xdp_md *ctx)
{
	struct handoff *h = handoff();
	if (!h)
		return verdict(XLB_DROP_INTERNAL, XDP_PASS, 0);
	h->local_real = pick_local(&h->svc, &h->p, h->now);
	return tail_call(ctx, XLB_PROG_NEW_CONN, h->bytes);
}

/* Sixth program (tail call from xlb_new_conn): the SIP engine's Call-ID of a datagram, handed back to it. */
int xlb_sip_callid(struct xdp_md *ctx)
{
	struct handoff *h = handoff();
	if (!h)
		return verdict(XLB_DROP_INTERNAL, XDP_PASS, 0);
	sip_callid(ctx, h);
	return tail_call(ctx, XLB_PROG_NEW_CONN, h->bytes);
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
	if (reason == XLB_PARSE_ICMP)
		return icmp_handoff(ctx, &p, bytes);
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
