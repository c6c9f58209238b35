/* maps.h — every map of the data plane. The control plane writes configuration maps; the data plane writes
 * conns, persist (new entries and timestamps), rr_pos, nh_cache and the counters. */
#ifndef XLB_MAPS_H
#define XLB_MAPS_H

#include "structs.h"
#include "parse.h"

/* XLB_MAP: a map pinned under XLB_PIN_DIR (the loader's -D flag; `xlb run` gives one per interface) so that a
 * restarted daemon adopts its state and the data plane keeps it while no daemon runs. Without XLB_PIN_DIR (the
 * packet tests) maps are private to the loaded program. bcc reuses a pinned map whatever its layout: the loader
 * checks the layout before it loads (xlb/dataplane/layout.py). */
#ifdef XLB_PIN_DIR
#define XLB_MAP(_type, _key, _leaf, _name, _max, _flags) \
	BPF_TABLE_PINNED(_type, _key, _leaf, _name, _max, XLB_PIN_DIR "/" #_name, _flags)
#else
#define XLB_MAP(_type, _key, _leaf, _name, _max, _flags) BPF_F_TABLE(_type, _key, _leaf, _name, _max, _flags)
#endif

/* Virtual services by key; written by the control plane. */
XLB_MAP("hash", struct svc_key, struct svc_meta, services, XLB_MAX_SERVICES, 0);
/* Real servers by real id; written by the control plane. */
XLB_MAP("array", int, struct real, reals, XLB_MAX_REALS, 0);
/* Tunnel settings per real id (XLB_METHOD_TUN reals); written by the control plane. */
XLB_MAP("array", int, struct tunnel, tunnels, XLB_MAX_REALS, 0);
/* Live connection counts per real id (connection-count schedulers, thresholds); the data plane adds, the
 * control plane reconciles. */
XLB_MAP("array", int, struct real_conns, real_conns, XLB_MAX_REALS, 0);
/* Scheduling tables: real ids, one region per service (svc_meta.table_off/len); written by the control plane. */
XLB_MAP("array", int, __u32, sched_slots, XLB_SCHED_SLOTS, 0);
/* Round-robin position per service, shared by every CPU (one rotation per service, as IPVS's rr); the data plane
 * advances it under its lock, the control plane zeroes it for a new service. */
XLB_MAP("array", int, struct rr_pos, rr_pos, XLB_MAX_SERVICES, 0);
/* Connection table; the data plane inserts, the control plane sweeps expired entries. Per-CPU LRU lists
 * (BPF_F_NO_COMMON_LRU) rotate a CPU's list over cold elements on every insert: one LRU shared by the CPUs, which
 * hands each CPU free elements 128 at a time, inserts for ~40% less, and any CPU may use the whole table. */
XLB_MAP("lru_hash", struct conn_key, struct conn, conns, XLB_CONNS, 0);
/* Half-open connections: a new TCP/SCTP connection's entry until its handshake's ACK moves it to conns
 * (bpf/halfopen.h), so that a SYN flood evicts only half-open entries, never established ones. The data plane
 * inserts, promotes and deletes; the control plane's sweep deletes expired entries. */
XLB_MAP("lru_hash", struct conn_key, struct conn, half_open, XLB_HALF_OPEN, 0);
/* Templates created by a half-open connection, moved to persist with it (bpf/halfopen.h); same writers. */
XLB_MAP("lru_hash", struct persist_key, struct persist, persist_half, XLB_HALF_OPEN, 0);
/* Connection-table events by enum xlb_conn_event, per CPU; written by the data plane. */
XLB_MAP("percpu_array", int, __u64, conn_events, XLB_EV_MAX, 0);
/* NAT connections by their replies' tuple (struct nat_rev); the data plane inserts with the connection entry, the
 * control plane's sweep deletes those whose connection entry is gone or names another real. */
XLB_MAP("lru_hash", struct conn_key, struct nat_rev, nat_revs, XLB_CONNS, 0);
/* A half-open NAT connection's reverse entry (bpf/halfopen.h): the real's SYN-ACK finds it here when nat_revs has
 * none, and the handshake's ACK moves it to nat_revs, so that a SYN flood to a NAT service evicts only these; same
 * writers as nat_revs. */
XLB_MAP("lru_hash", struct conn_key, struct nat_rev, nat_half, XLB_HALF_OPEN, 0);
/* Persistence templates; the data plane inserts and refreshes, the control plane sets holds and sweeps. */
XLB_MAP("lru_hash", struct persist_key, struct persist, persist, XLB_TEMPLATES, 0);
/* lblc/lblcr locality tables; the data plane inserts and updates, the control plane sweeps expired entries. */
XLB_MAP("lru_hash", struct lblc_key, struct lblc_dests, lblc, XLB_LBLC_ENTRIES, 0);
/* Firewall-mark classification; written by the control plane. */
XLB_MAP("lpm_trie", struct mark_key, struct mark_val, mark_rules, XLB_MARK_ENTRIES, BPF_F_NO_PREALLOC);
/* Every VIP and mark destination, to tell fragments for us from others; written by the control plane. */
XLB_MAP("lpm_trie", struct vip_key, __u32, vip_prefixes, XLB_VIP_PREFIXES, BPF_F_NO_PREALLOC);
/* A bitmap of hashed VIPs and mark-rule networks (bpf/classify.h may_be_vip); written by the control plane. */
XLB_MAP("array", int, __u64, vip_filter, XLB_VIP_FILTER_WORDS, 0);
/* Timeouts and global flags; one entry written by the control plane. */
XLB_MAP("array", int, struct settings, settings, 1, 0);
/* Next hop per real, per CPU; written by the data plane from bpf_fib_lookup. Derived state: not pinned. */
BPF_PERCPU_ARRAY(nh_cache, struct nexthop, XLB_MAX_REALS);
/* Established flows by tuple hash (sets of two entries): one region of XLB_FLOW_CACHE entries per CPU (a plain
 * array, not a per-CPU one: that costs a second, dependent load per lookup); written by the data plane from conns.
 * Derived state: not pinned. BPF_F_MMAPABLE only for where the kernel puts the values: page-aligned, so each
 * 64-byte entry is one cache line (a plain array's values start 56 bytes into a line: every probe touched two,
 * ~8% of an established packet over 16384 flows). */
BPF_F_TABLE("array", int, struct flow_entry, flow_cache, XLB_FLOW_CACHE * XLB_NR_CPUS, BPF_F_MMAPABLE);
/* NAT replies by their tuple's hash (sets of two 128-byte entries): one region of XLB_REPLY_CACHE entries per CPU,
 * as flow_cache; written by the data plane from nat_revs (bpf/replycache.h). Derived state: not pinned. */
BPF_F_TABLE("array", int, struct reply_entry, reply_cache, XLB_REPLY_CACHE * XLB_NR_CPUS, BPF_F_MMAPABLE);
/* Counters: per service id, per real id, per mark rule id, per verdict reason. */
XLB_MAP("percpu_array", int, struct counters, svc_stats, XLB_MAX_SERVICES, 0);
XLB_MAP("percpu_array", int, struct counters, real_stats, XLB_MAX_REALS, 0);
XLB_MAP("percpu_array", int, struct counters, mark_stats, XLB_MAX_MARK_RULES, 0);
XLB_MAP("percpu_array", int, struct counters, verdicts, XLB_REASON_MAX, 0);
/* NAT replies (OutPkts/OutBytes) per service id and per real id. */
XLB_MAP("percpu_array", int, struct counters, svc_out_stats, XLB_MAX_SERVICES, 0);
XLB_MAP("percpu_array", int, struct counters, real_out_stats, XLB_MAX_REALS, 0);
/* State sync (bpf/sync.h): new connections and state changes for the daemon's sync master, and how many records
 * found the ring buffer full (per CPU). Derived: not pinned. */
BPF_RINGBUF_OUTPUT(sync_events, XLB_SYNC_PAGES);
BPF_PERCPU_ARRAY(sync_lost, __u64, 1);
/* What the trace build decided for one packet (bpf/trace.h); one entry, never written by the live program;
 * not pinned. */
BPF_ARRAY(trace_out, struct trace_rec, 1);

/* Private to the data plane (not mirrored in Python). New connections are placed by a second program, reached by
 * a tail call, so the verifier checks scheduling from one entry state instead of every state the packet path
 * can reach; the handoff carries what the first program already knows. Not pinned: each loaded program has
 * its own. */
#define XLB_PROG_NEW_CONN 0
#define XLB_PROG_ICMP 1            /* ICMP and ICMPv6 to a VIP (bpf/icmp.h) */
#define XLB_PROG_LOCALITY 2        /* lblc/lblcr's pick (bpf/locality.h), which hands back to XLB_PROG_NEW_CONN */
#define XLB_PROG_SIP 3             /* the SIP engine's Call-ID (bpf/sip.h), which hands back to XLB_PROG_NEW_CONN */
#define XLB_PROG_NEW_FWD 4         /* a new connection's packet to its real (xlb_new_fwd), after XLB_PROG_NEW_CONN */
#define XLB_PROG_PROMOTE 5         /* a half-open connection's handshake ACK: promoted to conns (bpf/halfopen.h) */
BPF_PROG_ARRAY(progs, 6);
struct handoff {
	struct pkt p;
	struct svc_key sk;
	struct svc_meta svc;       /* a copy of the matched service */
	struct conn old;           /* the entry being replaced (expired, reused, or its real gone), if any */
	__u64 now;                 /* coarse clock, read once */
	__u32 gen;                 /* settings.gen, read before anything else */
	__u32 flow_idx;            /* the tuple's flow-cache slot */
	__u64 bytes;
	__u32 has_old;
	__u32 local_real;          /* lblc/lblcr: the real xlb_new_local picked (0: none) once local_done */
	__u32 local_done;
	__u32 sip_state;           /* persistence_engine sip: XLB_SIP_* once xlb_sip_callid ran */
	__u32 sip_pos;             /* scratch: where the Call-ID header's value starts (payload offset + 1) */
	__u32 sip_hash[4];         /* the Call-ID's 128-bit hash, folded into the template key's client */
	__u32 real_id;             /* the real xlb_new_conn placed the connection on, for xlb_new_fwd */
};
BPF_PERCPU_ARRAY(handoffs, struct handoff, 1);

/* frags: fragments in flight. A first fragment is placed by its ports like any packet; its (src, dst, id, proto)
 * then names the real every later fragment of the datagram follows (bpf/frag.h). A first fragment that matched no
 * service records real_id 0: its later fragments pass to the kernel with it. Written by the data plane only; the
 * LRU ages entries out (a datagram's fragments arrive within milliseconds; a first fragment overwrites a stale
 * entry under a reused id). Not pinned: across a restart, only datagrams in flight lose their later fragments. */
struct frag_key {
	__be32 src[4];
	__be32 dst[4];
	__be32 id;                 /* IPv4 identification (16 bits, as on the wire) / IPv6 fragment id */
	__u8 proto;
	__u8 family;
	__u16 pad;
};
struct frag_val {
	__u32 real_id;             /* 0: the first fragment passed to the kernel */
	__u32 real_gen;
	__u32 svc_id;
};
BPF_F_TABLE("lru_hash", struct frag_key, struct frag_val, frags, XLB_FRAGS, 0);

#endif
