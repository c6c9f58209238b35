"""python -m bench [--quick] [--json PATH] [--plots DIR] [--parts micro,forward,control,flood]

Runs as root (namespaces, XDP). Writes the JSON results, PNG plots and summary.md (also printed)."""
import argparse
import sys
import time

from . import control, flood, forward, lab as L, micro, report, unwind_on_sigterm

PARTS = ("micro", "forward", "control", "flood")


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short runs (CI: well under a minute)")
    ap.add_argument("--json", default="build/bench/results.json", help="where to write the results")
    ap.add_argument("--plots", default="build/bench", help="directory for the PNG plots and summary.md")
    ap.add_argument("--parts", default=",".join(PARTS), help="comma-separated subset of " + ", ".join(PARTS))
    ap.add_argument("--prefix", default="xb", help="namespace prefix (unique per concurrent run)")
    args = ap.parse_args(argv)
    parts = [p for p in args.parts.split(",") if p]
    unknown = set(parts) - set(PARTS)
    if unknown:
        ap.error(f"unknown part(s): {', '.join(sorted(unknown))}")
    unwind_on_sigterm()
    t0 = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t0:5.1f}s] {msg}", file=sys.stderr, flush=True)

    result = {"machine": report.machine(args.quick), "micro": {}, "forward": {}, "control": {}, "notes": {}}
    with L.Lab(prefix=args.prefix, log=log) as lab:
        if "micro" in parts:
            result["micro"], result["notes"]["micro"], result["katran"] = micro.run(lab, args.quick, log)
        if "forward" in parts:
            result["forward"], result["notes"]["forward"] = forward.run(lab, args.quick, log)
        if "control" in parts:
            result["control"], result["memory"] = control.run(lab, args.quick, log)
        if "flood" in parts:
            result["flood"] = flood.run(lab, args.quick, log)
    result["machine"]["seconds"] = round(time.perf_counter() - t0, 1)
    report.write_json(result, args.json)
    text = report.summary(result)
    written = report.plots(result, args.plots)
    (written[0].parent if written else __import__("pathlib").Path(args.plots)).mkdir(parents=True, exist_ok=True)
    summary_path = __import__("pathlib").Path(args.plots) / "summary.md"
    summary_path.write_text(text)
    print(text)
    log(f"bench: wrote {args.json}, {summary_path}" + "".join(f", {p}" for p in written)
        + f" in {result['machine']['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
