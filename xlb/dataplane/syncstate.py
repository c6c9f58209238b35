"""State sync's side of DataPlane (a mixin, xlb/dataplane/apply.py): turning the data plane's export on and off
(settings flag XLB_SET_F_SYNC), reading the `sync_events` ring buffer (bpf/sync.h), and writing the entries a
sync backup received into `conns` and `persist`. The IPVS messages themselves are xlb/sync/; which local service
and real an entry means is decided by the caller (xlb/ops/sync.py), which hands ids and times here.
"""
import ctypes as ct

from . import structs as S
from .mapkeys import NS, now_ns
from ..config.model import mask_address

EVENT_SIZE = ct.sizeof(S.SyncEvent)


class SyncState:
    sync_export = False  # the settings flag this DataPlane writes with every apply (_write_settings)

    def set_sync_export(self, on):
        """Have the data plane export new connections and state changes (or stop: the cost is then zero)."""
        self.sync_export = bool(on)
        self._set_flag(S.SET_F_SYNC, self.sync_export)

    def open_sync_events(self, handler):
        """Call handler(SyncEvent) for each record poll_sync_events() reads; a record of another size (a program of
        another layout) is counted in `sync_bad_events` and dropped."""
        self.sync_bad_events = 0

        def callback(_ctx, data, size):
            if size != EVENT_SIZE:
                self.sync_bad_events += 1
                return 0
            handler(S.SyncEvent.from_buffer_copy(ct.string_at(data, size)))
            return 0
        self.prog["sync_events"].open_ring_buffer(callback)

    def poll_sync_events(self, timeout_ms):
        """Read what the ring buffer holds, waiting up to timeout_ms for the first record."""
        self.prog.bpf.ring_buffer_poll(timeout_ms)

    def sync_lost(self):
        """Records the data plane could not write because the ring buffer was full (all CPUs)."""
        return sum(self.m["sync_lost"][ct.c_uint32(0)])

    def synced_seen_ns(self, timeout_ns, left_s):
        """A last-seen time that makes an entry with local timeout `timeout_ns` expire in `left_s` seconds (or its
        own timeout, if shorter: a backup never keeps an entry longer than its own timeouts say)."""
        return now_ns() - max(0, timeout_ns - left_s * NS)

    def write_synced_conn(self, key, svc_id, real_id, state, left_s, written=None):
        """Write one received connection; returns whether it replaced an entry with another real. `written`: a
        dict that gets {key bytes: the last-seen time written}."""
        conns = self.m["conns"]
        old = conns.get(key)
        seen = self.synced_seen_ns(self.timeouts()[state], left_s)
        conns[key] = S.Conn(seen_ns=seen, real_id=real_id, real_gen=self.gens[real_id], svc_id=svc_id, state=state)
        if written is not None:
            written[bytes(key)] = seen
        return old is not None and old.real_id != real_id

    def _persist_key(self, st, client):
        return S.PersistKey(svc=S.SvcKey.from_buffer_copy(st.key_bytes),
                            client=S.addr_words(mask_address(client, st.svc.persistence_netmask)))

    def live_template_real(self, st, client):
        """The real id of the template of service state `st` for `client` (16 bytes, masked here) if one is in
        force (unexpired, placed on a real that is still live in the generation it was placed with), else None."""
        old = self.m["persist"].get(self._persist_key(st, client))
        if old is None or self.gens.get(old.real_id) != old.real_gen:
            return None
        if max(old.last_new_ns + st.svc.persistence_timeout * NS, old.held_until_ns) <= now_ns():
            return None
        real = self.m["reals"].get(ct.c_uint32(old.real_id))
        if real is None or real.flags & (S.REAL_F_LIVE | S.REAL_F_DOWN) != S.REAL_F_LIVE:
            return None
        return old.real_id

    def write_synced_template(self, st, client, real_id, left_s):
        """Write one received template of service state `st` for `client` (16 bytes, masked here with the local
        netmask), placing it on real_id for `left_s` seconds (at most the local persistence timeout)."""
        svc = st.svc
        self.m["persist"][self._persist_key(st, client)] = S.Persist(
            last_new_ns=self.synced_seen_ns(svc.persistence_timeout * NS, left_s), held_until_ns=0,
            real_id=real_id, real_gen=self.gens[real_id])
