"""python -m bench.scaleout [--conns 1000] [--clients 200] [--rounds 1] [--json PATH]

The ECMP lab's full measurement (xlb/lab/ecmp.py; docs/scale-out.md's table): 3 balancers behind a BIRD router
with ECMP and BFD, `--conns` long-lived TCP connections per service and `--clients` persistent clients (one per
/24). Per round: no event (do persistent clients keep their real when ECMP spreads their connections?), one
balancer's link cut, one balancer drained with `xlb drain`. Prints a table per round; root and bird2 needed."""
import argparse
import json
import sys
import tempfile
import time

from xlb.cli import main as xlb_main
from xlb.lab.ecmp import SERVICES, EcmpLab

from . import unwind_on_sigterm

EVENTS = (("none", 0), ("cut", 1), ("drain", 2))


def table(results):
    lines = ["| event | converge (s) | " + " | ".join(f"{s}: broken" for s in SERVICES) + " | rr-persistent: moved"
             " | consistent: moved |", "|" + " --- |" * (len(SERVICES) + 4)]
    for r in results:
        s = r["services"]
        cells = [f"{s[k]['broken']}/{s[k]['conns']}" for k in SERVICES]
        moved = [f"{s[k]['moved']}/{s[k]['clients']}" for k in ("rr-persistent", "consistent")]
        lines.append(f"| {r['event']} | {r['converge_s']:.2f} | " + " | ".join(cells + moved) + " |")
    return "\n".join(lines)


def run(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.scaleout", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--conns", type=int, default=1000, help="long-lived connections per service (default 1000)")
    ap.add_argument("--clients", type=int, default=200, help="persistent clients, one per /24 (at most 250)")
    ap.add_argument("--rounds", type=int, default=1, help="times to repeat the three events")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--prefix", default="xso", help="namespace prefix (unique per concurrent run)")
    args = ap.parse_args(argv)
    if not 1 <= args.clients <= 250:
        ap.error("--clients: 1 to 250")
    unwind_on_sigterm()
    t0 = time.monotonic()

    def log(msg):
        print(f"[{time.monotonic() - t0:6.1f}s] {msg}", file=sys.stderr, flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="xlb-scaleout-") as work, \
            EcmpLab(work, xlb_main=xlb_main, clients=args.clients, prefix=args.prefix, log=log) as lab:
        for _ in range(args.rounds):
            for event, node in EVENTS:
                results.append(lab.scenario(event, node, args.conns))
    print(table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"conns": args.conns, "clients": args.clients, "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(run())
