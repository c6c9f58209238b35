"""NAT's per-packet cost against direct routing's, in one run: established TCP flows of a DR service and of a NAT
service (VIP:80 -> real:8080), and the NAT flows' replies (real -> client, rewritten back: the first round finds
them in nat_revs and fills the reply cache, bpf/replycache.h; the median round is its hits).

    .venv/bin/python -m bench.nat [--quick]

Method as bench/micro.py (pinned to one CPU, median of rounds, xdp_pass's figure subtracted):
- driven (ns_per_pkt): the driver tail-calls xlb over 16384 established flows, one per run; inbound only (the
  driver varies a frame's source, and a reply's flow is its destination);
- cold (ns_per_pkt_cold): repeat=1 runs of prebuilt frames, one per flow; for all three, so the replies compare.
The ratio is NAT's mean over both directions (cold) / DR's inbound (cold): the cost a NAT connection's packet
pays against a DR connection's (whose replies bypass the balancer).
"""
import argparse
import json

from xlb.dataplane.testrun import PreparedRun

from . import lab as L
from . import micro
from .packets import TCP, TCP_ACK, frame

VIP_NAT = "198.51.100.16"  # beside micro.py's VIPs (.10-.15)
NAT_PORT = 8080
TOML = micro.BASE_TOML + (f'[[service]]\nvip = "{VIP_NAT}"\nport = 80\nproto = "tcp"\nscheduler = "wrr"\n'
                          f'method = "nat"\n'
                          + "".join(f'  [[service.real]]\n  address = "{a}"\n  port = {NAT_PORT}\n'
                                    for a in L.MICRO_REALS_V4))


def _reply_frames(lab, n):
    """One reply frame per NAT connection (the first n of nat_revs): real:8080 -> client, to the balancer."""
    out = []
    for key, _ in lab.prog["nat_revs"].items():
        src = ".".join(str(b) for b in bytes(key.src)[:4])
        dst = ".".join(str(b) for b in bytes(key.dst)[:4])
        sport, dport = (int.from_bytes(bytes(k), "big") for k in (key.sport.to_bytes(2, "little"),
                                                                   key.dport.to_bytes(2, "little")))
        out.append(frame(src, dst, sport, dport, TCP, TCP_ACK, src_mac=L.GEN_MAC, dst_mac=L.LB0_MAC))
        if len(out) == n:
            break
    return out


def run(lab, quick=False, log=print):
    base = lab.baselines
    fds = {"pass": L.xdp_fd(base, "xb_pass").fd, "xlb": lab.prog.fd}
    b = micro._Bench(lab, lab.traffic, fds, quick)
    est = dict(establish=True)
    cases = [micro.Case("xdp_pass", "pass", micro.VIP4, same_packet=True),
             micro.Case("dr_established_v4", "xlb", micro.VIP4, **est),
             micro.Case("nat_established_in_v4", "xlb", VIP_NAT, **est)]
    lab.topo.route(lab.lb, "198.19.0.0/16", gateway="198.18.0.1")  # the replies' clients, via the generator
    old_cpus = L.pin_cpu(L.default_cpu())
    res = {}
    try:
        lab.dataplane(TOML)
        with L.in_netns(lab.lb):
            for case in cases:
                res[case.name] = b.measure(case)
            replies = _reply_frames(lab, b.cold_n)
            means, actions = [], {}
            for _ in range(b.rounds):
                runs = [PreparedRun(lab.prog.fd, f, ifindex=b.ifindex) for f in replies]
                means.append(sum(r() for r in runs) / len(runs))
                for r in runs:
                    actions[micro._action(r)] = actions.get(micro._action(r), 0) + 1
            res["nat_established_reply_v4"] = {"cold": sorted(means)[len(means) // 2], "cold_actions": actions}
            res["verdicts"] = {k: v.packets for k, v in lab.dp.verdict_counts().items() if v.packets}
    finally:
        L.unpin(old_cpus)
    p_driven, p_cold = res["xdp_pass"]["driven"], res["xdp_pass"]["cold"]
    out = {}
    for name in ("dr_established_v4", "nat_established_in_v4", "nat_established_reply_v4"):
        r = res[name]
        out[name] = {"ns_per_pkt_cold": round(r["cold"] - p_cold, 1), "cold_actions": r["cold_actions"]}
        if "driven" in r:
            out[name]["ns_per_pkt"] = round(r["driven"] - p_driven, 1)
            out[name]["action"] = r["action"]
    dr = out["dr_established_v4"]["ns_per_pkt_cold"]
    nat = (out["nat_established_in_v4"]["ns_per_pkt_cold"] + out["nat_established_reply_v4"]["ns_per_pkt_cold"]) / 2
    out["ratio_nat_both_ways_to_dr_cold"] = round(nat / dr, 2)
    out["ratio_nat_in_to_dr_driven"] = round(out["nat_established_in_v4"]["ns_per_pkt"]
                                             / out["dr_established_v4"]["ns_per_pkt"], 2)
    out["verdicts"] = res["verdicts"]
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.nat", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    with L.Lab(prefix="xbn") as lab:
        print(json.dumps(run(lab, args.quick), indent=1))


if __name__ == "__main__":
    main()
