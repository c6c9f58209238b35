"""The control plane's hold on the data plane: turns a Config into map contents, applies only the difference,
and runs the timers (sweeps expired connections and templates, keeps templates held by live connections).

Everything is planned and checked before the first map write, so a rejected config changes nothing.
"""
import ctypes as ct
import ipaddress
import time

import numpy as np
from dataclasses import dataclass, field

from . import clock
from ..tables import marks as markmod
from ..tables import sched
from . import structs as S
from ..tables import vipfilter
from .bpfsys import lookup_batch_into, rewrite_u64
from ..config.model import addr_bytes, fwmark_key
from ..errors import ConfigError

NS = 1_000_000_000
PROTO_NUM = markmod.PROTO_NUM
_SCHED_KIND = {**S.SCHED, "wrr": S.SCHED["rr"]}  # rr and wrr differ only in their tables
FLOW_TTL = 1.0  # seconds a flow-cache entry is trusted at most (bpf/flowcache.h)

CLOCK_MONOTONIC_COARSE = 6  # linux/time.h; Python's time module does not name it


def now_ns():
    """The data plane's clock: bpf_ktime_get_coarse_ns() is CLOCK_MONOTONIC_COARSE."""
    return time.clock_gettime_ns(CLOCK_MONOTONIC_COARSE)


def svc_key(svc) -> S.SvcKey:
    k = S.SvcKey(family=svc.family)
    if svc.fwmark is not None:
        k.mark = svc.fwmark
    else:
        k.addr = S.addr_words(addr_bytes(svc.vip))
        k.port = htons(svc.port)
        k.proto = PROTO_NUM[svc.proto]
    return k


def htons(port):
    return int.from_bytes(port.to_bytes(2, "big"), "little")


def table_indexes(svc, loads=None):
    """The slot table of a service as positions in svc.reals, in the order the data plane indexes them.

    Connection-count services get their candidates, chosen by `loads` ((active, inactive, overloaded) per real,
    default idle) when there are more than the data plane weighs."""
    weights = [r.weight for r in svc.reals]
    if svc.scheduler in sched.CONN_SCHEDULERS:
        loads = loads or [(0, 0, False)] * len(weights)
        return sched.conn_candidates(svc.scheduler, [(w, *ld) for w, ld in zip(weights, loads)], S.CAND_MAX)
    if svc.scheduler == "rr":
        return sched.rr_table(weights)
    if svc.scheduler == "wrr":
        return sched.wrr_table(weights)
    if svc.scheduler == "sh":
        return sched.sh_table(weights)
    if svc.scheduler == "dh":
        return sched.dh_table(weights)
    return sched.maglev_table([(addr_bytes(r.address), r.weight) for r in svc.reals], svc.mh_table_size)


@dataclass(frozen=True)
class Capacity:
    """What the maps of a compiled program hold (bpf/consts.h, or the loader's -D flags)."""

    max_services: int
    max_reals: int
    max_mark_entries: int
    max_mark_rules: int
    max_slots: int

    @classmethod
    def compiled(cls):
        """The sizes `xlb run` compiles: bpf/consts.h's defaults (it sets only the [tables] sizes)."""
        d = S.DEFINES
        return cls(d["XLB_MAX_SERVICES"], d["XLB_MAX_REALS"], d["XLB_MARK_ENTRIES"], d["XLB_MAX_MARK_RULES"],
                   d["XLB_SCHED_SLOTS"])


def fit(config, cap, loads=lambda svc: None):
    """Raise ConfigError if config does not fit maps of capacity `cap`; else return what apply() writes: the
    mark-rule trie entries and each service's table (positions in its reals). Pure: `xlb check` runs it against
    Capacity.compiled(); `loads(svc)` (DataPlane._loads) picks connection-count candidates, not their number."""
    src = config.source
    if len(config.services) > cap.max_services - 1:
        raise ConfigError(src, "service", f"{len(config.services)} services; at most {cap.max_services - 1}")
    nreals = sum(len(s.reals) for s in config.services)
    if nreals > cap.max_reals - 1:
        raise ConfigError(src, "service", f"{nreals} reals in all; at most {cap.max_reals - 1}")
    entries = markmod.lpm_entries(config.marks)
    if len(entries) > cap.max_mark_entries:
        raise ConfigError(src, "mark", f"mark rules expand to {len(entries)} (family, proto, port, prefix) "
                          f"entries; at most {cap.max_mark_entries}: name fewer ports")
    if len(config.marks) > cap.max_mark_rules - 1:
        raise ConfigError(src, "mark", f"{len(config.marks)} mark rules; at most {cap.max_mark_rules - 1}")
    # Old and new tables coexist while a reload swaps them: each may use at most half the slots.
    tables = {svc.key: table_indexes(svc, loads(svc)) for svc in config.services}
    need = sum(map(len, tables.values()))
    if need > cap.max_slots // 2:
        raise ConfigError(src, "service", f"scheduling tables need {need} slots; at most {cap.max_slots // 2}")
    return entries, tables


class SlotAllocator:
    """First-fit allocator of regions in the sched_slots array."""

    def __init__(self, size):
        self.free = [(0, size)]  # sorted, non-adjacent (offset, length)

    def alloc(self, length):
        for i, (off, ln) in enumerate(self.free):
            if ln >= length:
                self.free[i:i + 1] = [(off + length, ln - length)] if ln > length else []
                return off
        return None

    def release(self, off, length):
        self.free.append((off, length))
        self.free.sort()
        merged = []
        for o, ln in self.free:
            if merged and merged[-1][0] + merged[-1][1] == o:
                merged[-1] = (merged[-1][0], merged[-1][1] + ln)
            else:
                merged.append((o, ln))
        self.free = merged

    def available(self):
        return sum(ln for _, ln in self.free)

    def reserve(self, off, length):
        """Mark [off, off + length) as used (a region adopted from pinned maps)."""
        out = []
        for o, ln in self.free:
            end = o + ln
            if end <= off or o >= off + length:
                out.append((o, ln))
                continue
            if o < off:
                out.append((o, off - o))
            if end > off + length:
                out.append((off + length, end - off - length))
        self.free = out


SWEEP_DUTY = 10          # a sweep that takes d seconds is followed by at least 10 d seconds without one ...
SWEEP_STRETCH_MAX = 10.0  # ... up to 10 s (or the configured sweep_interval, if longer)


def sweep_interval(configured, last_seconds):
    """Seconds until the next sweep: the configured interval, stretched so the sweep takes at most a tenth of a
    CPU (a 1M-entry table takes ~0.3-0.6 s to sweep here), but never past SWEEP_STRETCH_MAX unless configured so.
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


class IdPool:
    """Stable small integer ids for identities; id 0 is never handed out."""

    def __init__(self, limit):
        self.limit = limit
        self.ids = {}
        self.free = []
        self.next = 1

    def get(self, ident):
        return self.ids.get(ident)

    def take(self, ident):
        if ident in self.ids:
            return self.ids[ident], False
        if self.free:
            i = self.free.pop()
        else:
            i, self.next = self.next, self.next + 1
        self.ids[ident] = i
        return i, True

    def drop(self, ident):
        self.free.append(self.ids.pop(ident))



@dataclass
class SweepResult:
    conns_seen: int = 0
    conns_expired: int = 0
    templates_seen: int = 0
    templates_expired: int = 0
    templates_held: int = 0
    seconds: float = 0.0


# A ConnKey record seen as its source address's two 8-byte words (for a view of the connection keys).
_SRC_WORDS = np.dtype({"names": ["w0", "w1"], "formats": [np.uint64, np.uint64],
                       "offsets": [S.ConnKey.src.offset, S.ConnKey.src.offset + 8], "itemsize": ct.sizeof(S.ConnKey)})


@dataclass
class _ConnScan:
    keys: np.ndarray       # ConnKey records
    vals: np.ndarray       # Conn records
    until: np.ndarray      # int64 ns: when each entry expires
    alive: np.ndarray      # bool: until >= now
    counts: dict           # live real id -> [active, inactive]


def _exact_keys(rows, table):
    """One int64 key per row for equality matching of multi-column rows: ``rows`` and ``table`` are lists of
    uint64 columns (n and m long). Returns (row keys, row valid, table keys): a valid row's key equals a table
    row's key exactly when every column does; an invalid row has a value no table row has in some column.
    Columns are rank-compressed against the table's values only as far as int64 needs, so the usual cases (one
    column that varies, the others constant) cost one pass per column."""
    rk = rows[0].view(np.int64)
    tk = table[0].view(np.int64)
    valid = np.ones(len(rk), bool)
    bound = 2**64  # distinct values the key may take so far
    for rc, tc in zip(rows[1:], table[1:]):
        u = np.unique(tc)
        if len(u) == 1:
            valid &= rc == u[0]
            continue
        if bound * len(u) >= 2**62:  # make the key so far a dense rank among the table's keys
            tu, tk = np.unique(tk, return_inverse=True)
            rk, ok = _rank(tu, rk)
            valid &= ok
            bound = len(tu)
        r, ok = _rank(u, rc)
        valid &= ok
        rk = rk * len(u) + r
        tk = tk * len(u) + np.searchsorted(u, tc)
        bound *= len(u)
    return rk, valid, tk


def _rank(sorted_values, x):
    """(index of each x in sorted_values, whether it is there)."""
    if not len(sorted_values):
        return np.zeros(len(x), np.int64), np.zeros(len(x), bool)
    i = np.minimum(np.searchsorted(sorted_values, x), len(sorted_values) - 1)
    return i, sorted_values[i] == x


def _lookup(keys, values, x, default=0):
    """values[i] where keys[i] == x (keys sorted and distinct), default elsewhere."""
    i, found = _rank(keys, x)
    return np.where(found, values[i] if len(values) else default, default)


def _row_index(rows, table, missing=-1):
    """For each row (columns as in _exact_keys) the index of the equal table row (table rows distinct), or
    ``missing``."""
    rk, valid, tk = _exact_keys(rows, table)
    order = np.argsort(tk, kind="stable")
    i, found = _rank(tk[order], rk)
    return np.where(valid & found, order[i] if len(order) else missing, missing)


@dataclass
class _SvcState:
    svc: object
    id: int
    key_bytes: bytes
    table: list = field(default_factory=list)
    region: tuple = (0, 0)


class DataPlane:
    """Owns the maps of a loaded Program."""

    def __init__(self, prog, tables):
        self.prog = prog
        self.tables = tables
        self.m = {name: prog[name] for name in S.MAP_TYPES}
        # Capacities as compiled (bpf/consts.h defaults, or the loader's -D flags).
        self.cap = Capacity(max_services=self.m["services"].max_entries, max_reals=self.m["reals"].max_entries,
                            max_mark_entries=self.m["mark_rules"].max_entries,
                            max_mark_rules=self.m["mark_stats"].max_entries,
                            max_slots=self.m["sched_slots"].max_entries)
        self.config = None
        self.svc_ids = IdPool(self.cap.max_services)
        self.real_ids = IdPool(self.cap.max_reals)
        self.rule_ids = IdPool(self.cap.max_mark_rules)
        self.gens = {}                 # real id -> generation last written
        self.slots = SlotAllocator(self.cap.max_slots)
        self.services = {}             # svc.key -> _SvcState
        self.by_id = {}                # svc id -> _SvcState
        self.mark_entries = {}         # lpm tuple -> (mark, rule_id)
        self.vips = set()
        self.fwm_prefixes = {}         # fwmark service key -> every mark destination it has had (the VIP filter's)
        vf = self.m["vip_filter"]
        words = np.zeros(vf.max_entries, np.uint64)
        lookup_batch_into(vf.map_fd, np.empty(vf.max_entries, np.uint32), words)
        self.vip_words = words.tolist()  # as found (pinned: adopted)
        self._to_release = []          # regions freed at the next apply (in-flight packets may read old ones)

    # -- applying a config ---------------------------------------------------------------------------------
    def check(self, config):
        """Raise ConfigError if config cannot be applied to this data plane; changes nothing.

        Returns what apply() writes: the mark-rule trie entries and each service's table (positions in its
        reals), so the tables are computed once."""
        sizes = ("conns", "templates", "flow_cache")
        if any(getattr(config.tables, k) != getattr(self.tables, k) for k in sizes):
            running = ", ".join(f"{k}={getattr(self.tables, k)}" for k in sizes)
            raise ConfigError(config.source, "tables", f"table sizes changed; they take effect only when xlb "
                              f"restarts (running: {running})")
        return fit(config, self.cap, self._loads)

    def apply(self, config):
        """Make the maps say what config says, touching only what differs."""
        entries, tables = self.check(config)
        old = self.services
        new_keys = {s.key for s in config.services}
        # VIP filter: old and new bits while services change, only the new ones once the old are gone.
        vips = markmod.vip_prefixes(config)
        # A fwmark service's established flows outlive a reload that moves its rules' prefixes (the connection table
        # comes first): the filter keeps every prefix the service has had while it stays.
        fwm = markmod.fwmark_prefixes(config)
        for key, prefixes in fwm.items():
            prefixes |= self.fwm_prefixes.get(key, set())
        fbits = vipfilter.bits(vips.union(*fwm.values()))
        if fbits is None:
            self._set_flag(S.SET_F_VIP_FILTER, False)
        else:
            want_words = vipfilter.words(fbits)
            self._write_vip_words([a | b for a, b in zip(self.vip_words, want_words)])

        # Reals: ids stable per (service, address); a new id bumps the slot's generation.
        real_rows = {}
        for svc in config.services:
            for r in svc.reals:
                rid, fresh = self.real_ids.take((svc.key, r.address))
                if fresh:
                    self.gens[rid] = self.gens.get(rid, 0) + 1
                    self.zero_slot(self.m["real_stats"], rid)
                    self.zero_slot(self.m["real_conns"], rid)
                real_rows[rid] = (svc, r)
        svc_states = {}
        for svc in config.services:
            sid, fresh = self.svc_ids.take(svc.key)
            if fresh:
                self.zero_slot(self.m["svc_stats"], sid)
                self.zero_slot(self.m["rr_pos"], sid)
            st = old.get(svc.key) or _SvcState(svc, sid, bytes(svc_key(svc)))
            st.svc = svc
            svc_states[svc.key] = st
        for rid, (svc, r) in real_rows.items():
            self.m["reals"][ct.c_uint32(rid)] = S.Real(
                addr=S.addr_words(addr_bytes(r.address)), gen=self.gens[rid], svc_id=svc_states[svc.key].id,
                weight=r.weight, family=svc.family, flags=S.REAL_F_LIVE, uthreshold=r.uthreshold,
                lthreshold=r.lthreshold)

        # Mark rules: add before the settings flag turns classification on, remove after.
        rule_id_of = {}
        for i, rule in enumerate(config.marks):
            rid, fresh = self.rule_ids.take(markmod.rule_identity(rule))
            if fresh:
                self.zero_slot(self.m["mark_stats"], rid)
            rule_id_of[i] = rid
        want = {k: (config.marks[i].mark, rule_id_of[i]) for k, i in entries.items()}
        trie = self.m["mark_rules"]
        for k, v in want.items():
            if self.mark_entries.get(k) != v:
                trie[self._mark_key(k)] = S.MarkVal(mark=v[0], rule_id=v[1])

        # Scheduling tables, then the services that point at them.
        for key, st in svc_states.items():
            svc = st.svc
            ids = [self.real_ids.get((svc.key, r.address)) for r in svc.reals]
            table = [ids[i] for i in tables[key]]
            if table != st.table:
                region = self._write_table(table, config)
                if st.region[1]:
                    self._to_release.append(st.region)
                st.region, st.table = region, table
            self.m["services"][svc_key(svc)] = self._svc_meta(st)

        self._write_settings(config, bool(want), fbits is not None)

        # Now remove what the config no longer has.
        for key, st in old.items():
            if key not in new_keys:
                del self.m["services"][S.SvcKey.from_buffer_copy(st.key_bytes)]
                if st.region[1]:
                    self._to_release.append(st.region)
                self.svc_ids.drop(key)
        for ident, rid in list(self.real_ids.ids.items()):
            if rid not in real_rows:
                # Not LIVE: templates and conns let go of it. The generation stays, for a restarted daemon.
                self.m["reals"][ct.c_uint32(rid)] = S.Real(gen=self.gens[rid])
                self.real_ids.drop(ident)
        for k in list(self.mark_entries):
            if k not in want:
                del trie[self._mark_key(k)]
        live_rules = {markmod.rule_identity(r) for r in config.marks}
        for ident in list(self.rule_ids.ids):
            if ident not in live_rules:
                self.rule_ids.drop(ident)
        self.mark_entries = want
        self._apply_vips(vips)
        if fbits is not None:
            self._write_vip_words(want_words)

        self.services = svc_states
        self.by_id = {st.id: st for st in svc_states.values()}
        self.fwm_prefixes = fwm
        self.config = config
        self.invalidate_flow_cache()

    def invalidate_flow_cache(self):
        """Void every flow-cache entry (bpf/flowcache.h): the next packet of each flow reads the connection table
        again. apply() calls it last, after every write it made; so must anything else that changes what an
        established flow's packets should do."""
        settings = self.m["settings"]
        st = settings[ct.c_uint32(0)]
        st.gen = (st.gen + 1) & 0xFFFFFFFF or 1
        settings[ct.c_uint32(0)] = st

    def release_old_tables(self):
        """Give back table regions replaced at least one apply or sweep ago."""
        for off, ln in self._to_release:
            self.slots.release(off, ln)
        self._to_release = []

    def _write_table(self, table, config):
        if not table:
            return (0, 0)
        off = self.slots.alloc(len(table))
        if off is None:
            self.release_old_tables()
            off = self.slots.alloc(len(table))
        if off is None:
            raise ConfigError(config.source, "service", "scheduling table space exhausted")
        self._write_slots(off, table)
        return (off, len(table))

    def _write_slots(self, off, table):
        """sched_slots[off + i] = table[i], one BPF_MAP_UPDATE_BATCH (a 65537-slot Maglev table: one syscall, the
        arrays built by numpy rather than 65537 ctypes conversions)."""
        n = len(table)
        keys = np.arange(off, off + n, dtype=np.uint32)
        vals = np.asarray(table, dtype=np.uint32)
        self.m["sched_slots"].items_update_batch((ct.c_uint32 * n).from_buffer(keys),
                                                 (ct.c_uint32 * n).from_buffer(vals))

    @staticmethod
    def _svc_meta(st):
        svc = st.svc
        flags = 0
        if svc.persistence_timeout:
            flags |= S.SVC_F_PERSIST
            if svc.persistence_mode == "timeout":
                flags |= S.SVC_F_PERSIST_TIMEOUT
            if svc.expire_quiescent_template:
                flags |= S.SVC_F_EXPIRE_QUIESCENT
        if svc.sched_flags:
            names = {f.split("-", 1)[1] for f in svc.sched_flags}
            flags |= (S.SVC_F_HASH_PORT if "port" in names else 0) | (S.SVC_F_FALLBACK if "fallback" in names else 0)
        return S.SvcMeta(id=st.id, flags=flags, sched=_SCHED_KIND[svc.scheduler], method=S.METHOD[svc.method],
                         table_off=st.region[0], table_len=st.region[1],
                         persist_timeout_ns=(svc.persistence_timeout or 0) * NS,
                         persist_mask=S.addr_words(svc.persistence_netmask))

    def _write_settings(self, config, has_marks, vip_filter):
        t = config.timeouts
        old = self.m["settings"][ct.c_uint32(0)]
        flags = (S.SET_F_MARKS if has_marks else 0) | (S.SET_F_VIP_FILTER if vip_filter else 0)
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

    def _write_vip_words(self, want):
        changed = [i for i, (a, b) in enumerate(zip(self.vip_words, want)) if a != b]
        if changed:
            keys = (ct.c_uint32 * len(changed))(*changed)
            vals = (ct.c_uint64 * len(changed))(*(want[i] for i in changed))
            self.m["vip_filter"].items_update_batch(keys, vals)
            self.vip_words = list(want)

    def _flow_ttl(self, shortest_timeout):
        """The flow cache's TTL in jiffies: a second, or a quarter of the shortest timeout if that is less (a cached
        flow's last-seen time lags by up to the TTL); 0 turns the cache off."""
        if not self.tables.flow_cache:
            return 0
        return max(1, int(clock.kernel_hz(self.prog) * min(FLOW_TTL, shortest_timeout / 4)))

    @staticmethod
    def _mark_key(k):
        family, proto, port, prefix, plen = k
        return S.MarkKey(prefixlen=32 + plen, family=family, proto=proto, port=htons(port),
                         addr=S.addr_words(prefix))

    def _apply_vips(self, want):
        trie = self.m["vip_prefixes"]
        for family, prefix, plen in want - self.vips:
            trie[S.VipKey(prefixlen=32 + plen, family=family, addr=S.addr_words(prefix))] = ct.c_uint32(1)
        for family, prefix, plen in self.vips - want:
            del trie[S.VipKey(prefixlen=32 + plen, family=family, addr=S.addr_words(prefix))]
        self.vips = want

    @staticmethod
    def zero_slot(table, idx):
        """Reset entry `idx` of an array map (counters, connection counts) to zero."""
        table[ct.c_uint32(idx)] = table.Leaf()

    # -- timers ----------------------------------------------------------------------------------------------
    def sweep(self, now=None):
        """Delete expired connections and templates; hold templates (lvs mode) while a connection they placed
        lives. Cost: one batched read of each table into numpy arrays, decided there (no Python per entry but
        for templates whose hold changes)."""
        t0 = time.perf_counter()
        now = now_ns() if now is None else now
        res = SweepResult()
        timeouts = self.m["settings"][ct.c_uint32(0)].timeout_ns
        timeouts = [timeouts[i] for i in range(S.CONN_STATES)]
        scan = self._scan_conns(now, timeouts)
        res.conns_seen = len(scan.keys)
        expired = scan.keys[~scan.alive]
        if len(expired):
            conns = self.m["conns"]
            self._delete_batch(conns, (conns.Key * len(expired)).from_buffer(expired))
        res.conns_expired = len(expired)
        self._reconcile(scan.counts)
        self._sweep_templates(now, scan, res)
        self.release_old_tables()
        res.seconds = time.perf_counter() - t0
        return res

    def _scan_conns(self, now, timeouts):
        """One batched read of the connection table into numpy arrays, decided there (a few array passes, not a
        Python object per entry). Returns a _ConnScan: the keys and values, each entry's expiry (`until`) and
        whether it is still alive, and each live real's [active, inactive] counts."""
        conns = self.m["conns"]
        keys = np.empty(conns.max_entries, np.dtype(S.ConnKey))
        vals = np.empty(conns.max_entries, np.dtype(S.Conn))
        n = lookup_batch_into(conns.map_fd, keys, vals)
        keys, vals = keys[:n], vals[:n]
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
        return _ConnScan(keys, vals, until, alive, counts)

    def _sweep_templates(self, now, scan, res):
        """Expire templates (their service or real gone, or their timer run out and, in lvs mode, no live
        connection of theirs left) and write each lvs-mode template's hold: the latest expiry among the live
        connections it placed. Decided with numpy over one batched read."""
        persist = self.m["persist"]
        tk = np.empty(persist.max_entries, np.dtype(S.PersistKey))
        tv = np.empty(persist.max_entries, np.dtype(S.Persist))
        n = lookup_batch_into(persist.map_fd, tk, tv)
        tk, tv = tk[:n], tv[:n]
        res.templates_seen = n
        if not n:
            return
        # Each template's service, by its key: index into `states`, len(states) for none.
        states = list(self.by_id.values())
        words = ct.sizeof(S.SvcKey) // 8
        svc_words = np.frombuffer(b"".join(st.key_bytes for st in states), np.uint64).reshape(len(states), words)
        tmpl_words = np.ascontiguousarray(tk["svc"]).view(np.uint64).reshape(n, words)
        j = _row_index(list(tmpl_words.T), list(svc_words.T), missing=len(states))
        tmo = np.array([(st.svc.persistence_timeout or 0) * NS for st in states] + [0], np.int64)[j]
        lvs = np.array([st.svc.persistence_mode == "lvs" for st in states] + [False])[j]
        sid = np.array([st.id for st in states] + [0], np.int64)[j]
        # Its real: live, and the generation it was placed with.
        rid = tv["real_id"].astype(np.int64)
        reals = self.m["reals"]
        limit = min(int(rid.max()) + 1, reals.max_entries)
        rkeys, rvals = np.empty(limit, np.uint32), np.empty(limit, np.dtype(S.Real))
        got = lookup_batch_into(reals.map_fd, rkeys, rvals)
        live_gen = np.where(rvals["flags"][:got] & S.REAL_F_LIVE, rvals["gen"][:got].astype(np.int64), -1)
        ok = (tmo > 0) & (rid < got)
        ok[ok] &= live_gen[rid[ok]] == tv["real_gen"][ok]
        hold = np.zeros(n, np.int64)
        want = ok & lvs
        if want.any():
            hold[want] = self._holds(scan, sid[want], tk["client"][want])
        dead = ~ok | (np.maximum(tv["last_new_ns"].astype(np.int64) + tmo, hold) <= now)
        res.templates_held = int(np.count_nonzero(~dead & (hold != 0)))
        # The longest interval the daemon may wait (it reads the applied config's sweep_interval; a reload can
        # change it, unlike the table sizes fixed at start).
        margin = int(2 * max(self.config.tables.sweep_interval, SWEEP_STRETCH_MAX) * NS)
        change = np.flatnonzero(~dead & lvs & hold_due(hold, tv["held_until_ns"].astype(np.int64), now, margin))
        if len(change):
            rewrite_u64(persist.map_fd, tk[change], ct.sizeof(S.Persist), S.Persist.held_until_ns.offset,
                        hold[change])
        gone = tk[dead]
        if len(gone):
            self._delete_batch(persist, (persist.Key * len(gone)).from_buffer(gone))
        res.templates_expired = len(gone)

    def _holds(self, scan, sids, clients):
        """For lvs-mode templates (service id, client): the latest expiry among the live connections of that
        service whose source, under the service's persistence netmask, is the client; 0 where there is none."""
        masks = np.zeros((self.cap.max_services, 2), np.uint64)   # a 16-byte netmask as two words
        holder = np.zeros(self.cap.max_services, bool)
        for st in self.by_id.values():
            if st.svc.persistence_timeout and st.svc.persistence_mode == "lvs":
                masks[st.id] = np.frombuffer(st.svc.persistence_netmask, np.uint64)
                holder[st.id] = True
        csid = np.minimum(scan.vals["svc_id"], self.cap.max_services - 1)
        sel = np.flatnonzero(scan.alive & holder[csid])
        csid = csid[sel]
        src = scan.keys.view(_SRC_WORDS)                        # the source address as two words, no copy
        # (client word 0, client word 1, service id): the same columns for connections and templates
        cols = [src["w0"][sel] & masks[csid, 0], src["w1"][sel] & masks[csid, 1], csid.astype(np.uint64)]
        cw = np.ascontiguousarray(clients).view(np.uint64)
        ckey, valid, tkey = _exact_keys(cols, [cw[:, 0], cw[:, 1], sids.astype(np.uint64)])
        until = scan.until[sel]
        if not valid.all():
            ckey, until = ckey[valid], until[valid]
        keys, inverse = np.unique(ckey, return_inverse=True)
        latest = np.zeros(len(keys), np.int64)
        np.maximum.at(latest, inverse, until)
        return _lookup(keys, latest, tkey)

    def _reconcile(self, counts):
        """Rewrite every real's connection counts from the table (the data plane's running counts miss entries
        that expire or that the LRU evicts), apply the thresholds' hysteresis, and refresh the candidates of
        connection-count services with more reals than the data plane weighs."""
        limits = {}
        for st in self.by_id.values():
            for r in st.svc.reals:
                if r.uthreshold:
                    limits[self.real_ids.get((st.svc.key, r.address))] = (r.uthreshold, r.lthreshold)
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
            ids = [self.real_ids.get((svc.key, r.address)) for r in svc.reals]
            table_now = [ids[i] for i in table_indexes(svc, self._loads(svc))]
            if table_now != st.table and len(table_now) == st.region[1]:
                # Same length, every entry a real id at every moment: rewrite in place.
                self._write_slots(st.region[0], table_now)
                st.table = table_now

    def _loads(self, svc):
        """(active, inactive, overloaded) of each of svc's reals now (idle for reals not yet in the maps)."""
        if svc.scheduler not in sched.CONN_SCHEDULERS:
            return None
        table = self.m["real_conns"]
        loads = []
        for r in svc.reals:
            rid = self.real_ids.get((svc.key, r.address))
            if rid is None:
                loads.append((0, 0, False))
                continue
            rc = table[ct.c_uint32(rid)]
            loads.append((max(rc.active, 0), max(rc.inactive, 0), bool(rc.flags & S.RC_F_OVERLOAD)))
        return loads

    def real_rows(self, name, struct):
        """Array map `name` (one entry per real id) from 0 to the highest real id handed out, as numpy records of
        ctypes `struct`: one batched read."""
        table = self.m[name]
        n = min(self.real_ids.next, table.max_entries)
        keys, rows = np.empty(n, np.uint32), np.zeros(n, np.dtype(struct))
        lookup_batch_into(table.map_fd, keys, rows)
        return rows

    def real_loads(self):
        """{real id: (active, inactive, overloaded)} for every configured real, as the data plane schedules on
        them (overloaded: RC_F_OVERLOAD, set at uthreshold, cleared below lthreshold): one batched read."""
        ids = list(self.real_ids.ids.values())
        rows = self.real_rows("real_conns", S.RealConns)[ids]
        return dict(zip(ids, zip(np.maximum(rows["active"], 0).tolist(), np.maximum(rows["inactive"], 0).tolist(),
                                 (rows["flags"] & S.RC_F_OVERLOAD != 0).tolist())))

    def real_conn_counts(self):
        """{real id: (active, inactive)} for every configured real, as the data plane schedules on them."""
        return {rid: (act, inact) for rid, (act, inact, _) in self.real_loads().items()}

    @staticmethod
    def _delete_batch(table, keys):
        """Delete keys (a sequence of table.Key, or a ctypes array of them) in one call."""
        arr = keys if isinstance(keys, ct.Array) else (table.Key * len(keys))(*keys)
        try:
            table.items_delete_batch(arr)
        except Exception:
            # An entry may have gone (LRU eviction) between read and delete: fall back to one by one.
            for k in keys:
                try:
                    del table[k]
                except KeyError:
                    pass

    # -- reading ------------------------------------------------------------------------------------------
    def counters(self, name, idx):
        """Sum of a per-CPU counters slot."""
        vals = self.m[name][ct.c_uint32(idx)]
        return S.Counters(packets=sum(v.packets for v in vals), bytes=sum(v.bytes for v in vals),
                          conns=sum(v.conns for v in vals))

    def verdict_counts(self):
        return {name: self.counters("verdicts", num) for num, name in S.REASONS.items()}

    # -- adopting pinned maps (a restarted daemon) ------------------------------------------------------------
    def adopt(self):
        """Rebuild the control plane's state from maps a previous daemon left pinned: service, real and mark-rule
        ids, real generations, scheduling-table regions, trie entries and VIP prefixes. The next apply() then
        keeps every id whose identity it keeps, so connections, templates and counters stay valid, and it writes
        only the difference. Returns what was found."""
        proto_name = {v: k for k, v in PROTO_NUM.items()}

        def addr(family, words):
            b = S.words_bytes(words)
            return ipaddress.ip_address(b[:4] if family == 4 else b)

        svc_of_id = {}
        for k, meta in self.m["services"].items():
            ident = (fwmark_key(k.family, k.mark) if k.mark else
                     (proto_name.get(k.proto), addr(k.family, k.addr), htons(k.port)))
            st = _SvcState(None, meta.id, bytes(k))
            if meta.table_len:
                n, off = meta.table_len, meta.table_off
                st.region = (off, n)
                st.table = [self.m["sched_slots"][ct.c_uint32(i)].value for i in range(off, off + n)]
                self.slots.reserve(off, n)
            self.services[ident] = st
            self.svc_ids.ids[ident] = meta.id
            svc_of_id[meta.id] = ident
        for rid, r in self.m["reals"].items_lookup_batch():
            rid = getattr(rid, "value", rid)
            if r.gen:
                self.gens[rid] = r.gen
            if r.flags & S.REAL_F_LIVE and r.svc_id in svc_of_id:
                self.real_ids.ids[(svc_of_id[r.svc_id], addr(r.family, r.addr))] = rid
        rules = {}
        for k, v in self.m["mark_rules"].items():
            entry = (k.family, k.proto, htons(k.port), S.words_bytes(k.addr), k.prefixlen - 32)
            self.mark_entries[entry] = (v.mark, v.rule_id)
            self.fwm_prefixes.setdefault(fwmark_key(k.family, v.mark), set()).add((k.family, entry[3], entry[4]))
            rules.setdefault(v.rule_id, []).append((v.mark, entry))
        for rule_id, entries in rules.items():
            self.rule_ids.ids[_rule_identity(entries)] = rule_id
        for k in self.m["vip_prefixes"].keys():
            self.vips.add((k.family, S.words_bytes(k.addr), k.prefixlen - 32))
        for pool in (self.svc_ids, self.real_ids, self.rule_ids):
            used = set(pool.ids.values())
            pool.next = max(used, default=0) + 1
            pool.free = sorted(set(range(1, pool.next)) - used, reverse=True)
        return {"services": len(self.services), "reals": len(self.real_ids.ids), "mark_rules": len(rules)}


def _rule_identity(entries):
    """markmod.rule_identity of the rule whose trie entries these are ([(mark, (family, proto, port, prefix,
    plen))]): "any" when it holds both protocols, its ports merged into ranges, () for every port."""
    mark = entries[0][0]
    family, _, _, prefix, plen = entries[0][1]
    protos = {e[1] for _, e in entries}
    ports = sorted({e[2] for _, e in entries} - {0})
    ranges = []
    for p in ports:
        if ranges and ranges[-1][1] == p - 1:
            ranges[-1] = (ranges[-1][0], p)
        else:
            ranges.append((p, p))
    proto = "any" if len(protos) > 1 else {v: k for k, v in PROTO_NUM.items()}[protos.pop()]
    dst = ipaddress.ip_network((prefix[:4] if family == 4 else prefix, plen))
    return (mark, proto, str(dst), tuple(ranges))
