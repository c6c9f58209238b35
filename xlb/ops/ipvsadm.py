"""`xlb ipvsadm ARGS...`: ipvsadm's own command line (its listings: xlb/ops/ipvslist.py).

Pure (tests/test_ipvsadm.py): :func:`parse` turns an argv into a :class:`Request` (operations for xlb/ops/admin.py,
or a listing to print).

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

import os
import shlex
from dataclasses import dataclass, field

from . import admin
from .parse import parse_service, split_addr_port
from . import tunopts
from ..errors import ConfigError

SOURCE = "ipvsadm"

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
