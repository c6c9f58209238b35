"""Counters read from the maps, summed over CPUs, for listings, `xlb top`, the metrics and the demo.

Per-CPU counter arrays are read by the data plane's reader (xlb/dataplane/reader.py ``percpu_counters``) with one
BPF_MAP_LOOKUP_BATCH per map, not a lookup per slot: a `stats` snapshot of 1000 services x 10 reals is a handful of
syscalls."""
from ..dataplane import structs as S
from ..dataplane.reader import percpu_counters  # noqa: F401  (xlb decap and tests sum their counters with it)
from ..dataplane.reader import real_names


ZERO = (0, 0, 0)


class FlowCounters:
    """Every service's and real's (packets, bytes, conns), summed over CPUs, and the same of their NAT replies
    (``service_out``, ``real_out``: (packets, bytes, 0)): four batch reads, then lookups by id."""

    def __init__(self, dp):
        self._svc, self._real = dp.flow_counter_rows()
        self._svc_out, self._real_out = dp.out_counter_rows()

    @staticmethod
    def _row(rows, idx):
        return rows[idx] if idx is not None and idx < len(rows) else ZERO

    def service(self, svc_id):
        return self._row(self._svc, svc_id)

    def real(self, real_id):
        return self._row(self._real, real_id)

    def service_out(self, svc_id):
        return self._row(self._svc_out, svc_id)

    def real_out(self, real_id):
        return self._row(self._real_out, real_id)


def snapshot(dp):
    """{"services": [...], "verdicts": {...}, "marks": [...]} with packets/bytes/conns summed over CPUs."""
    counts = FlowCounters(dp)
    live = dp.real_conn_counts()
    services = []
    for st, reals in dp.layout():
        packets, bytes_, conns = counts.service(st.id)
        out = []
        for (r, rid, _), address in zip(reals, real_names(st, reals)):
            rp, rb, rc = counts.real(rid)
            active, inactive = live.get(rid, (0, 0))
            out.append({"address": address, "weight": r.weight, "packets": rp, "bytes": rb, "conns": rc,
                        "active": active, "inactive": inactive})
        services.append({"service": st.svc.name, "scheduler": st.svc.scheduler, "packets": packets,
                         "bytes": bytes_, "conns": conns, "reals": out})
    verdict_rows = dp.verdict_rows()
    verdicts = {}
    for num, name in S.REASONS.items():
        packets, bytes_, _ = verdict_rows[num] if num < len(verdict_rows) else ZERO
        if packets:
            verdicts[name] = {"packets": packets, "bytes": bytes_}
    marks = [{"rule": rule.where, "mark": rule.mark, "hits": hits} for rule, hits in dp.mark_hits(each_rule=True)]
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
