"""The runtime-administration subcommands of `xlb`: service, real, mark, list, zero, set-timeouts, save, ipvsadm.

Each is a client of the running daemon's control socket (xlb/ops/control.py); without a daemon it fails with a clear
message. Options are ipvsadm's names (-t/-u/-f, -s, -p, -M, -r, -w, -x, -y, -g).
"""
import json
import sys

from .ops import admin
from .ops.parse import parse_ports, parse_service, split_addr_port
from .ops import health as ophealth
from .ops import control
from .ops import ipvsadm, ipvslist
from .errors import ConfigError

EXAMPLES = """examples:
  xlb service add -t 198.51.100.10:80 -s wlc -p 300 -M 255.255.255.0
  xlb real add -t 198.51.100.10:80 -r 198.18.0.11 -w 2
  xlb real edit -t 198.51.100.10:80 -r 198.18.0.11 -w 0        # quiescent
  xlb mark add --mark 1 --proto tcp --dst 198.51.100.10/32 --ports 80,443
  xlb service add -f 1 -s rr -p
  xlb list -n --stats
  xlb save > /etc/xlb/xlb.toml
  xlb ipvsadm -A -t 198.51.100.10:80 -s rr && xlb ipvsadm -L -n
"""


def _socket_arg(p):
    p.add_argument("--socket", help="control socket of the daemon (default: the only one under /run/xlb/)")


def _service_args(p, required=True):
    g = p.add_mutually_exclusive_group(required=required)
    g.add_argument("-t", "--tcp-service", metavar="VIP:PORT", help="a TCP service")
    g.add_argument("-u", "--udp-service", metavar="VIP:PORT", help="a UDP service")
    g.add_argument("-f", "--fwmark-service", metavar="MARK", help="a firewall-mark service")
    p.add_argument("-6", "--ipv6", action="store_true", help="with -f: the IPv6 service of the mark")


def _ident(args, source):
    for kind, value in (("tcp", args.tcp_service), ("udp", args.udp_service), ("fwmark", args.fwmark_service)):
        if value is not None:
            return parse_service(kind, value, ipv6=args.ipv6, source=source)
    return None


def _edit(args, ops, source):
    res = control.call("edit", path=args.socket, ops=ops, source=source)
    print(f"xlb: done; running {res['summary']}")
    return 0


def _method(args):
    return {"g": "dr", "m": "nat", "i": "tun"}.get(args.method) if args.method else None


def _method_args(parser):
    m = parser.add_mutually_exclusive_group()
    for flag, name, what in (("-g", "gatewaying", "direct routing (the default)"),
                             ("-m", "masquerading", "NAT: the reals route their replies via xlb"),
                             ("-i", "ipip", "tunnel, IPIP (GUE and GRE: the config's tunnel_* keys or "
                                                      "`xlb ipvsadm -i --tun-type ...`)")):
        m.add_argument(flag, f"--{name}", dest="method", action="store_const", const=flag[1],
                       help=f"forwarding method: {what}")


def _cmd_service(args):
    src = f"xlb service {args.action}"
    op = {"op": f"service-{args.action}", "service": _ident(args, src)}
    if args.action != "del":
        op.update(scheduler=args.scheduler, netmask=args.netmask, method=_method(args),
                  persistence=False if args.no_persistence else args.persistent,
                  sched_flags=args.sched_flags.split(",") if args.sched_flags is not None else None,
                  ops=args.ops)
    return _edit(args, [op], src)


def _cmd_real(args):
    src = f"xlb real {args.action}"
    ident = _ident(args, src)
    addr, port = split_addr_port(args.real_server, ident.get("proto", "tcp"), "-r", src)
    op = {"op": f"real-{args.action}", "service": ident, "address": str(addr), "port": port}
    if args.action != "del":
        op.update(weight=args.weight, uthreshold=args.u_threshold, lthreshold=args.l_threshold,
                  method=_method(args))
    return _edit(args, [op], src)


def _cmd_mark(args):
    src = f"xlb mark {args.action}"
    op = {"op": f"mark-{args.action}", "mark": args.mark, "proto": args.proto, "dst": args.dst,
          "ports": parse_ports(args.ports, src) if args.ports else None}
    if args.action == "add" and not args.dst:
        raise ConfigError(src, "--dst", "give the destination prefix: --dst 198.51.100.10/32")
    return _edit(args, [op], src)


def _cmd_list(args):
    ident = _ident(args, "xlb list")
    if args.health:
        status = control.call("health", path=args.socket)
        print(json.dumps(status, indent=2) if args.json else ophealth.render(status), end="\n" if args.json else "")
        return 0
    if args.conns:
        entries = control.call("conns", path=args.socket)
        print(json.dumps(entries, indent=2) if args.json else ipvslist.render_conns(entries), end="\n" if args.json else "")
        return 0
    snap = control.call("list", path=args.socket)
    if args.json:
        if ident:
            snap["services"] = [s for s in snap["services"] if ipvslist.matches(s, ident)]
        print(json.dumps(snap, indent=2))
        return 0
    fmt = {k for k, on in (("stats", args.stats), ("rate", args.rate), ("persistent-conn", args.persist),
                           ("thresholds", args.thresholds), ("exact", args.exact)) if on}
    sys.stdout.write(ipvslist.render_list(snap, fmt, ident))
    return 0


def _cmd_zero(args):
    res = control.call("zero", path=args.socket, service=_ident(args, "xlb zero"))
    print(f"xlb: zeroed the counters of {res['zeroed']} services")
    return 0


def _cmd_set_timeouts(args):
    return _edit(args, [{"op": "timeouts", "tcp": args.tcp, "tcpfin": args.tcpfin, "udp": args.udp}],
                 "xlb set-timeouts")


def _cmd_save(args):
    sys.stdout.write(control.call("save", path=args.socket))
    return 0


def run_ipvsadm(argv, socket=None, stdin=None, out=None):
    """`xlb ipvsadm ARGS`: one ipvsadm command against the daemon; returns the exit code."""
    out = out or sys.stdout
    req = ipvsadm.parse(argv)
    if req.command == "help":
        out.write(IPVSADM_HELP)
        return 0
    if req.command == "restore":
        ops = ipvsadm.parse_restore((stdin or sys.stdin).read())
        control.call("edit", path=socket, ops=ops, source="ipvsadm -R")
        return 0
    if req.ops:
        control.call("edit", path=socket, ops=req.ops, source="ipvsadm")
        return 0
    if req.command == "zero":
        control.call("zero", path=socket, service=req.service, source="ipvsadm")
        return 0
    if req.command == "save":
        out.write(ipvslist.render_save(control.call("list", path=socket)))
        return 0
    if "connection" in req.fmt:
        out.write(ipvslist.render_conns(control.call("conns", path=socket)))
        return 0
    out.write(ipvslist.render_list(control.call("list", path=socket), req.fmt, req.service))
    return 0


IPVSADM_HELP = """xlb ipvsadm: ipvsadm's command line against the running xlb.
  -A|-E -t|-u|-f service [-s scheduler] [-p [timeout]] [-M netmask] [-b sched-flags] [-o]
  -D -t|-u|-f service
  -C
  -R < rules              (as -S writes them; applied all or nothing)
  -S [-n]
  -a|-e -t|-u|-f service -r server-address [-g] [-w weight] [-x upper-threshold] [-y lower-threshold]
  -d -t|-u|-f service -r server-address
  -L|-l [-t|-u|-f service] [-n] [-c] [--stats|--rate|--thresholds|--persistent-conn] [--exact] [--timeout]
  -Z [-t|-u|-f service]
  --set tcp tcpfin udp
Forwarding is direct routing (-g); -m and -i are refused. Addresses are always numeric.
"""


def _cmd_ipvsadm(args):
    return run_ipvsadm(args.args, socket=args.socket)


def add_parsers(sub):
    """Register the subcommands on the `xlb` parser's subparsers."""
    import argparse
    fmt = argparse.RawDescriptionHelpFormatter

    svc = sub.add_parser("service", help="add, edit or delete a virtual service of the running daemon",
                         epilog=EXAMPLES, formatter_class=fmt)
    svc.add_argument("action", choices=("add", "edit", "del"))
    _service_args(svc)
    svc.add_argument("-s", "--scheduler", help="rr wrr lc wlc sed nq fo ovf sh dh mh (add: default wlc)")
    svc.add_argument("-p", "--persistent", nargs="?", type=int, const=admin.DEFAULT_PERSISTENCE, metavar="TIMEOUT",
                     help=f"persistence in seconds ({admin.DEFAULT_PERSISTENCE} without a value, as ipvsadm)")
    svc.add_argument("--no-persistence", action="store_true", help="edit: make the service not persistent")
    svc.add_argument("-M", "--netmask", help="persistence netmask (IPv4 mask, or IPv6 prefix length)")
    svc.add_argument("-b", "--sched-flags", help="scheduler flags, e.g. sh-port,sh-fallback")
    svc.add_argument("-o", "--ops", action="store_true", default=None,
                     help="one-packet scheduling (UDP): each datagram placed alone, no connection entry")
    svc.add_argument("--no-ops", dest="ops", action="store_false", help="edit: turn one-packet scheduling off")
    _method_args(svc)
    _socket_arg(svc)
    svc.set_defaults(func=_cmd_service)

    real = sub.add_parser("real", help="add, edit or delete a real server of a service", epilog=EXAMPLES,
                          formatter_class=fmt)
    real.add_argument("action", choices=("add", "edit", "del"))
    _service_args(real)
    real.add_argument("-r", "--real-server", required=True, metavar="ADDR[:PORT]")
    real.add_argument("-w", "--weight", type=int, help="0..65535 (add: default 1; 0 = quiescent)")
    real.add_argument("-x", "--u-threshold", type=int, help="upper connection threshold (0 = none)")
    real.add_argument("-y", "--l-threshold", type=int, help="lower connection threshold")
    _method_args(real)
    _socket_arg(real)
    real.set_defaults(func=_cmd_real)

    mark = sub.add_parser("mark", help="add or delete a firewall-mark rule (xlb's iptables -j MARK)",
                          epilog=EXAMPLES, formatter_class=fmt)
    mark.add_argument("action", choices=("add", "del"))
    mark.add_argument("--mark", type=int, required=True)
    mark.add_argument("--proto", choices=("tcp", "udp", "any"), help="add: default any")
    mark.add_argument("--dst", metavar="PREFIX")
    mark.add_argument("--ports", metavar="80,443,1000-2000", help="omitted = every port")
    _socket_arg(mark)
    mark.set_defaults(func=_cmd_mark)

    ls = sub.add_parser("list", help="list services and reals (ipvsadm -L -n formats)", epilog=EXAMPLES,
                        formatter_class=fmt)
    _service_args(ls, required=False)
    ls.add_argument("-n", "--numeric", action="store_true", help="accepted; addresses are always numeric")
    g = ls.add_mutually_exclusive_group()
    g.add_argument("--stats", action="store_true", help="counters")
    g.add_argument("--rate", action="store_true", help="rates (2 s estimator, as IPVS)")
    g.add_argument("--conns", "-c", action="store_true", help="connections and persistence templates")
    g.add_argument("--persist", action="store_true", help="persistence templates per real")
    g.add_argument("--health", action="store_true", help="health checks: every real's checkers, state, last result")
    g.add_argument("--thresholds", action="store_true", help="connection thresholds")
    ls.add_argument("--exact", action="store_true", help="exact numbers (no K/M/G)")
    ls.add_argument("--json", action="store_true", help="print the daemon's JSON")
    _socket_arg(ls)
    ls.set_defaults(func=_cmd_list)

    z = sub.add_parser("zero", help="zero the counters of a service, or of all")
    _service_args(z, required=False)
    _socket_arg(z)
    z.set_defaults(func=_cmd_zero)

    st = sub.add_parser("set-timeouts", help="connection timeouts: TCP TCPFIN UDP seconds (0 = unchanged)")
    for name in ("tcp", "tcpfin", "udp"):
        st.add_argument(name, type=int)
    _socket_arg(st)
    st.set_defaults(func=_cmd_set_timeouts)

    sv = sub.add_parser("save", help="print the running config as TOML for `xlb run --config`")
    _socket_arg(sv)
    sv.set_defaults(func=_cmd_save)

    ip = sub.add_parser("ipvsadm", help="ipvsadm's own syntax against the running daemon",
                        description=IPVSADM_HELP, formatter_class=fmt)
    _socket_arg(ip)
    ip.add_argument("args", nargs=argparse.REMAINDER, help="ipvsadm arguments, e.g. -L -n")
    ip.set_defaults(func=_cmd_ipvsadm)
