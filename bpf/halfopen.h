/* halfopen.h — the SYN-flood defense: a new TCP/SCTP connection's entry (and a template it created) waits in its own
 * small LRU tables, half_open and persist_half, until the client's handshake ACK promotes it to conns and persist.
 * A flood of never-answered SYNs from random sources evicts only half-open entries: established connections and
 * the templates of clients that completed a handshake stay (docs/reliability.md, SYN flood). */
#ifndef XLB_HALFOPEN_H
#define XLB_HALFOPEN_H

#include "classify.h"
#include "conn.h"
#include "flowcache.h"
#include "frag.h"
#include "fwd.h"
#include "maps.h"
#include "persist.h"
#include "stats.h"
#include "sync.h"

static __always_inline void conn_event(__u32 ev)
{
	if (XLB_TRACING)
		return;
	__u64 *n = conn_events.lookup(&ev);
	if (n)
		*n += 1;
}

/* Does a new connection starting in this state wait in half_open? A handshake's first packet (TCP SYN, SCTP INIT),
 * while the defense is on ([tables] half_open). */
static __always_inline int half_open_state(struct settings *st, __u8 state)
{
	return (st->flags & XLB_SET_F_HALF_OPEN) && state == XLB_CS_SYN;
}

/* Does this packet of a half-open connection complete its handshake: an ACK without SYN or RST (a FIN with it too:
 * the connection is then closing in conns, as its state says). */
static __always_inline int half_open_promotes(struct pkt *p)
{
	return (p->tcp_flags & (XLB_TCP_SYN | XLB_TCP_ACK | XLB_TCP_RST)) == XLB_TCP_ACK;
}

/* A persistent service's template the half-open connection created moves to persist with it (a client's template
 * stays where a flood cannot reach it only once the client answered). */
static __always_inline void promote_template(struct pkt *p, struct settings *st, struct conn *c)
{
	struct svc_key sk;
	struct svc_meta *svc = lookup_service(p, st, &sk, 0);  /* a known connection's packet: no mark hit */
	if (!svc || !(svc->flags & XLB_SVC_F_PERSIST))
		return;
	struct persist_key pk;
	persist_key_of(&sk, svc, p, &pk);
	struct persist *ht = persist_half.lookup(&pk);
	if (!ht || ht->real_id != c->real_id)
		return;
	struct persist t = *ht;
	if (!persist.update(&pk, &t))
		persist_half.delete(&pk);
}

/* The promotion (the handoff's old: the half-open entry): the entry's state advanced by this packet, written to
 * conns and deleted from half_open, its template (and a NAT connection's reverse entry, bpf/nat.h) moved; then the packet goes to its real like any established
 * one's. */
static __always_inline int half_open_promote(struct xdp_md *ctx, struct handoff *h, struct settings *st)
{
	struct pkt *p = &h->p;
	__u64 now = h->now, bytes = h->bytes;
	struct conn nc = h->old;
	__u32 real_id = nc.real_id;
	struct real *r = reals.lookup(&real_id);
	if (!r)
		return verdict(XLB_DROP_NO_REAL, XDP_DROP, bytes);
	struct conn_key ck;
	conn_key_of(p, &ck);
	int changed = conn_touch(&nc, p, now);
	if (!XLB_TRACING && !conns.update(&ck, &nc)) {
		half_open.delete(&ck);
		conn_event(XLB_EV_PROMOTED);
		if (changed)
			sync_export(st, &ck, &nc);
		promote_template(p, st, &nc);
		if (r->method == XLB_METHOD_NAT)
			nat_promote(p, r, real_id, nc.svc_id, now);
	}
	count_flow(nc.svc_id, real_id, bytes, 0);
	frag_note(p, real_id, nc.real_gen, nc.svc_id);
	int action = XDP_PASS;
	int reason = forward_real(ctx, p, r, real_id, now, &action);
	if (action != XDP_DROP)
		flow_fill(p, h->flow_idx, h->gen, st, &nc, r);
	return verdict(reason, action, bytes);
}

#endif
