"""The `xlb` command: run the balancer on an interface, check a config, run the demo."""
import argparse
import os
import sys
import time
from pathlib import Path

from . import __version__
from .errors import XlbError, brief

DEFAULT_METRICS_PORT = 9842  # = xlb/observe/metrics.py DEFAULT_PORT (tests/test_metrics.py checks); the CLI imports lazily

EXAMPLES = """examples:
  xlb check /etc/xlb/xlb.toml
  xlb check --keepalived /etc/keepalived/keepalived.conf --marks /etc/sysconfig/iptables
  xlb run --iface eth0 --keepalived /etc/keepalived/keepalived.conf --marks marks.sh
  xlb run --iface eth0 --config /etc/xlb/xlb.toml
  xlb run --iface eth0 --config xlb.toml --xdp-mode generic --force
  xlb run --iface eth0 --iface eth1 --config nat.toml   # NAT: clients on eth0, reals (routed via xlb) on eth1
  kill -HUP $(pidof xlb)      # re-read the config, apply only the difference
  kill -USR1 $(pidof xlb)     # print the counters
  xlb run -i eth0 -c xlb.toml --metrics 127.0.0.1:9842   # Prometheus /metrics (see tools/prometheus.yml)
  xlb run -i eth0 -c xlb.toml --sync both --sync-iface eth1 --syncid 7   # IPVS-compatible state sync
  xlb top                     # live rates per service and real; q quits
  xlb trace 203.0.113.7 198.51.100.10:80       # which real would a new connection get, and why
  xlb decap --iface eth0 --gue-port 5555   # on a real server: strip IPIP/GRE/GUE (tunnel forwarding)
  xlb demo                    # a built-in topology in throwaway namespaces
  xlb list -n                 # what the running daemon balances (ipvsadm -L -n format)
  xlb ipvsadm -a -t 198.51.100.10:80 -r 198.18.0.11 -w 2   # ipvsadm's syntax, runtime edit
  xlb save > xlb.toml         # the running state as a config
  xlb clean --iface eth0      # after SIGTERM: unpin the maps (connections, templates, counters)
  xlb run -i eth0 -c xlb.toml --bird-socket /run/bird/bird.ctl --bird-include /etc/bird/xlb-vips.conf
  xlb drain                   # withdraw the VIPs from BGP, keep forwarding; `xlb drain --off` announces again
"""


def _config_source(parser, args, config_attr):
    """(path shown to the operator, load callable) from --config/FILE or --keepalived [--marks]."""
    path = getattr(args, config_attr)
    if args.marks and not args.keepalived:
        parser.error("--marks goes with --keepalived (the TOML config has its own [[mark]] rules)")
    if path and args.keepalived:
        parser.error("give either a TOML config or --keepalived, not both")
    if not path and not args.keepalived:
        parser.error("a TOML config or --keepalived FILE is required")
    if path:
        from .config import read as xread
        return path, lambda: xread.load(path)
    from .importers.keepalived import translate as keepalived
    return args.keepalived, lambda: keepalived.load(args.keepalived, args.marks)


def _cmd_check(args):
    path, load = _config_source(args.parser, args, "file")
    try:
        res = load()
        from .dataplane.apply import Capacity, fit
        fit(getattr(res, "config", res), Capacity.compiled())  # what `xlb run` would refuse to load
    except XlbError as exc:
        unsupported = getattr(exc, "only_unsupported", False)
        print(f"xlb: {'unsupported' if unsupported else 'error'}: {exc}", file=sys.stderr)
        return 3 if unsupported else 1
    except Exception as exc:  # noqa: BLE001  a file that breaks a reader (RecursionError...): one line, no traceback
        print(f"xlb: error: {path}: cannot be read as a config: {brief(exc)}", file=sys.stderr)
        return 1
    cfg = getattr(res, "config", res)
    for w in getattr(res, "warnings", ()):
        print(f"warning: {w}")
    nreals = sum(len(s.reals) for s in cfg.services)
    nchecks = sum(len(r.checks) for s in cfg.services if s.health for r in s.health.reals)
    extra = f", {nchecks} health checks" if nchecks else ""
    reported = len(getattr(res, "reported", ()))
    if reported:  # as keepalived -t exits non-zero for what it reports, even what it corrects and runs
        extra += (f"); keepalived -t reports {reported} problem{'s' if reported != 1 else ''} that keepalived and "
                  "xlb correct (warnings above")
    print(f"{cfg.source}: OK ({len(cfg.services)} services, {nreals} reals, {len(cfg.marks)} mark rules{extra})")
    return 4 if reported else 0


def daemon_log(msg):
    """A daemon log line: under journald (JOURNAL_STREAM set) as it is, journald stamps it; elsewhere with the UTC
    time in front of each line (a multi-line message, such as SIGUSR1's counters table, keeps its columns)."""
    if not os.environ.get("JOURNAL_STREAM"):
        stamp = time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())
        msg = "\n".join(f"{stamp} {line}" for line in str(msg).split("\n"))
    print(msg, flush=True)


def _cmd_run(args):
    from .ops.daemon import Daemon
    log = daemon_log
    path, load = _config_source(args.parser, args, "config")
    if args.metrics:
        from .observe.metrics import parse_listen
        parse_listen(args.metrics)  # a bad ADDR:PORT is said now, not after the program's compile
    warned = []

    def load_config():
        res = load()
        if not warned:  # an import's warnings once, at start
            warned.append(True)
            for w in getattr(res, "warnings", ()):
                log(f"xlb: warning: {w}")
        return getattr(res, "config", res)
    bgp = None
    if bool(args.bird_socket) != bool(args.bird_include):
        args.parser.error("--bird-socket and --bird-include go together (docs/scale-out.md)")
    if args.bird_include:
        from .ops.announce import Announcements
        bgp = Announcements(args.bird_include, args.bird_socket, log)
    d = Daemon(args.iface, path, xdp_mode=args.xdp_mode, force=args.force, log=log, socket_path=args.socket,
               load=load_config, metrics=args.metrics,
               pin_dir=args.pin_dir, fresh=args.fresh, bgp=bgp,
               sync=_sync_args(args.parser, args))
    d.start()
    return d.run()  # 1: the program was replaced or could not be attached again (docs/operations.md)


def _sync_args(parser, args):
    """`--sync MODE --sync-iface IF [--syncid N]` as the fields they set over the config's [sync] (its refresh
    stays); None: the config's [sync] applies as it is."""
    if args.sync is None:
        if args.sync_iface or args.syncid is not None:
            parser.error("--sync-iface and --syncid need --sync master|backup|both")
        return None
    if not args.sync_iface:
        parser.error("--sync needs --sync-iface IF (the interface the sync multicast goes over)")
    if args.syncid is not None and not 0 <= args.syncid <= 255:
        parser.error(f"--syncid must be 0..255, got {args.syncid}")
    return {"mode": args.sync, "iface": args.sync_iface, "syncid": args.syncid or 0}


def _cmd_status(args):
    import json
    from .ops import control
    res = control.call("status", path=args.socket)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"xlb pid {res['pid']} on {', '.join(res.get('ifaces', [res['iface']]))} ({res['xdp_mode']}), "
              f"config {res['config']}: "
              f"{res['summary']}")
        lost = ", ".join(f"{n} {cause}" for cause, n in res.get("program_lost", {}).items() if n)
        if not res.get("attached", True):
            print(f"NOT SERVING: its program {res['program_id']} is not on {', '.join(res.get('ifaces', [res['iface']]))} (the next sweep attaches "
                  "it again, or the daemon exits if another program replaced it)")
        elif lost:
            print(f"program {res['program_id']} attached; found taken off or replaced before: {lost}")
        if res.get("bgp"):
            print(_bgp_line(res["bgp"]))
        if res.get("sync"):
            sy = res["sync"]
            counts = {**{f"sent_{k}": n for k, n in sy.get("sent", {}).items()},
                      **{f"received_{k}": n for k, n in sy.get("received", {}).items()}, **sy["counts"]}
            print(f"state sync {sy['mode']} on {sy['iface']}, syncid {sy['syncid']}: "
                  + (", ".join(f"{k} {n}" for k, n in sorted(counts.items())) or "nothing yet"))
    return 0


def _bgp_line(b):
    """One line on what a daemon announces through BIRD (xlb/ops/announce.py status)."""
    shown = "unknown" if b["announced"] is None else (", ".join(b["announced"]) or "nothing")
    line = f"bgp ({b['bird_socket']}): announcing {shown}"
    if b["draining"]:
        line += "; DRAINING (`xlb drain --off` announces again)"
    if not b["in_step"]:
        target = "nothing" if b["draining"] else (", ".join(b["wanted"]) or "nothing")
        line += f"; to announce {target}, BIRD not in step: {b['error'] or 'in progress'}"
    return line


def _cmd_drain(args):
    import json
    from .ops import control
    res = control.call("drain", path=args.socket, timeout=60, off=args.off)
    print(json.dumps(res, indent=2) if args.json else _bgp_line(res))
    return 0 if res["in_step"] else 1


def _cmd_trace(args):
    import json
    from .ops import control
    from .observe.trace import render
    res = control.call("trace", path=args.socket, src=args.src, dst=args.dst, proto=args.proto)
    print(json.dumps(res, indent=2) if args.json else render(res))
    return 0


def _cmd_top(args):
    from .ops import control
    from .observe.top import run
    if args.interval <= 0 or (args.iterations is not None and args.iterations < 1):
        print("xlb: error: --interval must be positive and --iterations at least 1", file=sys.stderr)
        return 2
    iterations = 1 if args.once else args.iterations
    return run(lambda: control.call("stats", path=args.socket), interval=args.interval, iterations=iterations)


def _cmd_clean(args):
    from .dataplane import bpffs
    from .dataplane import pin
    root = bpffs.root()
    if args.pin_dir:
        dirs = [args.pin_dir]
    elif args.iface:
        dirs = [pin.default_pin_dir(args.iface)]
    else:  # every interface's of this network namespace (on the host: not the named namespaces' netns-NAME/)
        top = pin.default_pin_dir("-").parent
        dirs = sorted(p for p in top.iterdir() if p.is_dir() and not p.name.startswith("netns-")) \
            if top.is_dir() else []
        if not dirs:
            print(f"xlb: nothing is pinned under {root.show(top)}")
            return 0
    failed = 0
    for d in dirs:
        if not Path(d).is_dir():
            print(f"xlb: nothing is pinned in {root.show(d)}")
            continue
        try:
            n = pin.clean(d)
            print(f"xlb: unpinned {n} maps and removed {root.show(d)}")
        except XlbError as exc:
            print(f"xlb: error: {exc}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


def _cmd_decap(args):
    from .ops import decap
    return decap.run(args.iface, args.gue_port, decap.bare_ports_of(args), xdp_mode=args.xdp_mode, force=args.force,
                     addresses=args.address, log=lambda msg: print(msg, flush=True))


def _cmd_demo(args):
    from .lab.demo import main as demo_main
    return demo_main(main)


def _import_args(p):
    p.add_argument("--keepalived", metavar="FILE",
                   help="read keepalived.conf instead of a TOML config (virtual_server parts; docs/import.md)")
    p.add_argument("--marks", metavar="FILE",
                   help="with --keepalived: iptables -t mangle ... -j MARK rules (or iptables-save) to translate")


def build_parser():
    p = argparse.ArgumentParser(prog="xlb", description="XDP layer-4 load balancer with LVS semantics.",
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"xlb {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True)

    run = sub.add_parser("run", help="attach to an interface and balance until SIGINT/SIGTERM",
                         epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("--iface", "-i", required=True, action="append",
                     help="interface to attach XDP to; again for more (one daemon, one set of maps: e.g. NAT's "
                          "clients' and reals' sides)")
    run.add_argument("--config", "-c", help="TOML config file (see `xlb check`)")
    _import_args(run)
    run.add_argument("--xdp-mode", choices=("native", "generic"), default="native",
                     help="native (driver) XDP, or generic (skb) mode for drivers without it")
    run.add_argument("--force", action="store_true", help="replace an XDP program already on the interface")
    run.add_argument("--socket", help="control socket (default /run/xlb/IFACE.sock)")
    run.add_argument("--metrics", nargs="?", const=f"127.0.0.1:{DEFAULT_METRICS_PORT}", metavar="[ADDR:]PORT",
                     help="serve Prometheus /metrics (default off; a bare port or no value binds 127.0.0.1, "
                          f"default port {DEFAULT_METRICS_PORT})")
    run.add_argument("--pin-dir", help="where the maps are pinned (default /sys/fs/bpf/xlb/IFACE; in a named "
                                       "network namespace /sys/fs/bpf/xlb/netns-NAME/IFACE)")
    run.add_argument("--fresh", action="store_true",
                     help="discard the pinned maps (connections, templates, counters) instead of adopting them")
    run.add_argument("--bird-socket", metavar="PATH", help="announce the VIPs that can be served through this "
                     "BIRD's control socket (e.g. /run/bird/bird.ctl); with --bird-include")
    run.add_argument("--bird-include", metavar="FILE", help="the file xlb writes the VIP routes to, included by "
                     "bird.conf (docs/scale-out.md); the two override the config's [bgp]")
    run.add_argument("--sync", choices=("master", "backup", "both"),
                     help="IPVS-compatible state sync: send new connections and templates (master), load the "
                          "ones received (backup), or both (overrides the config's [sync])")
    run.add_argument("--sync-iface", metavar="IF", help="the interface state sync multicasts over (to the config's "
                     "[sync] mcast_group, default 224.0.0.81:8848)")
    run.add_argument("--syncid", type=int, metavar="N", help="sync id 0..255 (default 0; a backup with 0 takes all)")
    run.set_defaults(func=_cmd_run, parser=run)

    chk = sub.add_parser("check", help="validate a config without root; non-zero exit names the bad field")
    chk.add_argument("file", nargs="?", help="TOML config file")
    _import_args(chk)
    chk.set_defaults(func=_cmd_check, parser=chk)

    st = sub.add_parser("status", help="ask the running daemon what it runs")
    st.add_argument("--socket", help="control socket of the daemon (default: the only one under /run/xlb/)")
    st.add_argument("--json", action="store_true", help="print JSON")
    st.set_defaults(func=_cmd_status)

    for name, off in (("drain", False), ("undrain", True)):
        dr = sub.add_parser(name, help="withdraw every VIP from BGP, keep forwarding existing flows" if not off else
                            "announce the VIPs again after `xlb drain`", epilog="examples:\n  xlb drain\n"
                            "  xlb drain --off     # the same as xlb undrain",
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        if not off:
            dr.add_argument("--off", action="store_true", help="end the drain: announce the VIPs again")
        dr.add_argument("--socket", help="control socket of the daemon (default: the only one under /run/xlb/)")
        dr.add_argument("--json", action="store_true", help="print JSON")
        dr.set_defaults(func=_cmd_drain, off=off)

    tr = sub.add_parser("trace", help="ask the loaded program what it would do with a new connection; "
                        "changes nothing", epilog="examples:\n  xlb trace 203.0.113.7 198.51.100.10:80\n"
                        "  xlb trace 203.0.113.7:40000 198.51.100.10:53 --proto udp\n"
                        "  xlb trace [2001:db8::7] [2001:db8:100::10]:443 --json",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    tr.add_argument("src", metavar="SRC[:PORT]", help="client address; without a port, a port with no connection")
    tr.add_argument("dst", metavar="DST:PORT", help="destination (VIP) and port")
    tr.add_argument("--proto", choices=("tcp", "udp"), default="tcp", help="default tcp (a SYN)")
    tr.add_argument("--socket", help="control socket of the daemon (default: the only one under /run/xlb/)")
    tr.add_argument("--json", action="store_true", help="print JSON")
    tr.set_defaults(func=_cmd_trace)

    top = sub.add_parser("top", help="live rates per service and real, refreshed like top (q quits)")
    top.add_argument("--interval", "-d", type=float, default=1.0, help="seconds between refreshes (default 1)")
    top.add_argument("--once", action="store_true", help="print one frame (rates over one interval) and exit")
    top.add_argument("--iterations", "-n", type=int, help="print N frames one after another and exit")
    top.add_argument("--socket", help="control socket of the daemon (default: the only one under /run/xlb/)")
    top.set_defaults(func=_cmd_top)

    from .admincli import add_parsers as add_admin_parsers
    add_admin_parsers(sub)

    cl = sub.add_parser("clean", help="unpin the maps (connections, templates, counters) a stopped daemon left",
                        epilog="examples:\n  xlb clean --iface eth0\n  xlb clean        # every interface's in this "
                        "network namespace", formatter_class=argparse.RawDescriptionHelpFormatter)
    cl.add_argument("--iface", "-i", help="the interface whose maps to unpin (default: every interface's)")
    cl.add_argument("--pin-dir", help="the directory `xlb run --pin-dir` used")
    cl.set_defaults(func=_cmd_clean)

    from .ops.decap import add_parser as add_decap_parser
    add_decap_parser(sub, _cmd_decap)

    demo = sub.add_parser("demo", help="build a demo topology in namespaces, balance traffic, tear it down")
    demo.set_defaults(func=_cmd_demo)
    return p


def _ipvsadm_main(argv):
    """`xlb ipvsadm [--socket PATH] ARGS`: ipvsadm's options are not argparse's, so they pass through untouched."""
    from .admincli import run_ipvsadm
    sock = None
    if argv[:1] == ["--socket"] and len(argv) > 1:
        sock, argv = argv[1], argv[2:]
    elif argv and argv[0].startswith("--socket="):
        sock, argv = argv[0].split("=", 1)[1], argv[1:]
    return run_ipvsadm(argv, socket=sock)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv[:1] == ["ipvsadm"]:
            return _ipvsadm_main(argv[1:])
    except XlbError as exc:
        print(f"xlb: error: {exc}", file=sys.stderr)
        return 1
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except XlbError as exc:
        print(f"xlb: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
