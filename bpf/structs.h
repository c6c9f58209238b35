/* structs.h — every struct the data plane shares with Python. The only definition of these layouts:
 * xlb/structs.py mirrors them and tests/test_structs.py checks the mirror against bcc's types. */
#ifndef XLB_STRUCTS_H
#define XLB_STRUCTS_H

#include "consts.h"

/* Addresses are 16 bytes in network order: IPv6 as is, IPv4 in addr[0] with addr[1..3] zero. */

/* services: identity of a virtual service. */
struct svc_key {
	__be32 addr[4];   /* VIP; zero for firewall-mark services */
	__u32 mark;       /* firewall mark; 0 for VIP services */
	__be16 port;      /* network order; 0 for fwmark and port-zero services */
	__u8 proto;       /* IPPROTO_TCP / IPPROTO_UDP / IPPROTO_SCTP; 0 for fwmark services */
	__u8 family;      /* XLB_AF_INET or XLB_AF_INET6 */
};

struct svc_meta {
	__u32 id;                  /* index into svc_stats and rr_pos (one position per service) */
	__u32 flags;               /* XLB_SVC_F_* */
	__u8 sched;                /* enum xlb_sched */
	__u8 method;               /* enum xlb_method */
	__u16 pad;
	__u32 table_off;           /* first slot of this service's table in sched_slots */
	__u32 table_len;           /* slots in the table; 0: no real available */
	__u32 pad2;
	__u64 persist_timeout_ns;  /* persistence_timeout, ns */
	__be32 persist_mask[4];    /* persistence netmask over the client address */
};

/* reals: one slot per (service, real), indexed by real id. Id 0 is never used. */
struct real {
	__be32 addr[4];            /* real server address */
	__u32 gen;                 /* bumped each time the slot is (re)used; conns and templates remember it */
	__u32 svc_id;              /* owning service */
	__u16 weight;              /* 0: quiescent, takes no new clients */
	__u8 family;
	__u8 flags;                /* XLB_REAL_F_* */
	__u32 uthreshold;          /* connections (active + inactive) that overload the real; 0: no limit */
	__u32 lthreshold;          /* an overloaded real takes connections again below this (0: 3/4 uthreshold) */
	__be16 port;               /* NAT: the real's port, network order; 0: the client's destination port */
	__u8 method;               /* enum xlb_method: how packets reach this real (IPVS: a real's property) */
	__u8 pad;
};

/* tunnels: how a tunnelled real's packets are encapsulated, by real id (XLB_METHOD_TUN reals); written by the control
 * plane from the service's tunnel settings. */
struct tunnel {
	__be32 src[4];             /* outer source address, network order (the real's family) */
	__be32 src_host[4];        /* bits of src taken from the flow's hash (per-flow sources from a prefix); 0: fixed */
	__be16 port;               /* GUE: UDP destination port, network order */
	__u8 type;                 /* enum xlb_tun_type */
	__u8 flags;                /* XLB_TUN_F_* */
	__u8 family;               /* outer family: the real's (XLB_AF_INET / XLB_AF_INET6) */
	__u8 pad[3];
};

/* real_conns: live connection counts per real id. The data plane adds as connections open and change state
 * (atomically: new connections only, never per packet); the control plane's sweep rewrites them from the
 * connection table, so entries that expire or that the LRU evicts do not leak. */
struct real_conns {
	__s64 active;              /* TCP established (64-bit: bcc's BPF target has no 32-bit atomics) */
	__s64 inactive;            /* every other live state (SYN, FIN, UDP) */
	__u32 flags;               /* XLB_RC_F_* */
	__u32 pad;
};

/* rr_pos: one round-robin position per service, shared by every CPU (IPVS's rr is one rotation per service).
 * Under a spin lock: bcc's BPF target (no -mcpu=v3) cannot use the value an atomic add returns. */
struct rr_pos {
	struct bpf_spin_lock lock;
	__u32 next;                /* free-running: new connections placed plus unavailable slots skipped */
};

/* conns: one entry per client flow. */
struct conn_key {
	__be32 src[4];             /* client address */
	__be32 dst[4];             /* VIP */
	__be16 sport;              /* network order */
	__be16 dport;              /* network order */
	__u8 proto;
	__u8 family;
	__u16 pad;
};

struct conn {
	__u64 seen_ns;             /* last packet, bpf_ktime_get_coarse_ns() clock, written at most every XLB_TOUCH_NS */
	__u32 real_id;
	__u32 real_gen;            /* real.gen when placed: a mismatch means the real was removed */
	__u32 svc_id;
	__u8 state;                /* enum xlb_conn_state */
	__u8 pad[3];
};

/* nat_revs: one entry per NAT connection, keyed by its reply's tuple as a struct conn_key: src = the real's
 * address, dst = the client's, sport = the real's port, dport = the client's port. Written with the connection
 * entry; the sweep removes it with that entry (bpf/nat.h). */
struct nat_rev {
	__be32 vip[4];             /* the address the client sent to (the reply's new source) */
	__be16 vport;              /* the port the client sent to, network order */
	__u16 mtu;                 /* the next hop toward the client (cached by the replies): egress MTU, bytes */
	__u32 real_id;             /* the connection's real: the sweep checks conns still say so */
	__u32 svc_id;              /* for OutPkts/OutBytes */
	__u32 hop_stamp;           /* bpf_jiffies64() (low 32 bits) when the next hop was looked up; 0: none yet */
	__u64 born_ns;             /* when written (coarse clock): the sweep spares entries newer than its read of conns */
	__u32 ifindex;             /* next hop: egress interface */
	__u8 dmac[6];              /* next hop: its MAC and ours */
	__u8 smac[6];
};

/* persist: persistence templates. */
struct persist_key {
	struct svc_key svc;        /* the service's key: the mark bundles all its ports/addresses into one template */
	__be32 client[4];          /* client address AND persistence netmask */
};

struct persist {
	__u64 last_new_ns;         /* last new connection placed by this template (coarse clock) */
	__u64 held_until_ns;       /* lvs mode: the latest expiry of a live connection it placed (coarse clock) */
	__u32 real_id;
	__u32 real_gen;
};

/* lblc: locality tables of the lblc/lblcr schedulers, <service, destination address> -> real (lblc) or set of
 * reals (lblcr). The data plane inserts and updates (bpf/locality.h); the control plane's sweep expires them. */
struct lblc_key {
	__u32 svc_id;              /* the service (ids are reused: entries of a removed service are swept) */
	__u32 family;              /* XLB_AF_INET or XLB_AF_INET6 */
	__be32 addr[4];            /* the packet's destination address */
};

struct lblc_dests {
	__u64 lastuse_ns;          /* last new connection it placed (coarse clock) */
	__u64 lastmod_ns;          /* lblcr: when the set last changed (coarse clock) */
	__u32 real_id[XLB_LBLCR_SET];   /* lblc: [0] only; 0: an empty place */
	__u32 real_gen[XLB_LBLCR_SET];  /* real.gen when added: a mismatch means the real was removed */
};

/* mark_rules: LPM trie over (family, proto, port, destination prefix). Port 0 = every port. */
struct mark_key {
	__u32 prefixlen;           /* 32 (family, proto, port) + destination prefix length */
	__u8 family;
	__u8 proto;
	__be16 port;               /* network order */
	__be32 addr[4];
};

struct mark_val {
	__u32 mark;
	__u32 rule_id;             /* index into mark_stats */
};

/* vip_prefixes: LPM trie of every service VIP and mark-rule destination, consulted only for fragments. */
struct vip_key {
	__u32 prefixlen;           /* 32 (family) + address prefix length */
	__u32 family;
	__be32 addr[4];
};

/* settings: one entry, written by the control plane on every config apply. */
struct settings {
	__u64 timeout_ns[XLB_CS_MAX];   /* by enum xlb_conn_state */
	__u32 flags;                    /* XLB_SET_F_* */
	__u32 gen;                      /* bumped by every control-plane change: flow-cache entries of another are void */
	__u32 flow_ttl;                 /* how long a flow-cache entry is trusted, in jiffies; 0: no flow cache */
	__u32 pad;
};

/* Per-CPU counters (multiples of 8 bytes). */
struct counters {
	__u64 packets;
	__u64 bytes;
	__u64 conns;               /* new connections (unused for verdicts and mark rules) */
};

/* nh_cache: per-CPU next hop of a real, from bpf_fib_lookup. */
struct nexthop {
	__u64 stamp_ns;            /* when looked up (coarse clock); 0: empty */
	__u32 ifindex;             /* egress interface */
	__u32 real_gen;            /* the real this was looked up for */
	__u8 dmac[6];
	__u8 smac[6];
	__u16 mtu;                 /* the egress interface's MTU: longest IP packet sent (bytes) */
	__u16 pad;
};

/* flow_cache: per CPU, 2-way set associative by a hash of the tuple; derived from conns (bpf/flowcache.h). */
struct flow_entry {
	struct conn_key key;
	__u32 real_id;
	__u32 real_gen;            /* the real's generation, to trust its next-hop cache entry */
	__u32 svc_id;
	__u32 gen;                 /* settings.gen when filled */
	__u32 stamp;               /* bpf_jiffies64() (low 32 bits) when filled from the connection entry */
	__u32 method;              /* enum xlb_method of the real: NAT rewrites need the real's entry */
};

/* reply_cache: per CPU, 2-way set associative by a hash of a NAT reply's tuple; derived from nat_revs
 * (bpf/replycache.h). 128 bytes (two cache lines, the first with what a probe compares); key, gen and stamp at
 * flow_entry's offsets: one probe serves both caches (bpf/flowcache.h cache_probe). */
struct reply_entry {
	struct conn_key key;       /* the reply's tuple, as nat_revs keys it */
	__u32 real_id;             /* for OutPkts/OutBytes */
	__u32 ifindex;             /* next hop toward the client: egress interface */
	__u32 svc_id;
	__u32 gen;                 /* settings.gen read before nat_revs was looked up (flow_entry's offset) */
	__u32 stamp;               /* bpf_jiffies64() (low 32 bits) of the next hop's lookup, nat_rev.hop_stamp (ditto) */
	__be16 vport;              /* the reply's new source port, network order */
	__u16 mtu;                 /* the egress interface's MTU, bytes */
	__be32 vip[4];             /* the reply's new source address */
	__u8 dmac[6];              /* next hop: its MAC and ours */
	__u8 smac[6];
	__u8 pad[36];
};

/* sync_events: one record per new connection and per TCP state change of a connection entry, written only while
 * settings.flags has XLB_SET_F_SYNC (bpf/sync.h); the daemon's sync master turns each into IPVS sync entries (the
 * connection, and its persistence template when the service is persistent: the template's key and real follow
 * from the connection's client, service and real). */
struct sync_event {
	struct conn_key key;       /* the connection's tuple */
	__u32 svc_id;              /* its service */
	__u32 real_id;             /* its real */
	__u8 state;                /* enum xlb_conn_state, after the change */
	__u8 pad[7];
};

/* trace_out: what the program decided for one traced packet. Written only by the trace build (-DXLB_TRACE,
 * bpf/trace.h) run by `xlb trace` through BPF_PROG_TEST_RUN; the live program never writes it. */
struct trace_rec {
	__u64 now_ns;              /* the program's clock when it ran (coarse clock) */
	__u64 conn_seen_ns;        /* connection entry found: last-seen time */
	__u64 tmpl_last_new_ns;    /* template found: last new connection */
	__u64 tmpl_held_until_ns;  /* template found: hold */
	struct svc_key svc;        /* matched service's key */
	__u32 flags;               /* XLB_TRACE_F_* */
	__u32 reason;              /* enum xlb_reason of the verdict */
	__u32 action;              /* XDP action */
	__u32 mark;                /* firewall mark from the matching mark rule */
	__u32 rule_id;             /* that rule's id (mark_stats index) */
	__u32 svc_id;              /* matched service; a followed connection's service when no lookup ran */
	__u32 conn_real_id;        /* connection entry found: its real */
	__u32 tmpl_real_id;        /* template found: its real */
	__u32 sched_idx;           /* scheduler's pick: index into the service's slot table */
	__u32 real_id;             /* the real the packet is sent to; 0: none */
	__u8 conn_state;           /* connection entry found: enum xlb_conn_state */
	__u8 pad[7];
	struct nexthop nh_scratch; /* where a next-hop lookup writes instead of the live nh_cache */
};

#endif
