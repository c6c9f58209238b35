"""`xlb ipvsadm ARGS...`: ipvsadm's own command line, and listings in ipvsadm's formats.

Pure (tests/test_ipvsadm.py): :func:`parse` turns an argv into a :class:`Request` (operations for xlb/ops/admin.py,
or a listing to print), and the ``render_*`` functions print the daemon's listing snapshot exactly as ipvsadm
prints the kernel's (its print_title, print_service_entry, print_conn and print_largenum formats).

What differs from ipvsadm, and why:
- Addresses are always numeric (``-n`` is accepted and implied): xlb resolves no names.
- The forwarding method is a property of the service in xlb (IPVS's is a real's): ``-g``, ``-m`` or ``-i``
  (with --tun-type/--tun-port/--tun-*csum, xlb/ops/tunopts.py) on the first ``-a`` of a service sets it (as does
  ``-A ... -m``), and every later real must agree.
- A real's port under direct routing is the service's (DR cannot change ports): ``-r RIP:OTHERPORT`` is refused
  on a port service; on a firewall-mark or port-zero service the port is ignored, as it is for IPVS DR. Under
  NAT (``-m``) the real's port is its own: VIP:80 may go to RIP:8080.
- OutPkts/OutBytes count NAT services' replies; they are 0 under DR, as under IPVS: replies bypass the balancer.
- ``-S`` writes one-packet scheduling as ``-o`` (ipvsadm writes `` ops``, which its own ``-R`` cannot read back);
  ``-o`` on a TCP service is refused (IPVS keeps the flag and ignores it).
- The first line of a listing keeps ipvsadm's shape for scripts that parse it; ``size`` is the connection table.
"""
from __future__ import annotations

import ipaddress
import os
import shlex
from dataclasses import dataclass, field

from . import admin
from .parse import PROTO_OPTION, ident_name, ident_option, parse_service, split_addr_port
from . import tunopts
from ..errors import ConfigError

SOURCE = "ipvsadm"
IPVS_VERSION = "1.2.1"

# Long options and the short option each stands for ("" = long only).
_LONG = {"add-service": "A", "edit-service": "E", "delete-service": "D", "clear": "C", "restore": "R",
         "save": "S", "add-server": "a", "edit-server": "e", "delete-server": "d", "list": "L", "zero": "Z",
         "tcp-service": "t", "udp-service": "u", "fwmark-service": "f", "scheduler": "s", "persistent": "p",
         "netmask": "M", "real-server": "r", "gatewaying": "g", "ipip": "i", "masquerading": "m", "weight": "w",
         "u-threshold": "x", "l-threshold": "y", "connection": "c", "numeric": "n", "ipv6": "6",
         "sched-flags": "b", "ops": "o", "help": "h", "set": "", "timeout": "", "stats": "", "rate": "", "thresholds": "",
         "persistent-conn": "", "exact": "", "sort": "", "nosort": "", "sctp-service": "", "pe": "",
         **dict.fromkeys(tunopts.LONG, "")}
_COMMANDS = {"A": "add-service", "E": "edit-service", "D": "delete-service", "C": "clear", "R": "restore",
             "S": "save", "a": "add-server", "e": "edit-server", "d": "delete-server", "L": "list", "l": "list",
             "Z": "zero", "set": "set", "h": "help"}
_WITH_ARG = set("tufsMrwxyb") | {"sctp-service", "pe"}
_NOT_YET = {"start-daemon", "stop-daemon", "daemon", "mcast-interface", "syncid"}


@dataclass
class Request:
    """What an ipvsadm command line asks for."""

    command: str                      # add-service ... list, zero, save, restore, set, help
    ops: list = field(default_factory=list)
    service: dict | None = None       # -t/-u/-f given
    fmt: set = field(default_factory=set)   # stats, rate, thresholds, persistent-conn, exact, connection, timeout


def _fail(opt, msg):
    raise ConfigError(SOURCE, opt, msg)


def _tokens(argv):
    """(option, value-or-None) pairs in order; bundled short options (-Ln, -w3, -srr) split as getopt does."""
    out = []
    i = 0
    argv = list(argv)
    while i < len(argv):
        a = argv[i]
        i += 1
        if a.startswith("--"):
            name, eq, val = a[2:].partition("=")
            if name in _NOT_YET:
                _fail(a, f"--{name} is not supported by xlb (no IPVS sync daemon or one-packet scheduling)")
            if name not in _LONG:
                _fail(a, f"unknown option {a}")
            short = _LONG[name] or name
            takes = short in _WITH_ARG or name in tunopts.WITH_ARG
            if name == "set":
                if len(argv) - i < 3:
                    _fail("--set", "--set takes three timeouts: TCP TCPFIN UDP (seconds; 0 = unchanged)")
                out.append(("set", argv[i:i + 3]))
                i += 3
                continue
            if short == "p":
                if eq:
                    out.append(("p", val))
                elif i < len(argv) and argv[i].isdigit():
                    out.append(("p", argv[i]))
                    i += 1
                else:
                    out.append(("p", None))
                continue
            if takes and not eq:
                if i >= len(argv):
                    _fail(a, f"{a} needs a value")
                val = argv[i]
                i += 1
            out.append((short, val if takes else None))
            continue
        if a.startswith("-") and len(a) > 1:
            j = 1
            while j < len(a):
                c = a[j]
                j += 1
                if c in _NOT_YET:
                    _fail(f"-{c}", f"-{c} is not supported by xlb")
                if c == "p":
                    rest = a[j:]
                    if rest.isdigit():
                        out.append(("p", rest))
                    elif not rest and i < len(argv) and argv[i].isdigit():
                        out.append(("p", argv[i]))
                        i += 1
                    else:
                        out.append(("p", None))
                        if rest:
                            continue
                    break
                if c in _WITH_ARG:
                    val = a[j:]
                    if not val:
                        if i >= len(argv):
                            _fail(f"-{c}", f"-{c} needs a value")
                        val = argv[i]
                        i += 1
                    out.append((c, val))
                    break
                if c not in _COMMANDS and c not in "gimcn6o":
                    _fail(f"-{c}", f"unknown option -{c}")
                out.append((c, None))
            continue
        _fail(a, f"unexpected argument {a!r}")
    return out


def parse(argv) -> Request:
    """An ipvsadm command line as a Request; ConfigError (source "ipvsadm", where = the option) if malformed."""
    command = None
    opts = {}
    fmt = set()
    for opt, val in _tokens(argv):
        if opt in _COMMANDS:
            cmd = _COMMANDS[opt]
            if command and command != cmd:
                _fail(f"-{opt}", f"two commands given ({command} and {cmd}); give one")
            command = cmd
            if opt == "set":
                opts["set"] = val
            continue
        if opt in ("stats", "rate", "thresholds", "persistent-conn", "exact", "timeout"):
            fmt.add(opt)
            continue
        if opt == "c":
            fmt.add("connection")
            continue
        if opt in ("n", "sort", "nosort"):
            continue
        if opt in opts and opt not in "gim":
            _fail(f"-{opt}", f"-{opt} given twice")
        opts[opt] = val
    if command is None:
        if fmt & {"connection", "timeout"} or not opts:
            command = "list"
        else:
            _fail("", "no command given: one of -A -E -D -C -a -e -d -L -Z -S -R --set")
    _one_listing(fmt)
    req = Request(command=command, fmt=fmt)
    svc_opts = [o for o in ("t", "u", "f", "sctp-service") if o in opts]
    if len(svc_opts) > 1:
        _fail(f"-{svc_opts[1]}" if len(svc_opts[1]) == 1 else f"--{svc_opts[1]}",
              "give one of -t, -u, -f, --sctp-service")
    if svc_opts:
        o = svc_opts[0]
        kind = {"t": "tcp", "u": "udp", "f": "fwmark", "sctp-service": "sctp"}[o]
        req.service = parse_service(kind, opts[o], ipv6="6" in opts, source=SOURCE)
    _build(req, opts)
    return req


_LISTINGS = ("stats", "rate", "thresholds", "persistent-conn")  # each chooses the columns of -L


def _one_listing(fmt):
    """ipvsadm prints the first of these it is given, in this order, and drops the rest without a word: refuse."""
    given = [f"--{f}" for f in _LISTINGS if f in fmt]
    if len(given) > 1:
        _fail(given[1], f"{' and '.join(given)} each choose the columns of the listing: give one "
                        f"(ipvsadm would silently print only {given[0]})")


def _needs_service(req, what):
    if req.service is None:
        _fail("-t", f"{what} needs a service: -t VIP:PORT, -u VIP:PORT or -f MARK")


def _int(opts, o, lo, hi):
    if o not in opts:
        return None
    v = opts[o]
    if not v.isdigit() or not lo <= int(v) <= hi:
        _fail(f"-{o}", f"-{o} takes an integer {lo}..{hi}, got {v!r}")
    return int(v)


def _method(opts):
    """{"method"} from -g / -m / -i (None: none given), with "tunnel" (its keys) for -i."""
    if "m" in opts:
        other = next((o for o in ("g", "i", *tunopts.LONG) if o in opts), None)
        if other:
            _fail("-m", "give one forwarding method: -g (direct routing), -m (masquerading) or -i (tunnelling)")
        return {"method": "nat"}
    method, tunnel = tunopts.method_of(opts, SOURCE)
    return {"method": method, **({"tunnel": tunnel} if method == "tun" else {})}


def _build(req, opts):
    cmd = req.command
    if cmd in ("add-service", "edit-service"):
        _needs_service(req, f"-{'A' if cmd == 'add-service' else 'E'}")
        op = {"op": "service-add" if cmd == "add-service" else "service-edit", "service": req.service,
              "replace": True, "scheduler": opts.get("s"), **_method(opts)}
        if "p" in opts:
            op["persistence"] = admin.DEFAULT_PERSISTENCE if opts["p"] is None else _int(opts, "p", 1, 2**31 - 1)
        if "M" in opts:
            op["netmask"] = opts["M"]
        if "b" in opts:
            op["sched_flags"] = [f for f in opts["b"].split(",") if f]
        if "o" in opts:
            op["ops"] = True
        if "pe" in opts:
            op["pe"] = opts["pe"]
        req.ops.append(op)
    elif cmd == "delete-service":
        _needs_service(req, "-D")
        req.ops.append({"op": "service-del", "service": req.service})
    elif cmd in ("add-server", "edit-server", "delete-server"):
        _needs_service(req, {"add-server": "-a", "edit-server": "-e", "delete-server": "-d"}[cmd])
        if "r" not in opts:
            _fail("-r", "give the real server: -r ADDR[:PORT]")
        proto = req.service.get("proto", "tcp")
        addr, port = split_addr_port(opts["r"], proto, "-r", SOURCE)
        op = {"op": {"add-server": "real-add", "edit-server": "real-edit", "delete-server": "real-del"}[cmd],
              "service": req.service, "address": str(addr), "port": port}
        method = _method(opts)
        if cmd != "delete-server":
            op.update(method if method["method"] else {})
            op.update(replace=True, weight=_int(opts, "w", 0, 65535), uthreshold=_int(opts, "x", 0, 2**32 - 1),
                      lthreshold=_int(opts, "y", 0, 2**32 - 1))
        req.ops.append(op)
    elif cmd == "clear":
        req.ops.append({"op": "clear"})
    elif cmd == "set":
        vals = opts["set"]
        if not all(v.isdigit() for v in vals):
            _fail("--set", f"--set takes three timeouts in seconds (0 = unchanged), got {' '.join(vals)}")
        req.ops.append(dict(zip(("op", "tcp", "tcpfin", "udp"), ["timeouts", *map(int, vals)])))


def parse_restore(text: str) -> list:
    """`ipvsadm -R`: the operations of every line (as `ipvsadm -S` writes them), for one all-or-nothing apply."""
    ops = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            argv = shlex.split(line)
            if argv and os.path.basename(argv[0]) == "ipvsadm":  # ipvsadm(8): lines may begin with 'ipvsadm'
                argv = argv[1:]
            req = parse(argv)
        except ValueError as exc:  # shlex: an unclosed quote
            raise ConfigError(f"{SOURCE} -R line {n}", "", f"cannot split {line!r}: {exc}") from None
        except ConfigError as exc:
            raise ConfigError(f"{SOURCE} -R line {n}", exc.where, exc.message) from None
        if not req.ops:
            raise ConfigError(f"{SOURCE} -R line {n}", "", f"{line!r} changes nothing; -R takes -A/-E/-D/-a/-e/-d/-C")
        ops.extend(dict(op, line=n) for op in req.ops)  # apply_ops names the line of an op it refuses
    return ops


# ---------------------------------------------------------------------------------------------------------------
# Listings. `snap` is the daemon's "list" result (xlb/ops/listings.py listing()).


def _host(family, addr):
    return f"[{addr}]" if family == 6 else str(addr)


def _svc_sort_key(s):
    # ipvs_cmp_services: fwmark, family, protocol, address, port (fwmark 0 = VIP services first).
    proto = {"tcp": 6, "udp": 17}.get(s.get("proto"), 0)
    addr = int(ipaddress.ip_address(s["vip"])) if s.get("vip") else 0
    return (s.get("fwmark") or 0, s["family"], proto, addr, s.get("port") or 0)


def _real_sort_key(r):
    a = ipaddress.ip_address(r["address"])
    return (a.version, int(a), r["port"])


def sorted_services(snap):
    return sorted(snap["services"], key=_svc_sort_key)


def svc_name(s, rule=False):
    if s.get("fwmark") is not None:
        if rule:
            return f"-f {s['fwmark']}" + (" -6" if s["family"] == 6 else "")
        return f"FWM  {s['fwmark']}" + (" IPv6" if s["family"] == 6 else "")
    vname = f"{_host(s['family'], s['vip'])}:{s['port']}"
    if rule:
        return f"{PROTO_OPTION[s['proto']]} {vname}"
    name = f"{s['proto'].upper()}  {vname}"
    return name[:33] if s["family"] == 4 else name


def real_name(s, r):
    name = f"{_host(s['family'], r['address'])}:{r['port']}"
    return name[:28] if s["family"] == 4 else name


def largenum(i, exact=False):
    """ipvsadm's print_largenum: 9 columns, K/M/G/T above 100 million unless --exact."""
    if exact:
        n = len(str(i))
        return f"{i:>{9 if n <= 8 else n + 1}}"
    for limit, div, unit in ((10**8, 1, ""), (10**9, 10**3, "K"), (10**11, 10**6, "M"), (10**14, 10**9, "G")):
        if i < limit:
            return f"{i:9d}" if not unit else f"{i // div:8d}{unit}"
    return f"{i // 10**12:8d}T"


def _title(fmt):
    head = f"{'Prot LocalAddress:Port':<33}"
    if "stats" in fmt:
        return [f"{head} {'Conns':>8} {'InPkts':>8} {'OutPkts':>8} {'InBytes':>8} {'OutBytes':>8}",
                "  -> RemoteAddress:Port"]
    if "rate" in fmt:
        return [f"{head} {'CPS':>8} {'InPPS':>8} {'OutPPS':>8} {'InBPS':>8} {'OutBPS':>8}", "  -> RemoteAddress:Port"]
    if "thresholds" in fmt:
        return [f"{head} {'Uthreshold':<10} {'Lthreshold':<10} {'ActiveConn':<10} {'InActConn':<10}",
                "  -> RemoteAddress:Port"]
    if "persistent-conn" in fmt:
        return [f"{head} {'Weight':<9} {'PersistConn':<11} {'ActiveConn':<10} {'InActConn':<10}",
                "  -> RemoteAddress:Port"]
    return ["Prot LocalAddress:Port Scheduler Flags",
            "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn"]


def _persist_flags(s):
    if s.get("persistence") is None:
        return ""
    out = f" persistent {s['persistence']}"
    full = "255.255.255.255" if s["family"] == 4 else "128"
    if s["netmask"] != full:
        out += f" mask {s['netmask']}"
    return out + (f" pe {s['pe']}" if s.get("pe") else "")


def _service_lines(s, fmt):
    exact = "exact" in fmt
    name = svc_name(s)
    if "stats" in fmt or "rate" in fmt:
        k = "stats" if "stats" in fmt else "rate"
        cols = ("conns", "inpkts", "outpkts", "inbytes", "outbytes") if k == "stats" else \
            ("cps", "inpps", "outpps", "inbps", "outbps")
        lines = [f"{name:<33}" + "".join(largenum(s[k][c], exact) for c in cols)]
    else:
        sched = s["scheduler"] + (f" ({','.join(s['sched_flags'])})" if s.get("sched_flags") else "")
        lines = [f"{name} {sched}{_persist_flags(s)}{' ops' if s.get('ops') else ''}"]
    for r in sorted(s["reals"], key=_real_sort_key):
        dname = real_name(s, r)
        if "stats" in fmt:
            st = r["stats"]
            lines.append(f"  -> {dname:<28}" + "".join(largenum(st[c], exact) for c in
                                                       ("conns", "inpkts", "outpkts", "inbytes", "outbytes")))
        elif "rate" in fmt:
            rt = r["rate"]
            lines.append(f"  -> {dname:<28} {rt['cps']:8d} {rt['inpps']:8d} {rt['outpps']:8d}"
                         + largenum(rt["inbps"], exact) + largenum(rt["outbps"], exact))
        elif "thresholds" in fmt:
            lines.append(f"  -> {dname:<28} {r['uthreshold']:<10} {r['lthreshold']:<10} {r['active']:<10} "
                         f"{r['inactive']:<10}")
        elif "persistent-conn" in fmt:
            lines.append(f"  -> {dname:<28} {r['weight']:<9} {r['persist']:<11} {r['active']:<10} "
                         f"{r['inactive']:<10}")
        else:
            lines.append(f"  -> {dname:<28} {tunopts.forward_name(s):<7} {r['weight']:<6} {r['active']:<10} "
                         f"{r['inactive']:<10}")
    return lines


def render_list(snap, fmt=frozenset(), service=None) -> str:
    """`ipvsadm -L -n` and its variants; with ``service`` only that service, without the version line."""
    if "timeout" in fmt:
        t = snap["timeouts"]
        return f"Timeout (tcp tcpfin udp): {t['tcp']} {t['tcpfin']} {t['udp']}\n"
    services = sorted_services(snap)
    if service is not None:
        services = [s for s in services if _matches(s, service)]
        if not services:
            raise ConfigError(SOURCE, ident_option(service), f"no service {ident_name(service)}")
        lines = _title(fmt)
    else:
        lines = [f"IP Virtual Server version {IPVS_VERSION} (size={snap['size']})"] + _title(fmt)
    for s in services:
        lines += _service_lines(s, fmt)
    return "\n".join(lines) + "\n"


def _matches(s, ident):
    if "fwmark" in ident:
        return s.get("fwmark") == ident["fwmark"] and s["family"] == ident["family"]
    return (s.get("proto") == ident["proto"] and s.get("port") == ident["port"] and s.get("vip") is not None
            and ipaddress.ip_address(s["vip"]) == ipaddress.ip_address(ident["vip"]))


def render_save(snap) -> str:
    """`ipvsadm -S -n`: one -A line per service and one -a line per real, restorable with -R."""
    lines = []
    for s in sorted_services(snap):
        line = f"-A {svc_name(s, rule=True)} -s {s['scheduler']}"
        if s.get("sched_flags"):
            line += f" -b {','.join(s['sched_flags'])}"
        if s.get("persistence") is not None:
            line += f" -p {s['persistence']}"
            full = "255.255.255.255" if s["family"] == 4 else "128"
            if s["netmask"] != full:
                line += f" -M {s['netmask']}"
            if s.get("pe"):
                line += f" --pe {s['pe']}"
        if s.get("ops"):
            line += " -o"
        lines.append(line)
        for r in sorted(s["reals"], key=_real_sort_key):
            line = (f"-a {svc_name(s, rule=True)} -r {_host(s['family'], r['address'])}:{r['port']} "
                    f"{tunopts.save_options(s)} -w {r['weight']}")
            if r["uthreshold"]:
                line += f" -x {r['uthreshold']}"
            if r["lthreshold"]:
                line += f" -y {r['lthreshold']}"
            lines.append(line)
    return "".join(f"{line}\n" for line in lines)


def render_conns(entries) -> str:
    """`ipvsadm -L -n -c`: connections and persistence templates (client port 0, state NONE)."""
    lines = ["IPVS connection entries", f"pro expire {'state':<11} {'source':<18} {'virtual':<18} destination"]
    for e in entries:
        secs = max(0, int(e["expire"]))
        expire = f"{secs // 60:02d}:{secs % 60:02d}"
        fam = e["family"]
        c = f"{_host(fam, e['caddr'])}:{e['cport']}"
        v = f"{_host(fam, e['vaddr'])}:{e['vport']}"
        d = f"{_host(fam, e['daddr'])}:{e['dport']}"
        lines.append(f"{e['proto']:<3} {expire:<6} {e['state']:<11} {c:<18} {v:<18} {d}")
    return "\n".join(lines) + "\n"
