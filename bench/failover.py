"""python -m bench.failover [--connections N] [--clients N] [--rounds N] [--json PATH]

The VRRP active/backup measurement of docs/scale-out.md: two balancers (xlb/lab/syncpair.py) with keepalived
moving the VIP, long-lived TCP connections (port 7000, rr) and persistent clients (port 80, rr, persistence per
/24) through the active one; its link is cut; counted: connections broken (no answer, reset, or answered by
another real) and persistent clients whose next connection went to another real; and the seconds until the
other balancer held the VIP. rr with `xlb run --sync both` on both and without sync, and sh (source hashing, the
same choice on both nodes without state) without sync. Runs as root."""
import argparse
import json
import sys
import time

from xlb.cli import main as xlb_main
from xlb.lab.syncpair import SyncPair, failover

WARMUP = "198.19.240.10"


def scenario(sync, nconns, nclients, log, scheduler="rr"):
    persistent = [f"198.19.{k}.10" for k in range(nclients)]
    line_srcs = [f"198.19.250.{1 + i % 50}" for i in range(nconns)]
    with SyncPair(prefix="xbf", xlb_main=xlb_main) as lab:
        lab.add_clients(persistent + sorted(set(line_srcs)) + [WARMUP])
        for i in (1, 2):
            lab.start_xlb(i, sync=sync, scheduler=scheduler)
        lab.start_keepalived(1, priority=150)
        lab.start_keepalived(2, priority=100)
        deadline = time.monotonic() + 15
        while lab.vip_holder() != 1:
            if time.monotonic() > deadline:
                raise RuntimeError("lb1 did not take the VIP")
            time.sleep(0.05)
        # The active balancer has served someone before: its rr positions are not the backup's.
        lab.ask_all([WARMUP])
        with lab.lines([WARMUP]) as warm:
            warm.ask()

        def synced():
            deadline = time.monotonic() + 30
            while not lab.holds(2, nconns, nclients + 1):  # and the warm-up client's template
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the backup did not load the synced state: master "
                                       f"{lab.call(1, 'status')['sync']}, backup {lab.call(2, 'status')['sync']}")
                time.sleep(0.1)
        res = failover(lab, line_srcs, persistent, wait_synced=synced if sync else None)
        res["sync"] = sync or "none"
        res["scheduler"] = scheduler
        if sync:
            res["backup_sync_counts"] = lab.call(2, "status")["sync"]["counts"]
        log(json.dumps(res))
        return res


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.failover", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connections", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=200, help="persistent clients, one per /24 (at most 240)")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)
    results = [scenario(sync, args.connections, min(args.clients, 240), log, sched)
               for _ in range(args.rounds) for sync, sched in (("both", "rr"), (None, "rr"), (None, "sh"))]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    print("| scheduler | sync | connections | broken | persistent clients | moved | VIP moved after (s) |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['scheduler']} | {r['sync']} | {r['connections']} | {r['broken']} | {r['clients']} | "
              f"{r['moved']} | {r['converge_s']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
