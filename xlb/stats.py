"""Counters read from the maps, summed over CPUs, for listings and the demo."""
from .marks import rule_identity


def snapshot(dp):
    """{"services": [...], "verdicts": {...}, "marks": [...]} with packets/bytes/conns summed over CPUs."""
    services = []
    live = dp.real_conn_counts()
    for key, st in dp.services.items():
        svc = st.svc
        c = dp.counters("svc_stats", st.id)
        reals = []
        for r in svc.reals:
            rid = dp.real_ids.get((svc.key, r.address))
            rc = dp.counters("real_stats", rid)
            active, inactive = live.get(rid, (0, 0))
            reals.append({"address": str(r.address), "weight": r.weight, "packets": rc.packets,
                          "bytes": rc.bytes, "conns": rc.conns, "active": active, "inactive": inactive})
        services.append({"service": svc.name, "scheduler": svc.scheduler, "packets": c.packets,
                         "bytes": c.bytes, "conns": c.conns, "reals": reals})
    verdicts = {k: {"packets": v.packets, "bytes": v.bytes} for k, v in dp.verdict_counts().items() if v.packets}
    marks = []
    if dp.config:
        for rule in dp.config.marks:
            rid = dp.rule_ids.get(rule_identity(rule))
            marks.append({"rule": rule.where, "mark": rule.mark, "hits": dp.counters("mark_stats", rid).packets})
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
