"""The settings map's one entry (struct settings, bpf/structs.h) from the control plane's side: the timeouts, the
flow cache's TTL and generation, and the flags that say which lookups a packet makes, each set before what it
guards is written and cleared only once its tables are empty (XLB_SET_F_NAT, XLB_SET_F_HALF_LOOK). A mixin of
DataPlane (apply writes it with every config; the sweep clears what has emptied)."""
import ctypes as ct

from . import clock
from . import structs as S
from .mapkeys import NS

FLOW_TTL = 1.0  # seconds a flow-cache entry is trusted at most (bpf/flowcache.h)


class SettingsMap:
    def invalidate_flow_cache(self):
        """Void every flow-cache entry (bpf/flowcache.h): the next packet of each flow reads the connection table
        again. apply() calls it last, after every write it made; so must anything else that changes what an
        established flow's packets should do."""
        settings = self.m["settings"]
        st = settings[ct.c_uint32(0)]
        st.gen = (st.gen + 1) & 0xFFFFFFFF or 1
        settings[ct.c_uint32(0)] = st

    def _nat_replies(self, config):
        """Whether the data plane looks for NAT replies (XLB_SET_F_NAT): while a NAT service is configured and, once
        the last is gone, until the sweep has removed its connections' reverse entries (IPVS rewrites a removed
        service's replies while its connections last)."""
        return any(s.method == "nat" for s in config.services) or self.holds_entries("nat_revs", "nat_half")

    def _half_look(self, config):
        """Whether a SYN with no connection entry (and a template miss) looks in the half-open tables
        (XLB_SET_F_HALF_LOOK): while the SYN-flood defense is on and, once it is off, until the sweep has seen them
        empty (their handshakes' ACKs still find them)."""
        # HALF_OPEN too: pins of a release before the flag have the defense's flag alone, and their program, still
        # attached, may be recording a handshake in half_open right now
        was = self.m["settings"][ct.c_uint32(0)].flags & (S.SET_F_HALF_LOOK | S.SET_F_HALF_OPEN)
        return config.tables.half_open or bool(was) or self.holds_entries(*S.HALF_TABLES)

    def _write_settings(self, config, has_marks, vip_filter, nat):
        t = config.timeouts
        old = self.m["settings"][ct.c_uint32(0)]
        flags = ((S.SET_F_MARKS if has_marks else 0) | (S.SET_F_VIP_FILTER if vip_filter else 0)
                 | (S.SET_F_SYNC if self.sync_export else 0))
        flags |= S.SET_F_ECHO if config.icmp.echo_reply else 0
        flags |= S.SET_F_HALF_OPEN if config.tables.half_open else 0
        flags |= S.SET_F_NAT if nat else 0
        flags |= S.SET_F_HALF_LOOK if self._half_look(config) else 0
        st = S.Settings(flags=flags, gen=old.gen,
                        flow_ttl=self._flow_ttl(min(t.syn, t.tcp, t.tcpfin, t.udp)))
        for name, secs in (("syn", t.syn), ("est", t.tcp), ("fin", t.tcpfin), ("udp", t.udp)):
            st.timeout_ns[S.CONN_STATE[name]] = secs * NS
        self.m["settings"][ct.c_uint32(0)] = st

    def _set_flag(self, flag, on):
        settings = self.m["settings"]
        st = settings[ct.c_uint32(0)]
        if bool(st.flags & flag) != on:
            st.flags ^= flag
            settings[ct.c_uint32(0)] = st

    def _flow_ttl(self, shortest_timeout):
        """The flow cache's TTL in jiffies: a second, or a quarter of the shortest timeout if that is less (a cached
        flow's last-seen time lags by up to the TTL); 0 turns the cache off."""
        if not self.tables.flow_cache:
            return 0
        return max(1, int(clock.kernel_hz(self.prog) * min(FLOW_TTL, shortest_timeout / 4)))

    def holds_entries(self, *names):
        """Does any of these maps hold an entry? (one get-next-key each)"""
        return any(next(iter(self.m[name].keys()), None) is not None for name in names)

    def _end_half_look(self):
        """Once the SYN-flood defense is off and its tables are empty (this sweep expired what it left), SYNs stop
        looking in them: XLB_SET_F_HALF_LOOK cleared (_half_look)."""
        settings = self.m["settings"]
        st = settings[ct.c_uint32(0)]
        off = st.flags & S.SET_F_HALF_LOOK and not st.flags & S.SET_F_HALF_OPEN
        if off and not self.holds_entries(*S.HALF_TABLES):
            st.flags &= ~S.SET_F_HALF_LOOK  # from the snapshot that found the defense off
            settings[ct.c_uint32(0)] = st
