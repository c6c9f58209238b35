/* maps.h — every map of the data plane. The control plane writes configuration maps; the data plane writes
 * conns, persist (new entries and timestamps), rr_pos, nh_cache and the counters. */
#ifndef XLB_MAPS_H
#define XLB_MAPS_H

#include "structs.h"
#include "parse.h"

/* Virtual services by key; written by the control plane. */
BPF_HASH(services, struct svc_key, struct svc_meta, XLB_MAX_SERVICES);
/* Real servers by real id; written by the control plane. */
BPF_ARRAY(reals, struct real, XLB_MAX_REALS);
/* Live connection counts per real id (connection-count schedulers, thresholds); the data plane adds, the
 * control plane reconciles. */
BPF_ARRAY(real_conns, struct real_conns, XLB_MAX_REALS);
/* Scheduling tables: real ids, one region per service (svc_meta.table_off/len); written by the control plane. */
BPF_ARRAY(sched_slots, __u32, XLB_SCHED_SLOTS);
/* Round-robin position per service, per CPU; written by the data plane. */
BPF_PERCPU_ARRAY(rr_pos, __u32, XLB_MAX_SERVICES);
/* Connection table; the data plane inserts, the control plane sweeps expired entries. Per-CPU LRU lists
 * make inserts cheap. */
BPF_F_TABLE("lru_hash", struct conn_key, struct conn, conns, XLB_CONNS, BPF_F_NO_COMMON_LRU);
/* Persistence templates; the data plane inserts and refreshes, the control plane sets holds and sweeps. */
BPF_TABLE("lru_hash", struct persist_key, struct persist, persist, XLB_TEMPLATES);
/* Firewall-mark classification; written by the control plane. */
BPF_F_TABLE("lpm_trie", struct mark_key, struct mark_val, mark_rules, XLB_MARK_ENTRIES, BPF_F_NO_PREALLOC);
/* Every VIP and mark destination, to tell fragments for us from others; written by the control plane. */
BPF_F_TABLE("lpm_trie", struct vip_key, __u32, vip_prefixes, XLB_VIP_PREFIXES, BPF_F_NO_PREALLOC);
/* Timeouts and global flags; one entry written by the control plane. */
BPF_ARRAY(settings, struct settings, 1);
/* Next hop per real, per CPU; written by the data plane from bpf_fib_lookup. */
BPF_PERCPU_ARRAY(nh_cache, struct nexthop, XLB_MAX_REALS);
/* Counters: per service id, per real id, per mark rule id, per verdict reason. */
BPF_PERCPU_ARRAY(svc_stats, struct counters, XLB_MAX_SERVICES);
BPF_PERCPU_ARRAY(real_stats, struct counters, XLB_MAX_REALS);
BPF_PERCPU_ARRAY(mark_stats, struct counters, XLB_MAX_MARK_RULES);
BPF_PERCPU_ARRAY(verdicts, struct counters, XLB_REASON_MAX);
/* What the trace build decided for one packet (bpf/trace.h); one entry, never written by the live program. */
BPF_ARRAY(trace_out, struct trace_rec, 1);

/* Private to the data plane (not mirrored in Python). New connections are placed by a second program, reached by
 * a tail call, so the verifier checks scheduling from one entry state instead of every state the packet path
 * can reach; the handoff carries what the first program already knows. */
#define XLB_PROG_NEW_CONN 0
BPF_PROG_ARRAY(progs, 1);
struct handoff {
	struct pkt p;
	struct svc_key sk;
	struct svc_meta svc;       /* a copy of the matched service */
	struct conn old;           /* the entry being replaced (expired, reused, or its real gone), if any */
	__u64 now;                 /* coarse clock, read once */
	__u64 bytes;
	__u32 has_old;
	__u32 pad;
};
BPF_PERCPU_ARRAY(handoffs, struct handoff, 1);

#endif
