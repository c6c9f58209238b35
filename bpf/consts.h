/* consts.h — tunables (#ifndef defaults, overridden by the loader's -D flags) and the enums shared with Python. */
#ifndef XLB_CONSTS_H
#define XLB_CONSTS_H

/* Table sizes: the loader passes these from the config's [tables] section. */
#ifndef XLB_CONNS
#define XLB_CONNS 1048576
#endif
#ifndef XLB_TEMPLATES
#define XLB_TEMPLATES 262144
#endif
#ifndef XLB_MAX_SERVICES
#define XLB_MAX_SERVICES 8192
#endif
#ifndef XLB_MAX_REALS
#define XLB_MAX_REALS 65536
#endif
#ifndef XLB_SCHED_SLOTS
#define XLB_SCHED_SLOTS 4194304
#endif
#ifndef XLB_MARK_ENTRIES
#define XLB_MARK_ENTRIES 262144
#endif
#ifndef XLB_MAX_MARK_RULES
#define XLB_MAX_MARK_RULES 16384
#endif
#ifndef XLB_VIP_PREFIXES
#define XLB_VIP_PREFIXES 65536
#endif

/* Half-open connections (a TCP/SCTP handshake's first packet seen, not yet its ACK) and the templates they created,
 * each in their own LRU table apart from conns and persist (bpf/halfopen.h): the loader passes conns / 16. */
#ifndef XLB_HALF_OPEN
#define XLB_HALF_OPEN 65536
#endif

/* Fragments in flight: (src, dst, id, proto) of a first fragment -> its real (bpf/frag.h). */
#ifndef XLB_FRAGS
#define XLB_FRAGS 8192
#endif

/* How often a live flow writes its last-seen time (ns): bounds cache-line writes on the established path. */
#ifndef XLB_TOUCH_NS
#define XLB_TOUCH_NS 100000000ULL
#endif
/* Connection-count schedulers weigh at most this many candidate reals per new connection (the control plane
 * keeps the best candidates in the service's table when it has more reals). */
#ifndef XLB_CAND_MAX
#define XLB_CAND_MAX 16
#endif
/* rr/wrr: how many slots past an overloaded or quiescent real are tried. */
#ifndef XLB_RR_TRIES
#define XLB_RR_TRIES 8
#endif
/* sh-fallback / mh-fallback: how many re-hashes look for an available real before giving up. */
#ifndef XLB_FALLBACK_TRIES
#define XLB_FALLBACK_TRIES 16
#endif
/* lblcr: reals a destination's set holds at most (IPVS's sets are unbounded; a full set replaces its most
 * loaded member). */
#ifndef XLB_LBLCR_SET
#define XLB_LBLCR_SET 8
#endif
/* lblc/lblcr entries in all services (an LRU: the least recently used destination goes first when full). */
#ifndef XLB_LBLC_ENTRIES
#define XLB_LBLC_ENTRIES 65536
#endif
/* lblcr: a set with more than one real that has not changed for this long loses its most loaded member at the
 * next new connection (IPVS's sysctl lblcr_expiration, 24 h). */
#ifndef XLB_LBLCR_SET_EXPIRE_NS
#define XLB_LBLCR_SET_EXPIRE_NS (24ULL * 3600 * 1000000000ULL)
#endif
/* persistence_engine sip: payload bytes searched for the Call-ID header, and the longest Call-ID value (IPVS's
 * IP_VS_PEDATA_MAXLEN). */
#ifndef XLB_SIP_SCAN
#define XLB_SIP_SCAN 1400
#endif
#define XLB_SIP_CALLID_MAX 255
/* Flow cache entries per CPU (a power of two; the loader passes the config's [tables] flow_cache, 0 = off). */
#ifndef XLB_FLOW_CACHE
#define XLB_FLOW_CACHE 65536
#endif
/* NAT reply cache entries per CPU (a power of two; the loader passes half the flow cache's: 128-byte entries). */
#ifndef XLB_REPLY_CACHE
#define XLB_REPLY_CACHE 32768
#endif
/* VIP filter: 64-bit words of the bitmap (bpf/classify.h may_be_vip; a power of two). */
#ifndef XLB_VIP_FILTER_WORDS
#define XLB_VIP_FILTER_WORDS 1024
#endif
/* Possible CPUs (the loader passes the machine's): the flow cache has a region per CPU. */
#ifndef XLB_NR_CPUS
#define XLB_NR_CPUS 1
#endif
/* How long a per-CPU next-hop (bpf_fib_lookup result) is trusted before it is looked up again (ns). */
#ifndef XLB_NH_TTL_NS
#define XLB_NH_TTL_NS 1000000000ULL
#endif

/* The sync ring buffer's size in pages (a power of two): 64-byte records, read by the daemon every 50 ms. */
#ifndef XLB_SYNC_PAGES
#define XLB_SYNC_PAGES 256
#endif

#define XLB_AF_INET 4
#define XLB_AF_INET6 6

/* The reason behind every verdict. Append only: never renumber (the control plane exports these by name). */
enum xlb_reason {
	XLB_PASS_NOT_IP = 0,        /* not IPv4/IPv6 (ARP, LLDP, ...) */
	XLB_PASS_NO_SERVICE = 1,    /* IP, but no service for it */
	XLB_PASS_OTHER_PROTO = 2,   /* neither TCP nor UDP (ICMP, ...) */
	XLB_PASS_FRAGMENT = 3,      /* a fragment whose destination is no VIP */
	XLB_FWD_TX = 4,             /* forwarded to a real out of the ingress interface */
	XLB_FWD_REDIRECT = 5,       /* forwarded to a real out of another interface */
	XLB_DROP_TRUNC_ETH = 6,     /* frame shorter than an Ethernet header */
	XLB_DROP_TRUNC_IP = 7,      /* IP header or IP total length beyond the frame */
	XLB_DROP_BAD_IP = 8,        /* IPv4 IHL < 5 or wrong IP version */
	XLB_DROP_TRUNC_L4 = 9,      /* TCP/UDP header beyond the frame or the IP length */
	XLB_DROP_BAD_TCP = 10,      /* TCP data offset < 5 */
	XLB_DROP_FRAGMENT = 11,     /* unused since fragments to VIPs are balanced (bpf/frag.h); kept: never renumbered */
	XLB_DROP_NO_REAL = 12,      /* the service has no available real */
	XLB_DROP_RST_NO_CONN = 13,  /* TCP RST for no known connection: nothing to reset */
	XLB_DROP_NO_NEIGH = 14,     /* real's neighbour unresolved; the control plane resolves it */
	XLB_DROP_FIB = 15,          /* no route to the real (bpf_fib_lookup failed) */
	XLB_DROP_NOT_ONLINK = 16,   /* direct routing needs the real on-link; the route goes via a gateway */
	XLB_DROP_IPV6_EXT = 17,     /* too many or truncated IPv6 extension headers */
	XLB_DROP_INTERNAL = 18,     /* a map that must exist was missing (a bug: report it) */
	XLB_PASS_VLAN = 19,         /* an 802.1Q or 802.1ad tagged frame: not balanced (docs/design.md, VLANs) */
	XLB_DROP_TOO_BIG = 20,      /* longer than the MTU toward the real (bpf_fib_lookup: fragmentation needed) */
	XLB_FWD_REPLY_TX = 21,      /* NAT: a real's reply, source rewritten to the VIP, out of the ingress interface */
	XLB_FWD_REPLY_REDIRECT = 22, /* NAT: a real's reply, source rewritten to the VIP, out of another interface */
	XLB_DROP_TTL = 23,          /* NAT: TTL / hop limit would reach 0 in xlb's hop (the kernel does not answer) */
	XLB_PASS_REPLY_NEIGH = 24,  /* NAT: a reply rewritten to VIP:port and passed to the kernel to forward: its next
	                             * hop toward the client is unresolved (the kernel resolves it) */
	/* 26-29: tunnels (bpf/tun.h) */
	XLB_TUN_PTB = 26,           /* too big once encapsulated, DF set (IPv6: always): answered with ICMP frag-needed /
				     * Packet Too Big carrying the MTU the client must use (XDP_TX) */
	XLB_DROP_TUN_TOO_BIG = 27,  /* too big once encapsulated and the MTU left inside the tunnel is below the
				     * family's minimum (68 / 1280): nothing to answer (IPv4 without DF: see 54) */
	XLB_DROP_TUN_ADJUST = 28,   /* bpf_xdp_adjust_head/tail refused to make room for the outer headers or the reply */
	XLB_DROP_TUN_NO_TUNNEL = 29,/* a tunnelled real without its tunnels entry (a bug: report it) */
	/* 31-38: ICMP, fragments (bpf/icmp.h, bpf/frag.h) */
	XLB_ICMP_ECHO_REPLY = 31,   /* an echo request to a VIP answered by the balancer (XDP_TX) */
	XLB_FWD_ICMP_ERROR = 32,    /* an ICMP error about a VIP flow forwarded to that flow's real */
	XLB_FWD_FRAGMENT = 33,      /* a later fragment forwarded to the real its first fragment went to */
	XLB_DROP_FRAG_NO_FIRST = 34, /* a later fragment to a VIP before (or without) its first fragment */
	XLB_DROP_ICMP_MTU = 35,     /* frag-needed / Packet Too Big to a VIP with an MTU below the minimum (68 / 1280) */
	XLB_DROP_ICMP_TRUNC = 36,   /* an ICMP error to a VIP whose embedded IP or port header is truncated */
	XLB_DROP_SIP_NO_CALLID = 39, /* a SIP-engine service's UDP datagram without a usable Call-ID (IPVS drops it) */
	XLB_DROP_REAL_FAILED = 43,  /* a connection's real failed its health checks, on_real_failure = "reset": the
				     * packet is dropped and the entry expired (the retransmission is scheduled anew) */
	XLB_FWD_ICMP_NAT_OUT = 52,  /* NAT: an ICMP error from the reals' side about a NAT connection, outer source and
				     * quoted destination rewritten to VIP:port, sent toward the client (bpf/icmp.h) */
	/* 54-55: tunnels, the method paths (bpf/tun.h) */
	XLB_TUN_PTB_NO_DF = 54,     /* too big once encapsulated, IPv4 without DF: xlb cannot fragment (one frame in, one
				     * out; `xlb decap` passes outer fragments), so it answers frag-needed all the same
				     * (XDP_TX): the sender's path MTU drops, and it fragments what it sends next to fit */
	XLB_REASON_MAX
};

/* Connection-table events, counted per CPU in conn_events (not verdicts: the packet's verdict is its forwarding). */
enum xlb_conn_event {
	XLB_EV_HALF_OPEN = 0,       /* a handshake's first packet recorded in half_open (not conns) */
	XLB_EV_PROMOTED = 1,        /* a half-open entry's handshake ACK moved it (and its new template) to conns */
	XLB_EV_MIDSTREAM = 2,       /* a mid-stream packet of an unknown flow (its entry expired, evicted, or never
				     * seen: a restart, a half-open entry a flood pushed out) placed anew */
	XLB_EV_MAX
};

/* Schedulers: how a service's slot table is used. Table kinds index it once; connection-count kinds weigh every
 * candidate in it by its live connection counts (real_conns), as IPVS defines each. */
enum xlb_sched {
	XLB_SCHED_RR = 0,   /* per-CPU counter over the table (rr and wrr differ only in the table) */
	XLB_SCHED_SH = 1,   /* hash of the client address (and port with XLB_SVC_F_HASH_PORT) */
	XLB_SCHED_DH = 2,   /* hash of the destination address */
	XLB_SCHED_MH = 3,   /* hash of the client address (and port) into a Maglev table */
	XLB_SCHED_LC = 4,   /* least connections: active * 256 + inactive */
	XLB_SCHED_WLC = 5,  /* weighted least connections: (active * 256 + inactive) / weight */
	XLB_SCHED_SED = 6,  /* shortest expected delay: (active + 1) / weight */
	XLB_SCHED_NQ = 7,   /* never queue: the first idle real, else sed */
	XLB_SCHED_FO = 8,   /* weighted failover: the highest weight */
	XLB_SCHED_OVF = 9,  /* overflow: the highest weight whose active connections are below its weight */
	XLB_SCHED_LBLC = 10,  /* locality-based least connections: the real the destination address last got (wlc) */
	XLB_SCHED_LBLCR = 11, /* lblc with replication: a set of reals per destination address */
};

/* Forwarding methods (struct svc_meta.method, struct real.method). Tunnels get their own kinds. */
enum xlb_method {
	XLB_METHOD_DR = 0,  /* direct routing: rewrite the Ethernet header only */
	XLB_METHOD_NAT = 1, /* masquerading: rewrite the destination to the real's address and port (bpf/nat.h) */
	XLB_METHOD_TUN = 2, /* tunnel: IPIP, GUE or GRE toward the real (bpf/tun.h; struct tunnel) */
};

/* Tunnel encapsulations (struct tunnel.type). */
enum xlb_tun_type {
	XLB_TUN_NONE = 0,   /* not tunnelled */
	XLB_TUN_IPIP = 1,   /* IPIP / IP6IP6 / 4in6 / 6in4: the outer header's protocol says the inner family */
	XLB_TUN_GUE = 2,    /* UDP + GUE (IPVS: 4-byte header; XLB_TUN_F_BARE: Katran's, none) */
	XLB_TUN_GRE = 3,    /* GRE as IPVS sends it: no key, no sequence, the checksum with XLB_TUN_F_CSUM */
};

/* Connection states, as the load balancer sees one direction (IPVS's input-only TCP table). */
enum xlb_conn_state {
	XLB_CS_SYN = 0,     /* TCP, only SYN seen: timeouts.syn */
	XLB_CS_EST = 1,     /* TCP established: timeouts.tcp */
	XLB_CS_FIN = 2,     /* TCP after FIN or RST: timeouts.tcpfin */
	XLB_CS_UDP = 3,     /* UDP: timeouts.udp */
	XLB_CS_MAX
};

/* svc_meta.flags */
#define XLB_SVC_F_PERSIST 0x1          /* persistence_timeout set */
#define XLB_SVC_F_PERSIST_TIMEOUT 0x2  /* persistence_mode = "timeout": live connections do not hold templates */
#define XLB_SVC_F_EXPIRE_QUIESCENT 0x4 /* expire_quiescent_template */
#define XLB_SVC_F_HASH_PORT 0x8        /* sh-port / mh-port: hash the client port too */
#define XLB_SVC_F_FALLBACK 0x10        /* sh-fallback / mh-fallback: re-hash past an unavailable real */
#define XLB_SVC_F_OPS 0x100            /* one-packet scheduling: each UDP datagram placed alone, no connection entry */
#define XLB_SVC_F_CONSISTENT 0x4000    /* placement = "consistent": a new template's real is the Maglev slot of the
                                          masked client and the service key (persist.h placement_hash) */
/* on_real_failure: what a connection of a health-failed real (XLB_REAL_F_DOWN) does. KEEP: goes on to it; RESET:
 * the packet is dropped and the entry expired; both: rescheduled at once; neither (the default): TCP keeps,
 * other protocols reschedule. */
#define XLB_SVC_F_FAIL_KEEP 0x1000
#define XLB_SVC_F_FAIL_RESET 0x2000
#define XLB_SVC_F_PE_SIP 0x400         /* persistence_engine sip: UDP templates keyed by the SIP Call-ID */

/* real.flags */
#define XLB_REAL_F_LIVE 0x1            /* the slot holds a real of a configured service */
#define XLB_REAL_F_DOWN 0x2            /* failed its health checks: places nothing (no scheduling, no template
					* hits); its established connections as the service's on_real_failure says */

/* tunnel.flags */
#define XLB_TUN_F_CSUM 0x1             /* GUE: UDP checksum set; GRE: checksum present (IPVS csum / remcsum) */
#define XLB_TUN_F_BARE 0x2             /* GUE without its header (variant 1, Katran): the inner packet after UDP */

/* real_conns.flags */
#define XLB_RC_F_OVERLOAD 0x1          /* connections reached uthreshold; cleared below lthreshold */

/* settings.flags */
#define XLB_SET_F_MARKS 0x1            /* at least one mark rule: classify before service lookup */
#define XLB_SET_F_VIP_FILTER 0x2       /* vip_filter holds every VIP and mark prefix: a miss is no service */
#define XLB_SET_F_ECHO 0x4             /* answer ICMP/ICMPv6 echo requests to VIPs (bpf/icmp.h) */
#define XLB_SET_F_SYNC 0x8             /* state sync master: new connections and state changes go to sync_events */
#define XLB_SET_F_HALF_OPEN 0x10       /* new TCP/SCTP connections (and their new templates) wait in half_open and
                                          persist_half until their handshake's ACK (bpf/halfopen.h) */
#define XLB_SET_F_NAT 0x20             /* a NAT service, or NAT connections left by one: a packet that is no service's
                                          may be a real's reply (bpf/nat.h), an ICMP error to no VIP may quote one
                                          (bpf/icmp.h) */
#define XLB_SET_F_HALF_LOOK 0x40       /* half_open or persist_half may hold entries (the defense is on, or was and
                                          the sweep has not yet seen them empty): a TCP/SCTP packet with no conns
                                          entry, a template miss, looks there; without it, neither lookup is made */

/* trace_rec.flags (bpf/trace.h) */
#define XLB_TRACE_F_CONN_FOUND 0x1     /* an entry for the tuple exists */
#define XLB_TRACE_F_CONN_HIT 0x2       /* the packet followed it (live, its real still configured) */
#define XLB_TRACE_F_MARK 0x4           /* a mark rule matched */
#define XLB_TRACE_F_SVC 0x8            /* a service matched */
#define XLB_TRACE_F_TMPL_FOUND 0x10    /* a persistence template exists under the packet's key */
#define XLB_TRACE_F_TMPL_HIT 0x20      /* it was in force and placed the connection */
#define XLB_TRACE_F_SCHED 0x40         /* the scheduler picked the real (sched_idx) */

#endif
