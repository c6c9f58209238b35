"""The timers: sweep expired connections and templates, hold lvs-mode templates while a connection they placed
lives, and reconcile each real's connection counts with the table, as a mixin of DataPlane (xlb/dataplane/apply.py).

Two paths, chosen once (choose_sweep): the kernel walks the connection and NAT tables (xlb/dataplane/kwalk.py:
deletes, per-real counts and one aggregate per client of a persistent service), or, where that program cannot
load, numpy over one batched read of each table (no Python object per entry). The templates and the locality
entries are decided with numpy either way; both paths leave the same tables (tests/test_sweep.py).
"""
import ctypes as ct
import time
from dataclasses import dataclass

import numpy as np

from . import structs as S
from .bpfsys import lookup_batch_into, rewrite_u64
from .kwalk import Walker
from .mapkeys import NS, now_ns, real_key, table_indexes
from .rowmatch import exact_keys, max_per_key, row_index
from ..errors import KernelError
from ..tables import sched

SWEEP_DUTY = 10          # a sweep that takes d seconds is followed by at least 10 d seconds without one ...


SWEEP_STRETCH_MAX = 10.0  # ... up to 10 s (or the configured sweep_interval, if longer)

# lblc/lblcr entries, as IPVS keeps them (ip_vs_lblc.c, ip_vs_lblcr.c): an entry unused for LOCALITY_EXPIRE goes
# (sysctl lblc_expiration / lblcr_expiration, 24 h); a service with more than LOCALITY_MAX_SIZE entries loses
# those unused for LOCALITY_IDLE, least recently used first, at most (entries - max) * 4/3 and max / 2 a sweep.
LOCALITY_EXPIRE = 24 * 3600
LOCALITY_IDLE = 6 * 60
LOCALITY_MAX_SIZE = 16 * 1024


def sweep_interval(configured, last_seconds):
    """Seconds until the next sweep: the configured interval, stretched so the sweep takes at most a tenth of a
    CPU (a 1M-entry table takes ~0.2-0.4 s to sweep here in the kernel, ~0.6 s with numpy), but never past
    SWEEP_STRETCH_MAX unless configured so.
    The data plane needs no sweep to be correct (it checks every entry's age itself): a longer interval only
    leaves expired entries, and drift in the connection counts, in the tables a little longer."""
    return max(configured, min(SWEEP_DUTY * last_seconds, SWEEP_STRETCH_MAX))


def hold_due(hold, stored, now, margin):
    """Which lvs-mode templates get their hold written: a lower one at once (its connections closed or left
    established), so listings show it; a higher one only once the stored hold has used up half of its lead
    (stored - now < (hold - now) / 2) or is within `margin` ns of now (two sweep intervals: it must outlast the
    next sweep). Holds move forward with every packet's last-seen time, so rewriting each on every sweep cost two
    syscalls a template; this way a busy template is written about twice per timeout, and its stored hold, which
    the data plane trusts, stays ahead of the clock until the next sweep."""
    return (hold < stored) | ((hold > stored) & (stored - now < np.maximum((hold - now) // 2, margin)))


@dataclass
class SweepResult:
    conns_seen: int = 0
    conns_expired: int = 0
    templates_seen: int = 0
    templates_expired: int = 0
    templates_held: int = 0
    templates_missing: int = 0   # clients with live connections of a persistent service but no template (lost)
    half_open_seen: int = 0
    half_open_expired: int = 0
    nat_seen: int = 0
    nat_expired: int = 0
    nat_half_seen: int = 0
    nat_half_expired: int = 0
    locality_seen: int = 0
    locality_expired: int = 0
    seconds: float = 0.0


# A ConnKey record seen as its source address's two 8-byte words (for a view of the connection keys).
_SRC_WORDS = np.dtype({"names": ["w0", "w1"], "formats": [np.uint64, np.uint64],
                       "offsets": [S.ConnKey.src.offset, S.ConnKey.src.offset + 8], "itemsize": ct.sizeof(S.ConnKey)})


@dataclass
class _Clients:
    """The live connections of persistent services, as their templates' keys: columns [client word 0, client word 1,
    service id] (the source under the service's persistence netmask), each row's expiry and whether it is in conns
    (not half-open). One row per connection (numpy path) or per client (the kernel's aggregates): the matching
    takes the latest expiry per key and counts distinct keys, so either gives the same answers."""
    cols: list
    until: np.ndarray
    in_conns: np.ndarray


@dataclass
class _ConnScan:
    keys: np.ndarray       # ConnKey records
    vals: np.ndarray       # Conn records
    until: np.ndarray      # int64 ns: when each entry expires
    alive: np.ndarray      # bool: until >= now
    half: np.ndarray       # bool: a half_open entry (bpf/halfopen.h), not a conns one
    counts: dict           # live real id -> [active, inactive]


class Sweeper:
    """DataPlane's timers (needs its maps, ids, services and config)."""

    last_sweep = None  # the last sweep's SweepResult (the metrics read templates_missing from it)
    _walker = None     # the kernel's walk (kwalk.Walker); False: the numpy path; None: not chosen yet
    walk_error = None  # why the kernel's walk was given up on at a sweep (the daemon logs it)

    # -- timers ----------------------------------------------------------------------------------------------
    def sweep(self, now=None):
        """Delete expired connections and templates; hold templates (lvs mode) while a connection they placed
        lives. Cost: the kernel's walk of the connection and NAT tables (or, where it cannot load, one batched
        read of each into numpy arrays, decided there), then numpy over the templates (no Python per entry but for
        templates whose hold changes)."""
        t0 = time.perf_counter()
        now = now_ns() if now is None else now
        res = SweepResult()
        read_at = now_ns()  # NAT reverse entries written after this may have connections the scan misses
        counts = None
        if self.choose_sweep() == "kernel":
            try:
                counts, clients = self._walk_in_kernel(now, read_at, res)
            except KernelError as e:  # the kernel refused a walk it had loaded: never the daemon's end
                self.choose_sweep(numpy=True)
                self.walk_error = f"the in-kernel walk failed, the sweep reads the tables with numpy from now on: {e}"
        if counts is None:
            counts, clients = self._walk_in_numpy(now, read_at, res)
        self._reconcile(counts)
        self._sweep_templates(now, clients, res)
        self._sweep_half_templates(now)
        self._sweep_locality(now, res)
        self.release_old_tables()
        self._end_half_look()
        res.seconds = time.perf_counter() - t0
        self.last_sweep = res
        return res

    def choose_sweep(self, log=None, numpy=None):
        """Load the kernel's walk once (the first sweep, or the daemon at start, which logs the choice); where the
        kernel refuses it (before 5.13: no bpf_for_each_map_elem) the sweep reads the tables with numpy, as it
        does from now on with numpy=True (tests, bench; numpy=False tries the kernel's again). Returns the path,
        "kernel" or "numpy"."""
        if numpy and self._walker:
            self._walker.close()
        if numpy is not None:
            self._walker = False if numpy else (self._walker or None)
        if self._walker is None:
            try:
                t = self.m["persist"].max_entries
                self._walker = Walker(self.m, self.cap.max_reals, self.cap.max_services, 2 * t)
            except KernelError as e:
                self._walker = False
                if log:
                    log(f"xlb: the sweep reads the tables with numpy: the in-kernel walk did not load "
                        f"({str(e).splitlines()[0]})")
            else:
                if log:
                    log("xlb: the sweep walks the connection tables in the kernel")
        return "kernel" if self._walker else "numpy"

    def _walk_in_kernel(self, now, read_at, res):
        """The connection and NAT tables' part of a sweep, by the kernel's walk: returns (counts, _Clients)."""
        live = list(self.real_ids.ids.values())
        svcs = {st.id: st.svc.persistence_netmask for st in self.by_id.values() if self._aggregated(st.svc)}
        out, reals, (ak, av) = self._walker.run(now, read_at, self.timeouts(),
                                                 {r: self.gens[r] for r in live}, svcs)
        res.conns_seen, res.half_open_seen, res.nat_seen, res.nat_half_seen = out.seen
        res.conns_expired, res.half_open_expired = out.expired
        res.nat_expired, res.nat_half_expired = out.nat_expired
        counts = {r: [a, i] for r, a, i in zip(live, reals["active"][live].tolist(), reals["inactive"][live].tolist())}
        if out.overflow:  # more clients than the aggregates hold: this sweep reads the (swept) table
            return counts, self._clients(self._scan_conns(now, self.timeouts()))
        return counts, _Clients([ak["w0"], ak["w1"], ak["sid"].astype(np.uint64)], av["until"], av["in_conns"] != 0)

    def _walk_in_numpy(self, now, read_at, res):
        """The same, by a batched read of the tables decided with numpy."""
        scan = self._scan_conns(now, self.timeouts())
        res.half_open_seen = int(np.count_nonzero(scan.half))
        res.conns_seen = len(scan.keys) - res.half_open_seen
        for name, mine in (("conns", ~scan.half), ("half_open", scan.half)):
            expired = scan.keys[mine & ~scan.alive]
            if len(expired):
                self.delete_batch(self.m[name], expired)
            setattr(res, f"{name}_expired", len(expired))
        for name, label in (("nat_revs", "nat"), ("nat_half", "nat_half")):
            seen, expired = self._sweep_nat(name, scan, read_at)
            setattr(res, f"{label}_seen", seen)
            setattr(res, f"{label}_expired", expired)
        return scan.counts, self._clients(scan)

    @staticmethod
    def _aggregated(svc):
        """Whether a service's connections are matched to templates: for holds (lvs mode) or for the count of
        missing templates (not the SIP engine's)."""
        return bool(svc.persistence_timeout) and (svc.persistence_mode == "lvs" or not svc.persistence_engine)

    def _svc_mask(self, want):
        """A bool per service id: want(svc)."""
        out = np.zeros(self.cap.max_services, bool)
        out[[st.id for st in self.by_id.values() if want(st.svc)]] = True
        return out

    def _scan_conns(self, now, timeouts):
        """One batched read of the connection table into numpy arrays, decided there (a few array passes, not a
        Python object per entry), with the half-open entries (bpf/halfopen.h: they count for their reals, hold
        their NAT reverse entries and templates alike). Returns a _ConnScan: the keys and values, each entry's
        expiry (`until`) and whether it is still alive, and each live real's [active, inactive] counts."""
        ck, cv = self._read_all("conns", S.ConnKey, S.Conn)
        hk, hv = self._read_all("half_open", S.ConnKey, S.Conn)
        keys, vals = np.concatenate([ck, hk]), np.concatenate([cv, hv])
        half = np.arange(len(keys)) >= len(ck)
        state = vals["state"]
        tmo = np.array(list(timeouts) + [0], np.int64)[np.minimum(state, S.CONN_STATES)]
        until = vals["seen_ns"].astype(np.int64) + tmo
        alive = until >= now

        size = self.cap.max_reals
        ids = np.fromiter(self.real_ids.ids.values(), np.int64, len(self.real_ids.ids))
        gen_of = np.full(size, -1, np.int64)     # -1: no live real has this id (generations are u32)
        gen_of[ids] = [self.gens[r] for r in ids.tolist()]
        rid = np.minimum(vals["real_id"], size - 1).astype(np.int64)
        ok = alive & (gen_of[rid] == vals["real_gen"])
        # one count per (real, established?): index 2 * real + 1 counts the established ones
        both = np.bincount((2 * rid + (state == S.CONN_STATE["est"]))[ok], minlength=2 * size).reshape(size, 2)
        counts = {r: [act, inact] for r, inact, act in zip(ids.tolist(), *both[ids].T.tolist())}
        return _ConnScan(keys, vals, until, alive, half, counts)

    def _read_all(self, name, key_t, val_t):
        """Every entry of map `name` as numpy key and value records, in one batched read."""
        table = self.m[name]
        keys = np.empty(table.max_entries, np.dtype(key_t))
        vals = np.empty(table.max_entries, np.dtype(val_t))
        n = lookup_batch_into(table.map_fd, keys, vals)
        return keys[:n], vals[:n]

    def _sweep_nat(self, name, scan, read_at):
        """Delete NAT reverse entries (bpf/nat.h) of table `name` (nat_revs, or nat_half: a half-open connection's)
        whose connection entry, in conns or half_open, is gone (expired, evicted, or replaced by one to another
        real); entries written since the connection table was read are spared. Returns (seen, deleted)."""
        keys, vals = self._read_all(name, S.ConnKey, S.NatRev)
        n = len(keys)
        if not n:
            return 0, 0
        orig = np.zeros(n, np.dtype(S.ConnKey))  # the client's side of each: what conns is keyed by
        orig["src"], orig["dst"] = keys["dst"], vals["vip"]
        orig["sport"], orig["dport"] = keys["dport"], vals["vport"]
        orig["proto"], orig["family"] = keys["proto"], keys["family"]
        live = scan.keys[scan.alive]

        def cols(rows, real_ids):
            words = np.ascontiguousarray(rows).view(np.uint64).reshape(len(rows), -1)
            return [words[:, i] for i in range(words.shape[1])] + [real_ids.astype(np.uint64)]
        found = np.zeros(n, bool)
        if len(live):
            found = row_index(cols(orig, vals["real_id"]), cols(live, scan.vals["real_id"][scan.alive])) >= 0
        gone = keys[~found & (vals["born_ns"].astype(np.int64) < read_at)]
        if len(gone):
            self.delete_batch(self.m[name], gone)
        return n, len(gone)

    def _sweep_templates(self, now, clients, res):
        """Expire templates (their service or real gone, or their timer run out and, in lvs mode, no live
        connection of theirs left) and write each lvs-mode template's hold: the latest expiry among the live
        connections it placed. Decided with numpy over one batched read, decoded by the reader (read_templates)."""
        t = self.read_templates()
        tk, tv, n = t.keys, t.vals, len(t.keys)
        res.templates_seen = n
        res.templates_missing = self._templates_missing(clients, t)
        if not n:
            return
        ok, tmo, lvs = t.ok, t.timeout, t.lvs
        hold = np.zeros(n, np.int64)
        want = ok & lvs
        if want.any():
            hold[want] = self._holds(clients, t.sid[want], tk["client"][want])
        dead = ~ok | (np.maximum(tv["last_new_ns"].astype(np.int64) + tmo, hold) <= now)
        res.templates_held = int(np.count_nonzero(~dead & (hold != 0)))
        # The longest interval the daemon may wait (it reads the applied config's sweep_interval; a reload can
        # change it, unlike the table sizes fixed at start).
        margin = int(2 * max(self.config.tables.sweep_interval, SWEEP_STRETCH_MAX) * NS)
        change = np.flatnonzero(~dead & lvs & hold_due(hold, tv["held_until_ns"].astype(np.int64), now, margin))
        if len(change):
            persist = self.m["persist"]
            rewrite_u64(persist.map_fd, tk[change], ct.sizeof(S.Persist), S.Persist.held_until_ns.offset,
                        hold[change])
        gone = tk[dead]
        if len(gone):
            persist = self.m["persist"]
            self.delete_batch(persist, gone)
        res.templates_expired = len(gone)

    def _sweep_half_templates(self, now):
        """Expire the templates of half-open connections (persist_half, bpf/halfopen.h) whose service or real is
        gone or whose timer ran out: their handshake's ACK moves the others to persist. Without this, a SYN that
        was never answered would leave its template there for good, and with it the half-open lookups
        (XLB_SET_F_HALF_LOOK) once the defense is off."""
        t = self.read_templates("persist_half")
        if len(t.keys):
            dead = ~t.ok | (t.vals["last_new_ns"].astype(np.int64) + t.timeout <= now)
            if dead.any():
                self.delete_batch(self.m["persist_half"], t.keys[dead])

    def void_templates(self, real_ids):
        """Delete the templates of these reals now (reals that just failed their health checks: the data plane
        already ignores them, bpf/persist.h; gone, they do not come back with the real)."""
        if not real_ids:
            return
        t = self.read_templates()
        gone = t.keys[np.isin(t.vals["real_id"], np.asarray(real_ids, np.uint32))]
        if len(gone):
            persist = self.m["persist"]
            self.delete_batch(persist, gone)

    def _sweep_locality(self, now, res):
        """Expire lblc/lblcr entries: their service is gone (or schedules otherwise now), they were unused for
        LOCALITY_EXPIRE, or their service holds more than LOCALITY_MAX_SIZE and they were unused for LOCALITY_IDLE."""
        keys, vals = self._read_all("lblc", S.LblcKey, S.LblcDests)
        res.locality_seen = len(keys)
        if not len(keys):
            return
        local = np.zeros(self.cap.max_services, bool)
        local[[st.id for st in self.by_id.values() if st.svc.scheduler in ("lblc", "lblcr")]] = True
        sid = np.minimum(keys["svc_id"], self.cap.max_services - 1)
        dead = locality_expired(local[sid], sid, vals["lastuse_ns"].astype(np.int64), now)
        gone = keys[dead]
        if len(gone):
            self.delete_batch(self.m["lblc"], gone)
        res.locality_expired = len(gone)

    def _clients(self, scan):
        """The _Clients of the live connections in scan (of the services _aggregated picks), the client being the
        source under the service's persistence netmask, as a template of that service names it."""
        masks = np.zeros((self.cap.max_services, 2), np.uint64)   # a 16-byte netmask as two words
        picked = self._svc_mask(self._aggregated)
        for st in self.by_id.values():
            if picked[st.id]:
                masks[st.id] = np.frombuffer(st.svc.persistence_netmask, np.uint64)
        csid = np.minimum(scan.vals["svc_id"], self.cap.max_services - 1)
        sel = np.flatnonzero(scan.alive & picked[csid])
        csid = csid[sel]
        src = scan.keys.view(_SRC_WORDS)                        # the source address as two words, no copy
        cols = [src["w0"][sel] & masks[csid, 0], src["w1"][sel] & masks[csid, 1], csid.astype(np.uint64)]
        return _Clients(cols, scan.until[sel], ~scan.half[sel])

    @staticmethod
    def _rows(clients, mask):
        return [c[mask] for c in clients.cols], clients.until[mask]

    @staticmethod
    def _template_cols(sids, clients):
        """The same columns for templates (service ids, PersistKey client fields)."""
        cw = np.ascontiguousarray(clients).view(np.uint64).reshape(len(clients), 2)
        return [cw[:, 0], cw[:, 1], sids.astype(np.uint64)]

    def _templates_missing(self, clients, t):
        """How many clients (service, client under its netmask) of a persistent service (not the SIP engine's) have
        live established-table connections but no usable template: templates the LRU evicted under table pressure
        (or voided with a failed real). A half-open connection's template waits in persist_half: not counted."""
        mine = self._svc_mask(lambda svc: not svc.persistence_engine)
        cols, _ = self._rows(clients, clients.in_conns & mine[clients.cols[2].astype(np.int64)])
        if not len(cols[0]):
            return 0
        if t.ok.any():
            ckey, valid, tkey = exact_keys(cols, self._template_cols(t.sid[t.ok], t.keys["client"][t.ok]))
            miss = ~(valid & np.isin(ckey, tkey))
            cols = [c[miss] for c in cols]
        # distinct clients among the connections without a template, by a 64-bit mix of the columns (one 1-D unique,
        # not a row-wise one: a third of the cost; a collision, ~n^2 / 2^64, would undercount one client)
        mix = cols[0] * np.uint64(0x9E3779B97F4A7C15) ^ cols[1] * np.uint64(0xC2B2AE3D27D4EB4F) ^ cols[2]
        return len(np.unique(mix))

    def _holds(self, clients, sids, tclients):
        """For lvs-mode templates (service id, client): the latest expiry among the live connections of that
        service whose source, under the service's persistence netmask, is the client; 0 where there is none."""
        lvs = self._svc_mask(lambda svc: svc.persistence_mode == "lvs")
        cols, until = self._rows(clients, lvs[clients.cols[2].astype(np.int64)])
        ckey, valid, tkey = exact_keys(cols, self._template_cols(sids, tclients))
        if not valid.all():
            ckey, until = ckey[valid], until[valid]
        return max_per_key(ckey, until, tkey)

    def _reconcile(self, counts):
        """Rewrite every real's connection counts from the table (the data plane's running counts miss entries
        that expire or that the LRU evicts), apply the thresholds' hysteresis, and refresh the candidates of
        connection-count services with more reals than the data plane weighs."""
        limits = {}
        for st in self.by_id.values():
            for r in st.svc.reals:
                if r.uthreshold:
                    limits[self.real_ids.get(real_key(st.svc.key, r))] = (r.uthreshold, r.lthreshold)
        if counts:
            # The data plane sets RC_F_OVERLOAD too.
            flags_now = self.real_rows("real_conns", S.RealConns)["flags"]
            rids = np.fromiter(counts, np.uint32, len(counts))
            rows = np.zeros(len(rids), np.dtype(S.RealConns))
            rows["active"], rows["inactive"] = np.array(list(counts.values()), np.int64).reshape(-1, 2).T
            for i, rid in enumerate(rids.tolist()):
                if rid in limits:
                    upper, lower = limits[rid]
                    total = int(rows["active"][i] + rows["inactive"][i])
                    was = rid < len(flags_now) and bool(flags_now[rid] & S.RC_F_OVERLOAD)
                    if total >= upper or (was and not (total < lower if lower else total * 4 < upper * 3)):
                        rows["flags"][i] = S.RC_F_OVERLOAD
            self.m["real_conns"].items_update_batch((ct.c_uint32 * len(rids)).from_buffer(rids),
                                                    (S.RealConns * len(rids)).from_buffer(rows))
        for st in self.by_id.values():
            svc = st.svc
            if svc.scheduler not in sched.CONN_SCHEDULERS or len(st.table) < S.CAND_MAX:
                continue
            ids = [self.real_ids.get(real_key(svc.key, r)) for r in svc.reals]
            table_now = [ids[i] for i in table_indexes(svc, self.loads(svc))]
            if table_now != st.table and len(table_now) == st.region[1]:
                # Same length, every entry a real id at every moment: rewrite in place.
                self.write_slots(st.region[0], table_now)
                st.table = table_now


def locality_expired(live, sid, lastuse, now, max_size=LOCALITY_MAX_SIZE):
    """Which lblc/lblcr entries go (bool array): of no live lblc/lblcr service, unused for LOCALITY_EXPIRE, or, in
    a service with more than max_size entries, unused for LOCALITY_IDLE (least recently used first, as many as
    IPVS's periodic check removes at once: (entries - max_size) * 4/3, at most max_size / 2)."""
    idle = now - lastuse
    dead = ~live | (idle > LOCALITY_EXPIRE * NS)
    ids, count = np.unique(sid[~dead], return_counts=True)
    for s_id, c in zip(ids.tolist(), count.tolist()):
        if c <= max_size:
            continue
        goal = min((c - max_size) * 4 // 3, max_size // 2)
        cand = np.flatnonzero(~dead & (sid == s_id) & (idle > LOCALITY_IDLE * NS))
        dead[cand[np.argsort(lastuse[cand], kind="stable")[:goal]]] = True
    return dead
