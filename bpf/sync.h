/* sync.h — state sync export: a connection's tuple, service, real and state into the sync_events ring buffer, for
 * the daemon's IPVS sync master. Only on the slow path (a new connection, a TCP state change of an entry) and only
 * while settings.flags has XLB_SET_F_SYNC; an established flow in the flow cache never comes here. */
#ifndef XLB_SYNC_H
#define XLB_SYNC_H

#include "maps.h"
#include "trace.h"

static __always_inline void sync_export(struct settings *st, struct conn_key *ck, struct conn *c)
{
	if (XLB_TRACING || !(st->flags & XLB_SET_F_SYNC))
		return;
	struct sync_event ev = {
		.key = *ck,
		.svc_id = c->svc_id,
		.real_id = c->real_id,
		.state = c->state,
	};
	if (sync_events.ringbuf_output(&ev, sizeof(ev), 0)) {
		__u32 zero = 0;
		__u64 *lost = sync_lost.lookup(&zero);
		if (lost)
			*lost += 1;
	}
}

#endif
