/* conn.h — the connection table: TCP state from the flags the load balancer sees (one direction, as IPVS's
 * input-only table), timeouts per state, and the lookup that keeps an established flow on its real. */
#ifndef XLB_CONN_H
#define XLB_CONN_H

#include "maps.h"
#include "parse.h"
#include "trace.h"

static __always_inline void conn_key_of(struct pkt *p, struct conn_key *ck)
{
	__builtin_memcpy(ck->src, p->src, 16);
	__builtin_memcpy(ck->dst, p->dst, 16);
	ck->sport = p->sport;
	ck->dport = p->dport;
	ck->proto = p->proto;
	ck->family = p->family;
	ck->pad = 0;
}

/* The state a new connection starts in. */
static __always_inline __u8 conn_first_state(struct pkt *p)
{
	if (!is_stream(p))
		return XLB_CS_UDP;
	if (p->tcp_flags & (XLB_TCP_FIN | XLB_TCP_RST))
		return XLB_CS_FIN;
	if ((p->tcp_flags & (XLB_TCP_SYN | XLB_TCP_ACK)) == XLB_TCP_SYN)
		return XLB_CS_SYN;
	/* A mid-stream packet of an unknown flow (e.g. after a restart): it was established. */
	return XLB_CS_EST;
}

static __always_inline __u64 conn_timeout(struct settings *st, __u8 state)
{
	if (state >= XLB_CS_MAX)
		return 0;
	return st->timeout_ns[state];
}

static __always_inline int conn_expired(struct conn *c, struct settings *st, __u64 now)
{
	/* Signed: another CPU may have stamped the entry a tick after our clock read. */
	return (__s64)(now - c->seen_ns) > (__s64)conn_timeout(st, c->state);
}

/* A bare SYN on a closing TCP entry is a new connection reusing the tuple: schedule it afresh
 * (IPVS's conn_reuse_mode). */
static __always_inline int conn_reused(struct conn *c, struct pkt *p)
{
	return c->state == XLB_CS_FIN && (p->tcp_flags & (XLB_TCP_SYN | XLB_TCP_ACK)) == XLB_TCP_SYN;
}

/* Count a connection of real_id in state into (delta +1) or out of (-1) its real's active/inactive counts.
 * Crossing the real's uthreshold marks it overloaded; the control plane's reconcile clears that. */
static __always_inline void conn_count(__u32 real_id, __u8 state, __s64 delta, struct real *r)
{
	if (XLB_TRACING)
		return;
	struct real_conns *rc = real_conns.lookup(&real_id);
	if (!rc)
		return;
	if (state == XLB_CS_EST)
		__sync_fetch_and_add(&rc->active, delta);
	else
		__sync_fetch_and_add(&rc->inactive, delta);
	/* A plain store: racing CPUs all store the same flag. */
	if (delta > 0 && r && r->uthreshold && rc->active + rc->inactive >= (__s64)r->uthreshold)
		rc->flags = XLB_RC_F_OVERLOAD;
}

/* An entry about to be replaced (expired, reused, or its real gone) leaves its real's counts. */
static __always_inline void conn_forget(struct conn *c)
{
	__u32 real_id = c->real_id;
	struct real *r = reals.lookup(&real_id);
	if (r && r->gen == c->real_gen)
		conn_count(real_id, c->state, -1, 0);
}

/* What a packet of a known connection does: follow it to its real, be placed anew, or (a health-failed real,
 * on_real_failure = "reset") be dropped with the entry expired. ASK: its real failed, the service decides. */
enum xlb_fate {
	XLB_FATE_NEW = 0,
	XLB_FATE_FOLLOW = 1,
	XLB_FATE_ASK = 2,
	XLB_FATE_RESET = 3,
};

/* on_real_failure of the service (XLB_SVC_F_FAIL_*) for a packet of a connection whose real failed its health
 * checks; no service (gone meanwhile): placed anew, as after a removal. */
static __always_inline int failed_real_fate(struct svc_meta *svc, struct pkt *p)
{
	if (!svc)
		return XLB_FATE_NEW;
	__u32 mode = svc->flags & (XLB_SVC_F_FAIL_KEEP | XLB_SVC_F_FAIL_RESET);
	if (!mode)  /* the default: TCP keeps, UDP reschedules */
		return p->proto == IPPROTO_TCP ? XLB_FATE_FOLLOW : XLB_FATE_NEW;
	if (mode == XLB_SVC_F_FAIL_KEEP)
		return XLB_FATE_FOLLOW;
	if (mode == XLB_SVC_F_FAIL_RESET)
		return XLB_FATE_RESET;
	return XLB_FATE_NEW;
}

/* IPVS's expire_nodest_conn: the entry goes now (and leaves its real's counts), so the client's next packet, its
 * retransmission, is scheduled anew. */
static __always_inline void conn_expire(struct conn *c, struct conn_key *ck)
{
	if (XLB_TRACING)
		return;
	conn_forget(c);
	conns.delete(ck);
	half_open.delete(ck);  /* or it was a half-open one (bpf/halfopen.h) */
}

/* Advance the TCP state and the last-seen time of a live entry. Writes only what changed; a move between
 * established and any other state moves the connection between its real's active and inactive counts.
 * Returns 1 when the state changed (state sync exports the change), else 0. */
static __always_inline int conn_touch(struct conn *c, struct pkt *p, __u64 now)
{
	if (XLB_TRACING)
		return 0;
	if (is_stream(p)) {
		__u8 st = c->state;
		if (p->tcp_flags & (XLB_TCP_FIN | XLB_TCP_RST))
			st = XLB_CS_FIN;
		else if (st == XLB_CS_SYN && (p->tcp_flags & XLB_TCP_ACK))
			st = XLB_CS_EST;
		if (st != c->state) {
			if ((st == XLB_CS_EST) != (c->state == XLB_CS_EST)) {
				conn_count(c->real_id, c->state, -1, 0);
				conn_count(c->real_id, st, 1, 0);
			}
			c->state = st;
			c->seen_ns = now;
			return 1;
		}
	}
	if ((__s64)(now - c->seen_ns) > (__s64)XLB_TOUCH_NS)
		c->seen_ns = now;
	return 0;
}

#endif
