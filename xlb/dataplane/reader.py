"""Reading the maps for the rest of xlb: the one place that decodes map contents. Listings (xlb/ops/listings.py),
the metrics, `xlb top` and the trace (xlb/observe/) and the sweep ask it; none of them indexes the maps.

- counters: per-CPU counter arrays summed over CPUs (``percpu_counters``, ``percpu_counter_array``: one batched
  read per map);
- the applied config by id: ``layout`` (services, their reals and ids), ``service_by_id``, ``real_addresses``;
- reals: ``live_reals`` (map entries), ``real_loads`` (connection counts, overload), as numpy records;
- templates: ``read_templates`` decodes the table once into numpy (service, timeout, whether its real still
  holds it), which the sweep and ``templates`` (listings) share; ``templates_by_service`` counts them;
- connections: ``connections`` (live entries, for listings), ``has_connection``; ``timeouts``; ``table_fill``;
- the trace build's record (``reset_trace``, ``trace_record``).
A mixin of DataPlane (xlb/dataplane/apply.py).
"""
import ctypes as ct
import itertools
import weakref
from collections import Counter
from dataclasses import dataclass

import numpy as np

from . import structs as S
from .bpfsys import iter_batches, lookup_batch, lookup_batch_into
from .mapkeys import NS, real_key
from .rowmatch import row_index
from ..config.model import real_labels
from ..tables import sched
from ..tables.marks import rule_identity


def percpu_counter_array(table, n):
    """(packets, bytes, conns) for indexes 0..n-1 of a per-CPU counters array, summed over CPUs, as an (n, 3)
    array (fewer rows if the map is smaller): one batch read. uint64, or Python integers (dtype object) if a sum
    could pass 2**64."""
    if n <= 0:
        return np.zeros((0, 3), np.uint64)
    vsz = ct.sizeof(table.Leaf)            # Counters * possible CPUs
    ncpu = vsz // ct.sizeof(S.Counters)
    _, values, got = lookup_batch(table.map_fd, 4, vsz, min(n, table.max_entries))
    words = np.frombuffer(values, np.uint64, count=got * ncpu * 3).reshape(got, ncpu, 3)
    if got and int(words.max()) >= 2**64 // ncpu:   # a sum could pass 2**64: add as Python integers
        return words.astype(object).sum(axis=1)
    return words.sum(axis=1)


def percpu_counters(table, n):
    """[(packets, bytes, conns)] for indexes 0..n-1 of a per-CPU counters array, summed over CPUs: one batch read."""
    return list(map(tuple, percpu_counter_array(table, n).tolist()))


def table_entries(table):
    """How many entries a hash table holds now (a batched walk; nothing is decoded)."""
    ksz, vsz = ct.sizeof(table.Key), ct.sizeof(table.Leaf)
    return sum(n for _, _, n in iter_batches(table.map_fd, ksz, vsz, table.max_entries))


@dataclass
class Templates:
    """The persistence templates as one batched read decoded them (numpy, one row per template)."""

    keys: np.ndarray     # PersistKey records
    vals: np.ndarray     # Persist records
    states: list         # the applied services' states; index len(states) stands for none
    svc: np.ndarray      # each template's service: an index into states
    timeout: np.ndarray  # int64 ns: its service's persistence timeout (0: none, or not persistent)
    lvs: np.ndarray      # bool: its service holds templates while their connections live (lvs mode)
    sid: np.ndarray      # int64: its service's id
    ok: np.ndarray       # bool: service persistent, its real live (not health-failed) with the generation
                         # it was placed with

    def until(self):
        """int64 ns each template expires at as stored: its timer, or in lvs mode its stored hold if later."""
        until = self.vals["last_new_ns"].astype(np.int64) + self.timeout
        return np.where(self.lvs, np.maximum(until, self.vals["held_until_ns"].astype(np.int64)), until)


_layouts = weakref.WeakKeyDictionary()   # DataPlane -> (the config it was built for, layout)


def real_names(st, reals) -> list:
    """How metrics, `xlb top` and traces name the reals of one layout() entry (config.model.real_labels): their
    addresses, with the port where two share one."""
    return real_labels([(a, r.port) for r, _, a in reals], st.svc.port)


class Reader:
    """What DataPlane reads back from its maps."""

    # -- counters ---------------------------------------------------------------------------------------------
    def counters(self, name, idx):
        """Sum of a per-CPU counters slot."""
        vals = self.m[name][ct.c_uint32(idx)]
        return S.Counters(packets=sum(v.packets for v in vals), bytes=sum(v.bytes for v in vals),
                          conns=sum(v.conns for v in vals))

    def verdict_counts(self):
        return {name: self.counters("verdicts", num) for num, name in S.REASONS.items()}

    def flow_counter_rows(self):
        """([(packets, bytes, conns)] by service id, the same by real id): two batch reads."""
        return tuple(list(map(tuple, rows.tolist())) for rows in self.flow_counter_arrays())

    def flow_counter_arrays(self):
        """flow_counter_rows as two (ids, 3) arrays (percpu_counter_array), for readers that stay in numpy."""
        return (percpu_counter_array(self.m["svc_stats"], self.svc_ids.next),
                percpu_counter_array(self.m["real_stats"], self.real_ids.next))

    def out_counter_rows(self):
        """The same for NAT replies (OutPkts/OutBytes; conns unused): two batch reads."""
        return (percpu_counters(self.m["svc_out_stats"], self.svc_ids.next),
                percpu_counters(self.m["real_out_stats"], self.real_ids.next))

    def out_counter_arrays(self):
        """out_counter_rows as two (ids, 3) arrays, for readers that stay in numpy."""
        return (percpu_counter_array(self.m["svc_out_stats"], self.svc_ids.next),
                percpu_counter_array(self.m["real_out_stats"], self.real_ids.next))

    def verdict_rows(self):
        """[(packets, bytes, conns)] by verdict reason number."""
        return percpu_counters(self.m["verdicts"], S.REASON_MAX)

    def conn_events(self):
        """{event name (enum xlb_conn_event, lower case, no prefix): count} summed over the CPUs."""
        table = self.m["conn_events"]
        return {name: sum(table.getvalue(ct.c_int(num))) for num, name in sorted(S.CONN_EVENTS.items())}

    def mark_hits(self, each_rule=False):
        """[(mark rule, hits)] of the applied config's mark rules in its order: each rule id once (rules that share
        an id count together), or with each_rule every rule (0 for one without an id)."""
        if not self.config or not self.config.marks:
            return []
        rows = percpu_counters(self.m["mark_stats"], self.rule_ids.next)
        out, seen = [], set()
        for rule in self.config.marks:
            rid = self.rule_ids.get(rule_identity(rule))
            if not each_rule and (rid is None or rid in seen):
                continue
            seen.add(rid)
            out.append((rule, rows[rid][0] if rid is not None and rid < len(rows) else 0))
        return out

    def zero_counters(self, svc_id, real_ids):
        """Zero a service's counters and its reals' (in and out)."""
        for name in ("svc_stats", "svc_out_stats"):
            self.zero_slot(self.m[name], svc_id)
        for rid in real_ids:
            for name in ("real_stats", "real_out_stats"):
                self.zero_slot(self.m[name], rid)

    # -- the applied config, by id ----------------------------------------------------------------------------
    def layout(self):
        """[(service state, [(real config, real id, address text)])] of the applied config, in dp.services' order.
        Ids and addresses change only when a config is applied, so this is built once per config: finding a real's
        id hashes its address object, which costs ~10 us a real."""
        got = _layouts.get(self)
        if got is None or got[0] is not self.config:
            slots = [(st, [(r, self.real_ids.get(real_key(st.svc.key, r)), str(r.address)) for r in st.svc.reals])
                     for st in self.services.values()]
            got = _layouts[self] = (self.config, slots)
        return got[1]

    def service_by_id(self, svc_id):
        """The applied service state with this id, or None."""
        return self.by_id.get(svc_id)

    def real_addresses(self):
        """{real id: address text (with its port where two reals of its service share the address)} of the
        configured reals."""
        return {rid: text for st, reals in self.layout() for (_, rid, _), text in zip(reals, real_names(st, reals))
                if rid is not None}

    def rule_of(self, rule_id):
        """The applied config's mark rule with this id, or None."""
        for rule in (self.config.marks if self.config else ()):
            if self.rule_ids.get(rule_identity(rule)) == rule_id:
                return rule
        return None

    # -- reals -----------------------------------------------------------------------------------------------
    def loads(self, svc):
        """(active, inactive, overloaded) of each of svc's reals now (idle for reals not yet in the maps)."""
        if svc.scheduler not in sched.CONN_SCHEDULERS:
            return None
        table = self.m["real_conns"]
        loads = []
        for r in svc.reals:
            rid = self.real_ids.get(real_key(svc.key, r))
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

    def live_reals(self):
        """{real id: Real map entry} for the configured reals: one batch read of the reals map."""
        rows = self.real_rows("reals", S.Real)
        entries = (S.Real * len(rows)).from_buffer(rows)
        return {rid: entries[rid] for rid in self.real_ids.ids.values()}

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

    # -- templates ------------------------------------------------------------------------------------------
    def read_templates(self, name="persist"):
        """The template table (or persist_half, bpf/halfopen.h), one batched read, decoded with numpy: a Templates."""
        persist = self.m[name]
        tk = np.empty(persist.max_entries, np.dtype(S.PersistKey))
        tv = np.empty(persist.max_entries, np.dtype(S.Persist))
        n = lookup_batch_into(persist.map_fd, tk, tv)
        tk, tv = tk[:n], tv[:n]
        states = list(self.by_id.values())
        if not n:  # nothing to match (and no first use of numpy's sorting paths for it)
            none = np.zeros(0, np.int64)
            return Templates(tk, tv, states, none, none, np.zeros(0, bool), none, np.zeros(0, bool))
        # Each template's service, by its key: index into `states`, len(states) for none.
        words = ct.sizeof(S.SvcKey) // 8
        svc_words = np.frombuffer(b"".join(st.key_bytes for st in states), np.uint64).reshape(len(states), words)
        tmpl_words = np.ascontiguousarray(tk["svc"]).view(np.uint64).reshape(n, words)
        j = row_index(list(tmpl_words.T), list(svc_words.T), missing=len(states))
        tmo = np.array([(st.svc.persistence_timeout or 0) * NS for st in states] + [0], np.int64)[j]
        # The SIP engine's templates run on their timer alone (DataPlane._svc_meta sets PERSIST_TIMEOUT for them).
        lvs = np.array([st.svc.persistence_mode == "lvs" and not st.svc.persistence_engine for st in states]
                       + [False])[j]
        sid = np.array([st.id for st in states] + [0], np.int64)[j]
        # Its real: live, and the generation it was placed with.
        rid = tv["real_id"].astype(np.int64)
        reals = self.m["reals"]
        limit = min(int(rid.max()) + 1, reals.max_entries)
        rkeys, rvals = np.empty(limit, np.uint32), np.empty(limit, np.dtype(S.Real))
        got = lookup_batch_into(reals.map_fd, rkeys, rvals)
        # (a health-failed real's templates are void: bpf/persist.h)
        flags = rvals["flags"][:got]
        usable = flags & (S.REAL_F_LIVE | S.REAL_F_DOWN) == S.REAL_F_LIVE
        live_gen = np.where(usable, rvals["gen"][:got].astype(np.int64), -1)
        ok = (tmo > 0) & (rid < got)
        ok[ok] &= live_gen[rid[ok]] == tv["real_gen"][ok]
        return Templates(tk, tv, states, j, tmo, lvs, sid, ok)

    def templates(self, now):
        """(persist key, value, service state, expiry ns) of each valid template, unexpired at `now`."""
        t = self.read_templates()
        until = t.until()
        keep = np.flatnonzero(t.ok & (until > now))
        if not len(keep):
            return
        keys = (S.PersistKey * len(t.keys)).from_buffer(t.keys)
        vals = (S.Persist * len(t.vals)).from_buffer(t.vals)
        for i, j, u in zip(keep.tolist(), t.svc[keep].tolist(), until[keep].tolist()):
            yield keys[i], vals[i], t.states[j], u

    def templates_by_service(self):
        """{service key bytes: templates in the table} of the applied services (expired ones included)."""
        t = self.read_templates()
        counts = np.bincount(t.svc.astype(np.int64), minlength=len(t.states) + 1)
        return Counter({st.key_bytes: int(c) for st, c in zip(t.states, counts.tolist()) if c})

    # -- connections ----------------------------------------------------------------------------------------
    def timeouts(self):
        """[ns] each connection state times out after, as the data plane reads them."""
        t = self.m["settings"][ct.c_uint32(0)].timeout_ns
        return [t[i] for i in range(S.CONN_STATES)]

    def connections(self, now):
        """(ConnKey, Conn, Real map entry, service state, ns left) of each live connection of a configured real
        (half-open ones too: bpf/halfopen.h)."""
        timeouts = self.timeouts()
        reals = self.live_reals()
        for k, v in itertools.chain(self.m["conns"].items_lookup_batch(), self.m["half_open"].items_lookup_batch()):
            r = reals.get(v.real_id)
            st = self.by_id.get(v.svc_id)
            if r is None or r.gen != v.real_gen or st is None or v.state >= S.CONN_STATES:
                continue
            left = v.seen_ns + timeouts[v.state] - now
            if left > 0:
                yield k, v, r, st, left

    def has_connection(self, key):
        """Whether the connection table (or the half-open one, bpf/halfopen.h) has an entry for this ConnKey."""
        return self.m["conns"].get(key) is not None or self.m["half_open"].get(key) is not None

    def table_fill(self):
        """[(label, entries, capacity)] of the connection and template tables."""
        return [(label, table_entries(self.m[name]), self.m[name].max_entries)
                for name, label in (("conns", "connections"), ("persist", "templates"), ("half_open", "half_open"),
                                    ("persist_half", "half_open_templates"), ("nat_revs", "nat"),
                                    ("nat_half", "half_open_nat"))]

    # -- the trace build's record ---------------------------------------------------------------------------
    def reset_trace(self):
        self.m["trace_out"][ct.c_uint32(0)] = S.TraceRec()

    def trace_record(self):
        return self.m["trace_out"][ct.c_uint32(0)]
