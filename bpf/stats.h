/* stats.h — per-CPU counters: verdicts by reason, services, reals, mark rules. No atomics: each CPU owns its slot. */
#ifndef XLB_STATS_H
#define XLB_STATS_H

#include "maps.h"
#include "trace.h"

static __always_inline void count(struct counters *c, __u64 bytes, __u64 new_conn)
{
	if (!c || XLB_TRACING)
		return;
	c->packets++;
	c->bytes += bytes;
	c->conns += new_conn;
}

/* Count the packet under its reason and return the XDP action. */
static __always_inline int verdict(__u32 reason, int action, __u64 bytes)
{
	trace_verdict(reason, action);
	count(verdicts.lookup(&reason), bytes, 0);
	return action;
}

static __always_inline void count_flow(__u32 svc_id, __u32 real_id, __u64 bytes, __u64 new_conn)
{
	count(svc_stats.lookup(&svc_id), bytes, new_conn);
	count(real_stats.lookup(&real_id), bytes, new_conn);
}

#endif
