"""Counters read from the maps, summed over CPUs, for listings, `xlb top`, the metrics and the demo.

Per-CPU counter arrays are read with one BPF_MAP_LOOKUP_BATCH per map (``percpu_counters``), not a lookup per
slot: a `stats` snapshot of 1000 services x 10 reals is a handful of syscalls."""
import ctypes as ct
import weakref

import numpy as np

from ..dataplane import structs as S
from ..dataplane.bpfsys import lookup_batch
from ..tables.marks import rule_identity


def percpu_counters(table, n):
    """[(packets, bytes, conns)] for indexes 0..n-1 of a per-CPU counters array, summed over CPUs: one batch read."""
    if n <= 0:
        return []
    vsz = ct.sizeof(table.Leaf)            # Counters * possible CPUs
    ncpu = vsz // ct.sizeof(S.Counters)
    _, values, got = lookup_batch(table.map_fd, 4, vsz, min(n, table.max_entries))
    words = np.frombuffer(values, np.uint64, count=got * ncpu * 3).reshape(got, ncpu, 3)
    if got and int(words.max()) >= 2**64 // ncpu:   # a sum could pass 2**64: add as Python integers
        return [tuple(sum(col) for col in zip(*row)) for row in words.tolist()]
    return list(map(tuple, words.sum(axis=1).tolist()))


ZERO = (0, 0, 0)


class FlowCounters:
    """Every service's and real's (packets, bytes, conns), summed over CPUs: two batch reads, then lookups by id."""

    def __init__(self, dp):
        self._svc = percpu_counters(dp.m["svc_stats"], dp.svc_ids.next)
        self._real = percpu_counters(dp.m["real_stats"], dp.real_ids.next)

    @staticmethod
    def _row(rows, idx):
        return rows[idx] if idx is not None and idx < len(rows) else ZERO

    def service(self, svc_id):
        return self._row(self._svc, svc_id)

    def real(self, real_id):
        return self._row(self._real, real_id)


_layouts = weakref.WeakKeyDictionary()   # DataPlane -> (the config it was built for, layout)


def layout(dp):
    """[(service state, [(real config, real id, address text)])] of the applied config, in dp.services' order.
    Ids and addresses change only when a config is applied, so this is built once per config: finding a real's id
    hashes its address object, which costs ~10 us a real."""
    got = _layouts.get(dp)
    if got is None or got[0] is not dp.config:
        slots = [(st, [(r, dp.real_ids.get((st.svc.key, r.address)), str(r.address)) for r in st.svc.reals])
                 for st in dp.services.values()]
        got = _layouts[dp] = (dp.config, slots)
    return got[1]


def snapshot(dp):
    """{"services": [...], "verdicts": {...}, "marks": [...]} with packets/bytes/conns summed over CPUs."""
    counts = FlowCounters(dp)
    live = dp.real_conn_counts()
    services = []
    for st, reals in layout(dp):
        packets, bytes_, conns = counts.service(st.id)
        out = []
        for r, rid, address in reals:
            rp, rb, rc = counts.real(rid)
            active, inactive = live.get(rid, (0, 0))
            out.append({"address": address, "weight": r.weight, "packets": rp, "bytes": rb, "conns": rc,
                        "active": active, "inactive": inactive})
        services.append({"service": st.svc.name, "scheduler": st.svc.scheduler, "packets": packets,
                         "bytes": bytes_, "conns": conns, "reals": out})
    verdict_rows = percpu_counters(dp.m["verdicts"], len(S.REASONS))
    verdicts = {}
    for num, name in S.REASONS.items():
        packets, bytes_, _ = verdict_rows[num] if num < len(verdict_rows) else ZERO
        if packets:
            verdicts[name] = {"packets": packets, "bytes": bytes_}
    marks = []
    if dp.config and dp.config.marks:
        mark_rows = percpu_counters(dp.m["mark_stats"], dp.rule_ids.next)
        for rule in dp.config.marks:
            rid = dp.rule_ids.get(rule_identity(rule))
            hits = mark_rows[rid][0] if rid is not None and rid < len(mark_rows) else 0
            marks.append({"rule": rule.where, "mark": rule.mark, "hits": hits})
    return {"services": services, "verdicts": verdicts, "marks": marks}


def render(dp):
    """The snapshot as an operator reads it."""
    snap = snapshot(dp)
    lines = [f"{'service / real':<36}{'conns':>8}{'packets':>10}{'bytes':>12}"]
    for s in snap["services"]:
        lines.append(f"{s['service'] + ' ' + s['scheduler']:<36}{s['conns']:>8}{s['packets']:>10}{s['bytes']:>12}")
        for r in s["reals"]:
            lines.append(f"  -> {r['address'] + ' w' + str(r['weight']):<32}{r['conns']:>8}{r['packets']:>10}"
                         f"{r['bytes']:>12}")
    if snap["marks"]:
        lines.append("mark rules: " + ", ".join(f"{m['rule']} (mark {m['mark']}): {m['hits']} hits"
                                                for m in snap["marks"]))
    lines.append("verdicts: " + (", ".join(f"{k}={v['packets']}" for k, v in snap["verdicts"].items()) or "none"))
    return "\n".join(lines)
