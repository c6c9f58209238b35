"""The `xlb` command: run the balancer on an interface, check a config, run the demo."""
import argparse
import sys

from . import __version__
from .errors import XlbError

EXAMPLES = """examples:
  xlb check /etc/xlb/xlb.toml
  xlb check --keepalived /etc/keepalived/keepalived.conf --marks /etc/sysconfig/iptables
  xlb run --iface eth0 --keepalived /etc/keepalived/keepalived.conf --marks marks.sh
  xlb run --iface eth0 --config /etc/xlb/xlb.toml
  xlb run --iface eth0 --config xlb.toml --xdp-mode generic --force
  kill -HUP $(pidof xlb)      # re-read the config, apply only the difference
  kill -USR1 $(pidof xlb)     # print the counters
  xlb demo                    # a built-in topology in throwaway namespaces
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
        from . import config as xconfig
        return path, lambda: xconfig.load(path)
    from . import keepalived
    return args.keepalived, lambda: keepalived.load(args.keepalived, args.marks)


def _cmd_check(args):
    _, load = _config_source(args.parser, args, "file")
    try:
        res = load()
    except XlbError as exc:
        unsupported = getattr(exc, "only_unsupported", False)
        print(f"xlb: {'unsupported' if unsupported else 'error'}: {exc}", file=sys.stderr)
        return 3 if unsupported else 1
    cfg = getattr(res, "config", res)
    for w in getattr(res, "warnings", ()):
        print(f"warning: {w}")
    nreals = sum(len(s.reals) for s in cfg.services)
    extra = ""
    if hasattr(res, "health_checks"):
        extra = f", {len(res.health_checks)} health checks kept"
    print(f"{cfg.source}: OK ({len(cfg.services)} services, {nreals} reals, {len(cfg.marks)} mark rules{extra})")
    return 0


def _cmd_run(args):
    from .daemon import Daemon
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    path, load = _config_source(args.parser, args, "config")
    warned = []

    def load_config():
        res = load()
        if not warned:  # an import's warnings once, at start
            warned.append(True)
            for w in getattr(res, "warnings", ()):
                log(f"xlb: warning: {w}")
        return getattr(res, "config", res)
    d = Daemon(args.iface, path, xdp_mode=args.xdp_mode, force=args.force, log=log, socket_path=args.socket,
               load=load_config)
    d.start()
    d.run()
    return 0


def _cmd_status(args):
    import json
    from . import control
    res = control.call("status", path=args.socket)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"xlb pid {res['pid']} on {res['iface']} ({res['xdp_mode']}), config {res['config']}: "
              f"{res['summary']}")
    return 0


def _cmd_demo(args):
    from .demo import main as demo_main
    return demo_main()


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
    run.add_argument("--iface", "-i", required=True, help="interface to attach XDP to")
    run.add_argument("--config", "-c", help="TOML config file (see `xlb check`)")
    _import_args(run)
    run.add_argument("--xdp-mode", choices=("native", "generic"), default="native",
                     help="native (driver) XDP, or generic (skb) mode for drivers without it")
    run.add_argument("--force", action="store_true", help="replace an XDP program already on the interface")
    run.add_argument("--socket", help="control socket (default /run/xlb/IFACE.sock)")
    run.set_defaults(func=_cmd_run, parser=run)

    chk = sub.add_parser("check", help="validate a config without root; non-zero exit names the bad field")
    chk.add_argument("file", nargs="?", help="TOML config file")
    _import_args(chk)
    chk.set_defaults(func=_cmd_check, parser=chk)

    st = sub.add_parser("status", help="ask the running daemon what it runs")
    st.add_argument("--socket", help="control socket of the daemon (default: the only one under /run/xlb/)")
    st.add_argument("--json", action="store_true", help="print JSON")
    st.set_defaults(func=_cmd_status)

    demo = sub.add_parser("demo", help="build a demo topology in namespaces, balance traffic, tear it down")
    demo.set_defaults(func=_cmd_demo)
    return p


def main(argv=None):
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
