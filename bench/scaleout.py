"""python -m bench.scaleout [--conns 1000] [--clients 200] [--rounds 1] [--labs plain,sync] [--json PATH]

The ECMP lab's full measurement (xlb/lab/ecmp.py; docs/scale-out.md's table): 3 balancers behind a BIRD router
with ECMP and BFD, `--conns` long-lived TCP connections per service and `--clients` persistent clients (one per
/24). Per round: no event (do persistent clients keep their real when ECMP spreads their connections?), one
balancer's link cut, one balancer drained with `xlb drain`. The lab runs twice: without state sync ("plain": the
baselines) and with `xlb run --sync both` on every balancer ("sync"); the table puts them side by side per event.
Root and bird2 needed."""
import argparse
import json
import sys
import tempfile
import time

from xlb.cli import main as xlb_main
from xlb.lab.ecmp import EcmpLab

from . import unwind_on_sigterm

EVENTS = (("none", 0), ("cut", 1), ("drain", 2))
LABS = {"plain": None, "sync": "both"}  # lab name -> every balancer's `--sync` mode
# (heading, lab, service, what): broken connections, or persistent clients moved
COLUMNS = (("mh: broken", "plain", "mh", "broken"),
           ("consistent: broken / moved", "plain", "consistent", "both"),
           ("rr, no sync: broken", "plain", "rr", "broken"),
           ("rr + persistence, no sync: broken / moved", "plain", "rr-persistent", "both"),
           ("rr, --sync both: broken", "sync", "rr", "broken"),
           ("rr + persistence, --sync both: broken / moved", "sync", "rr-persistent", "both"))


def _cell(row, what):
    broken = f"{row['broken']}/{row['conns']}"
    return broken if what == "broken" else f"{broken} / {row['moved']}/{row['clients']}"


def table(results):
    """One line per event and round; results: {lab: [scenario result, ...]} in the same order of events."""
    cols = [c for c in COLUMNS if c[1] in results]
    lines = ["| event | converge (s) | " + " | ".join(c[0] for c in cols) + " |", "|" + " --- |" * (len(cols) + 2)]
    for rows in zip(*results.values()):
        by_lab = dict(zip(results, rows))
        converge = " / ".join(f"{r['converge_s']:.2f}" for r in rows)
        cells = [_cell(by_lab[lab]["services"][svc], what) for _, lab, svc, what in cols]
        lines.append(f"| {rows[0]['event']} | {converge} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.scaleout", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--conns", type=int, default=1000, help="long-lived connections per service (default 1000)")
    ap.add_argument("--clients", type=int, default=200, help="persistent clients, one per /24 (at most 250)")
    ap.add_argument("--rounds", type=int, default=1, help="times to repeat the three events")
    ap.add_argument("--labs", default="plain,sync", help="which labs to run: plain, sync or both (default)")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--prefix", default="xso", help="namespace prefix (unique per concurrent run)")
    args = ap.parse_args(argv)
    if not 1 <= args.clients <= 250:
        ap.error("--clients: 1 to 250")
    labs = [name.strip() for name in args.labs.split(",") if name.strip()]
    if not labs or set(labs) - set(LABS):
        ap.error(f"--labs: a comma-separated choice of {', '.join(LABS)}")
    unwind_on_sigterm()
    t0 = time.monotonic()

    def log(msg):
        print(f"[{time.monotonic() - t0:6.1f}s] {msg}", file=sys.stderr, flush=True)
    results = {}
    for name in labs:
        with tempfile.TemporaryDirectory(prefix="xlb-scaleout-") as work, \
                EcmpLab(work, xlb_main=xlb_main, clients=args.clients, prefix=args.prefix, log=log,
                        sync=LABS[name]) as lab:
            results[name] = [lab.scenario(event, node, args.conns)
                             for _ in range(args.rounds) for event, node in EVENTS]
    print(table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"conns": args.conns, "clients": args.clients, "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(run())
