"""python -m bench.ab OTHER_BPF_DIR [--this BPF_DIR] [--quick] [--rounds N] [--cases NAME,...] [--json PATH]

A/B of two builds of xlb's data plane in one process (root): this checkout's bpf/ (A; or --this) and another
directory of the same files (B: e.g. `git archive <commit> bpf | tar -x -C /tmp/old`, then /tmp/old/bpf). Both
are compiled with the micro part's tables (1M connections per CPU; --quick: the lab's), given the same config,
and run through the side-by-side part's cases and method (bench/katran_peer.py) with B in Katran's place: the
same process and CPU, alternating order round by round, both tables aged the same way. Prints, per case, the
median of the per-round ratios B / A of raw ns (driven and repeat=1): below 1, B is cheaper. Two loads of the
same sources differ by ~5% driven and ~15% repeat=1 on a shared machine (docs/performance.md): run a candidate
in both orders. A figure, never asserted."""
import argparse
import contextlib
import json
import sys
from pathlib import Path

from xlb.dataplane import program as xprogram
from xlb.dataplane.apply import DataPlane

from . import katran_peer as K, lab as L, micro as M, unwind_on_sigterm


@contextlib.contextmanager
def bpf_dir(path):
    """Program() compiles from `path` instead of this checkout's bpf/ for the duration (None: unchanged)."""
    saved = xprogram.BPF_DIR
    xprogram.BPF_DIR = Path(path).resolve() if path else saved
    try:
        yield
    finally:
        xprogram.BPF_DIR = saved


class OtherBuild:
    """Build B, shaped as katran_peer.Peer: fd, lru_size, empty(table=None), memlock(), close()."""

    def __init__(self, lab, path):
        with bpf_dir(path):
            self.prog = xprogram.Program(cflags=xprogram.cflags_for(lab.tables), log=None)
        self.fd = self.prog.fd
        self.lru_size = lab.tables.conns // xprogram.possible_cpus()
        self.dp = DataPlane(self.prog, lab.tables)
        self.dp.apply(lab.config(M.BASE_TOML))

    def empty(self, table=None):
        t = self.prog["conns"] if table is None else table
        n = L.count(t)
        if n:
            t.items_delete_batch()
        return n

    def memlock(self):
        return 0

    def close(self):
        self.prog.close()


def _log(msg):
    print(msg, file=sys.stderr, flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("other", help="build B's bpf/ directory")
    ap.add_argument("--this", default="", help="build A's bpf/ directory (default: this checkout's)")
    ap.add_argument("--quick", action="store_true", help="the lab's table sizes and short runs (a smoke test)")
    ap.add_argument("--rounds", type=int, default=11)
    ap.add_argument("--cases", default="", help="comma-separated subset of bench/katran_peer.py's cases")
    ap.add_argument("--json", default="", help="also write the figures here")
    ap.add_argument("--prefix", default="xbab")
    args = ap.parse_args(argv)
    unwind_on_sigterm()
    wanted = {c for c in args.cases.split(",") if c}
    out = {}
    with bpf_dir(args.this), L.Lab(prefix=args.prefix, log=_log) as lab:
        with lab.tables_of(M.tables(lab, args.quick)):
            base, traffic = lab.baselines, lab.traffic
            fds = {"pass": L.xdp_fd(base, "xb_pass").fd, "xlb": lab.prog.fd}
            b = M._Bench(lab, traffic, fds, args.quick)
            other = OtherBuild(lab, args.other)
            old_cpus = L.pin_cpu(L.default_cpu())
            try:
                lab.dataplane(M.BASE_TOML)
                with L.in_netns(lab.lb):
                    s = K.SideBySide(b, other, args.quick)
                    s.rounds = args.rounds
                    s.age()
                    for case in K._cases():
                        if wanted and case.name not in wanted:
                            continue
                        if not case.flow_cache:
                            continue  # the TTL is set on A's settings only
                        c = s.measure(case)
                        out[case.name] = {"a_ns": c["xlb_ns"], "b_ns": c["katran_ns"],
                                          "b_over_a": round(1 / c["ratio_to_katran"], 3),
                                          "a_ns_cold": c["xlb_ns_cold"], "b_ns_cold": c["katran_ns_cold"],
                                          "b_over_a_cold": round(1 / c["ratio_to_katran_cold"], 3)}
                        print(f"{case.name}: A {c['xlb_ns']:.0f} ns, B {c['katran_ns']:.0f} ns driven, B/A "
                              f"{out[case.name]['b_over_a']:.3f}; repeat=1 A {c['xlb_ns_cold']:.0f}, "
                              f"B {c['katran_ns_cold']:.0f}, B/A {out[case.name]['b_over_a_cold']:.3f}", flush=True)
            finally:
                L.unpin(old_cpus)
                other.close()
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
