"""The control plane's hold on the data plane: turns a Config into map contents and applies only the difference.

Everything is planned and checked before the first map write, so a rejected config changes nothing. DataPlane
also runs the timers (xlb/dataplane/sweep.py), reads the maps back (reader.py) and adopts pinned maps (adopt.py);
syncstate.py is state sync's side (the export flag, the ring buffer, received entries); settingsmap.py writes the
settings entry (timeouts, the flow cache's TTL and generation, the lookup flags).
"""
import contextlib
import ctypes as ct
import gc
import itertools
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from . import structs as S
from . import tunnels
from .adopt import Adopter
from .alloc import IdPool, SlotAllocator
from .bpfsys import delete_batch, lookup_batch_into, update_batch
from .entries import real_entries, svc_metas
from .mapkeys import SvcState, htons, real_key, svc_keys, table_indexes
from .reader import Reader
from .settingsmap import SettingsMap
from .sweep import Sweeper
from .syncstate import SyncState
from ..errors import ConfigError
from ..tables import marks as markmod
from ..tables import vipfilter

@contextlib.contextmanager
def _meanwhile(fn, *args):
    """fn(*args) on another thread during the with-block, whose end waits for it and raises what it raised: a
    batch write's syscall (ctypes lets go of the GIL there) while Python builds the next batch. Apply's writes
    keep their order: the block's own writes come after fn's."""
    with ThreadPoolExecutor(1, thread_name_prefix="xlb-apply") as pool:
        done = pool.submit(fn, *args)
        yield
        done.result()


@contextlib.contextmanager
def _gc_paused():
    """The cyclic garbage collector off for the duration (if it was on). apply() of 10,000 services x 10 reals
    allocates a few hundred thousand small containers next to a config of as many live objects: the full
    collections those allocations set off walked the whole heap and took 40% of its time. Nothing apply()
    allocates is cyclic garbage; reference counting frees it all the same.

    What it keeps (ids, service states: ~150,000 containers at that size) is long-lived: it goes straight to the
    oldest generation (gc.freeze then gc.unfreeze, which moves every tracked object there without a scan), not
    through the young collection that re-enabling would set off at once (~40 ms). Cyclic garbage of the moment
    goes along and is freed by the next full collection, as any in the oldest generation is. Skipped if something
    else keeps objects frozen (unfreezing would let go of them)."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        if not gc.get_freeze_count():
            gc.freeze()
            gc.unfreeze()
        gc.enable()


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
    Capacity.compiled(); `loads(svc)` (DataPlane.loads) picks connection-count candidates, not their number."""
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


class DataPlane(SettingsMap, Sweeper, Reader, Adopter, SyncState):
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
        self.failed = {}               # real id -> Real.failed, of the health-failed reals in the maps
        self.slots = SlotAllocator(self.cap.max_slots)
        self.services = {}             # svc.key -> SvcState
        self.by_id = {}                # svc id -> SvcState
        self.mark_entries = {}         # lpm tuple -> (mark, rule_id)
        self.vips = set()
        self.fwm_prefixes = {}         # fwmark service key -> every mark destination it has had (the VIP filter's)
        vf = self.m["vip_filter"]
        words = np.zeros(vf.max_entries, np.uint64)
        lookup_batch_into(vf.map_fd, np.empty(vf.max_entries, np.uint32), words)
        self.vip_words = words.tolist()  # as found (pinned: adopted)
        self._to_release = []          # regions freed at the next apply (in-flight packets may read old ones)
        # What this DataPlane last wrote to reals (by id, bytes) and services (key bytes -> entry bytes): apply
        # writes only entries that differ. Empty at start and after adopt (the first apply writes them all).
        self._reals_written = np.zeros((self.cap.max_reals, ct.sizeof(S.Real)), np.uint8)
        self._reals_known = np.zeros(self.cap.max_reals, bool)
        self._svcs_written = {}
        self.route_source = None       # tests: address -> the outer source of a tunnel (None: the kernel's route)

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
        return fit(config, self.cap, self.loads)

    def apply(self, config):
        """Make the maps say what config says, touching only what differs. The order of the writes is the
        make-before-break contract (docs/design.md "Who writes what"): VIP filter bits added, reals, mark rules,
        tables and services, settings; then what the config no longer has; the flow cache voided last."""
        with _gc_paused():
            self._apply(config)

    def _apply(self, config):
        entries, tables = self.check(config)
        tun_rows = tunnels.plan(config, self.route_source)
        old = self.services
        vips, fwm, fbits = self._widen_vip_filter(config)
        real_rows, svc_states = self._take_ids(config, old, tun_rows)
        want = self._write_mark_rules(config, entries)
        nat = self._nat_replies(config)
        if nat:  # before a new NAT service's first connection: its SYN-ACK is looked for
            self._set_flag(S.SET_F_NAT, True)
        self._write_services(svc_states, tables, config)
        self._write_settings(config, bool(want), fbits is not None, nat)
        self._remove_stale(config, old, real_rows, want)
        self._apply_vips(vips)
        if fbits is not None:
            self._write_vip_words(vipfilter.words(fbits))

        self.services = svc_states
        self.by_id = {st.id: st for st in svc_states.values()}
        self.fwm_prefixes = fwm
        self.config = config
        self.invalidate_flow_cache()

    def _widen_vip_filter(self, config):
        """VIP filter: old and new bits while services change (apply writes only the new ones once the old are
        gone). Returns (VIP prefixes, each fwmark service's prefixes, the filter's bits or None: filter off)."""
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
        return vips, fwm, fbits

    def _take_ids(self, config, old, tun_rows):
        """Ids for every real and service, stable per (service, address, port) and per service key (a new id bumps the
        real slot's generation and zeroes its counters), and the reals' entries written. Returns ({real id:
        (service, real)}, {service key: SvcState})."""
        keys = [svc.key for svc in config.services]
        sids, fresh_svcs = self.svc_ids.take_all(keys)
        svc_states = {key: old.get(key) for key in keys}
        new = [i for i, key in enumerate(keys) if svc_states[key] is None]
        blob, size = svc_keys([config.services[i] for i in new]).tobytes(), ct.sizeof(S.SvcKey)
        for j, i in enumerate(new):
            svc_states[keys[i]] = SvcState(config.services[i], sids[i], blob[j * size:(j + 1) * size])
        for key, svc in zip(keys, config.services):
            svc_states[key].svc = svc
        states = list(svc_states.values())
        # One pass over every real, in service order; their entries are built in the same order.
        reals = [r for st in states for r in st.svc.reals]
        rids, fresh_reals = self.real_ids.take_all(real_key(skey, r) for skey, st in svc_states.items()
                                                   for r in st.svc.reals)
        for rid in fresh_reals:
            self.gens[rid] = self.gens.get(rid, 0) + 1

        def zero_counters():  # of the ids taken afresh, before anything names them
            for names, ids in ((("svc_stats", "svc_out_stats", "rr_pos"), fresh_svcs),
                               (("real_stats", "real_out_stats", "real_conns"), fresh_reals)):
                for name in names:
                    self.zero_slots(self.m[name], ids)

        with _meanwhile(zero_counters):
            at = 0
            for st in states:
                st.real_ids, at = rids[at:at + len(st.svc.reals)], at + len(st.svc.reals)
            real_rows = dict(zip(rids, ((st.svc, r) for st in states for r in st.svc.reals)))
            rows = real_entries(states, reals, [self.gens[rid] for rid in rids])
        if tun_rows:
            for rid, (svc, r) in real_rows.items():
                tun = tun_rows.get((svc.key, r.address))
                if tun is not None:  # before the real says to use it
                    self.m["tunnels"][ct.c_uint32(rid)] = tun
        self._write_reals(np.array(rids, np.uint32), rows)
        failed = {rid: r.failed for rid, r in zip(rids, reals) if r.failed}
        newly_failed = [rid for rid in failed if not self.failed.get(rid)]
        self.failed = failed
        self.void_templates(newly_failed)
        return real_rows, svc_states

    def _write_reals(self, rids, rows):
        """reals[rids[i]] = rows[i] (numpy S.Real records), in one batch, for those that differ from what this
        DataPlane last wrote there (all of them after a start or an adopt)."""
        if not len(rids):
            return
        words = rows.view(np.uint8).reshape(len(rows), -1)
        changed = ~self._reals_known[rids] | (self._reals_written[rids] != words).any(axis=1)
        if changed.any():
            update_batch(self.m["reals"].map_fd, np.ascontiguousarray(rids[changed]), rows[changed])
            self._reals_written[rids[changed]] = words[changed]
            self._reals_known[rids[changed]] = True

    def _write_mark_rules(self, config, entries):
        """Mark rules: added before the settings flag turns classification on (removed after, _remove_stale).
        Returns the trie entries wanted: {entry: (mark, rule id)}."""
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
        return want

    def _write_services(self, svc_states, tables, config):
        """Scheduling tables (in fresh regions when they changed; one batch), then the services that point at them
        (one batch of those whose entry changed)."""
        new_tables = []
        for key, st in svc_states.items():
            ids = st.real_ids
            table = [ids[i] for i in tables[key]]
            if table != st.table:
                region = self._alloc_table(table, config)
                new_tables.append((region[0], table))
                if st.region[1]:
                    self._to_release.append(st.region)
                st.region, st.table = region, table
        states = list(svc_states.values())
        with _meanwhile(self.write_slot_runs, new_tables):  # the services are written once their tables are
            metas = svc_metas(states)
        blob, size = metas.tobytes(), metas.itemsize
        written = self._svcs_written
        changed = [i for i, st in enumerate(states) if written.get(st.key_bytes) != blob[i * size:(i + 1) * size]]
        if changed:
            keys = [states[i].key_bytes for i in changed]
            update_batch(self.m["services"].map_fd, np.frombuffer(b"".join(keys), np.dtype(S.SvcKey)),
                         metas[changed])
            written.update((states[i].key_bytes, blob[i * size:(i + 1) * size]) for i in changed)

    def _remove_stale(self, config, old, real_rows, want):
        """Remove what the config no longer has: services, reals (not LIVE), mark-rule entries and rule ids."""
        new_keys = {s.key for s in config.services}
        gone = []
        for key, st in old.items():
            if key not in new_keys:
                gone.append(S.SvcKey.from_buffer_copy(st.key_bytes))
                self._svcs_written.pop(st.key_bytes, None)
                if st.region[1]:
                    self._to_release.append(st.region)
                self.svc_ids.drop(key)
        if gone:
            self.delete_batch(self.m["services"], gone)
        dropped = []
        # Every id of real_rows is one of the pool's (taken this apply): a pool no larger holds no other.
        if len(self.real_ids.ids) > len(real_rows):
            for ident, rid in list(self.real_ids.ids.items()):
                if rid not in real_rows:
                    dropped.append(rid)
                    self.real_ids.drop(ident)
        if dropped:
            # Not LIVE: templates and conns let go of it. The generation stays, for a restarted daemon.
            rows = np.zeros(len(dropped), np.dtype(S.Real))
            rows["gen"] = [self.gens[rid] for rid in dropped]
            self._write_reals(np.array(dropped, np.uint32), rows)
        trie = self.m["mark_rules"]
        for k in list(self.mark_entries):
            if k not in want:
                del trie[self._mark_key(k)]
        live_rules = {markmod.rule_identity(r) for r in config.marks}
        for ident in list(self.rule_ids.ids):
            if ident not in live_rules:
                self.rule_ids.drop(ident)
        self.mark_entries = want

    def release_old_tables(self):
        """Give back table regions replaced at least one apply or sweep ago."""
        for off, ln in self._to_release:
            self.slots.release(off, ln)
        self._to_release = []

    def _alloc_table(self, table, config):
        """A region of sched_slots for `table` (written by the caller): (offset, length)."""
        if not table:
            return (0, 0)
        off = self.slots.alloc(len(table))
        if off is None:
            self.release_old_tables()
            off = self.slots.alloc(len(table))
        if off is None:
            raise ConfigError(config.source, "service", "scheduling table space exhausted")
        return (off, len(table))

    def write_slots(self, off, table):
        """sched_slots[off + i] = table[i], one BPF_MAP_UPDATE_BATCH (a 65537-slot Maglev table: one syscall, the
        arrays built by numpy rather than 65537 ctypes conversions)."""
        self.write_slot_runs([(off, table)])

    def write_slot_runs(self, runs):
        """write_slots for many (offset, table) runs at once: one BPF_MAP_UPDATE_BATCH for all of them."""
        runs = [(off, table) for off, table in runs if len(table)]
        if not runs:
            return
        lens = np.fromiter((len(table) for _, table in runs), np.int64, len(runs))
        offs = np.fromiter((off for off, _ in runs), np.int64, len(runs))
        total = int(lens.sum())
        # slot i of the k-th run is offs[k] + i: each run's offset less where it starts in the concatenation
        keys = (np.repeat(offs - (np.cumsum(lens) - lens), lens) + np.arange(total)).astype(np.uint32)
        vals = np.fromiter(itertools.chain.from_iterable(table for _, table in runs), np.uint32, total)
        update_batch(self.m["sched_slots"].map_fd, keys, vals)

    def _write_vip_words(self, want):
        changed = [i for i, (a, b) in enumerate(zip(self.vip_words, want)) if a != b]
        if changed:
            keys = (ct.c_uint32 * len(changed))(*changed)
            vals = (ct.c_uint64 * len(changed))(*(want[i] for i in changed))
            self.m["vip_filter"].items_update_batch(keys, vals)
            self.vip_words = list(want)

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

    @staticmethod
    def zero_slots(table, ids):
        """zero_slot for many indexes, one batch (bcc's Leaf is the kernel's value: per-CPU maps' every CPU)."""
        if ids:
            update_batch(table.map_fd, np.array(ids, np.uint32),
                         np.zeros((len(ids), ct.sizeof(table.Leaf)), np.uint8))

    @staticmethod
    def delete_batch(table, keys):
        """Delete keys (a sequence of table.Key, a ctypes array of them, or a numpy array of key records) in one
        batch; keys already gone (LRU eviction between read and delete) are passed over."""
        if not isinstance(keys, np.ndarray):
            keys = np.frombuffer(b"".join(map(bytes, keys)), np.uint8).reshape(-1, ct.sizeof(table.Key))
        return delete_batch(table.map_fd, np.ascontiguousarray(keys))
