"""Runtime edits as pure functions: a running Config and a list of operations give the next Config.

Pure: no bcc, no root (tests/test_admin.py). `xlb service|real|mark|set-timeouts` and `xlb ipvsadm` turn their
arguments into operations (plain dicts, so they travel over the control socket); the daemon calls
:func:`apply_ops` and hands the result to ``DataPlane.apply``, which writes only the difference.

Every edit goes through the file's validator: the config is rendered to its TOML-shaped tree, edited there, and
re-read with ``config.from_tree``, so a runtime edit can never make a state the file could not describe. A
rejected edit raises ConfigError whose ``where`` is the command-line option at fault (``-M``, ``-w``, ``-t``) and
changes nothing; a batch (``ipvsadm -R``) is applied whole or not at all.

Operations (``op`` key):
  service-add / service-edit / service-del   {"service": IDENT, "scheduler", "persistence", "netmask", "method",
                                              "tunnel", "sched_flags", "ops", "replace"}
  real-add / real-edit / real-del            {"service": IDENT, "address", "port", "weight", "uthreshold",
                                              "lthreshold", "method", "tunnel", "replace"}
"tunnel" is the service's tunnel_* keys (method "tun"). A real's method is its service's (ipvsadm puts it on each
real): a real-add/real-edit giving another changes the service's only when no other real is there.
  mark-add / mark-del                        {"mark", "proto", "dst", "ports"}
  clear                                      {}  (ipvsadm -C: every service; mark rules stay)
  timeouts                                   {"tcp", "tcpfin", "udp"}  (0 or absent: unchanged, as ipvsadm --set)
IDENT is {"proto": "tcp"|"udp", "vip": ADDR, "port": N} or {"fwmark": N, "family": 4|6}.

``replace`` gives ipvsadm's -E/-e meaning: options not given return to their defaults (scheduler wlc, no
persistence, weight 1). Without it (the native commands) only the options given change.
"""
from __future__ import annotations

import ipaddress
import re

from ..config import dump as xdump
from ..config import model as xconfig
from ..config import read as xread
from ..config import tunnel as xtunnel
from ..errors import ConfigError
from ..tables.marks import rule_identity
from .parse import ident_name, ident_option

DEFAULT_PERSISTENCE = 360  # ipvsadm's -p without a value (its code; the man page says 300)
METHOD_OPTION = {"dr": "-g", "nat": "-m", "tun": "-i"}

# Config field -> the option an operator typed, for error messages.
_SERVICE_FIELDS = {"scheduler": "-s", "sched_flags": "-b", "mh_table_size": "-s", "method": "-g",
                   "persistence_timeout": "-p", "persistence_netmask": "-M", "persistence_mode": "-p",
                   "persistence_engine": "--pe",
                   "expire_quiescent_template": "-p", "address": "-r", "weight": "-w", "uthreshold": "-x",
                   "lthreshold": "-y", "ops": "-o", **dict.fromkeys(xtunnel.KEYS, "-i")}
_MARK_FIELDS = {"mark": "--mark", "proto": "--proto", "dst": "--dst", "ports": "--ports"}


# ---------------------------------------------------------------------------------------------------------------
# Applying operations


def apply_ops(cfg: xconfig.Config, ops: list, source: str = "xlb") -> xconfig.Config:
    """The Config after ``ops`` (all or nothing); ConfigError names the option at fault, and the line of an op
    that carries one (``ipvsadm -R``: ``source`` becomes "ipvsadm -R line N")."""
    tree, touched = _edited(cfg, ops, source)
    try:
        return xread.from_tree(tree, cfg.source)
    except ConfigError as exc:
        if not any("line" in op for op in ops):
            raise ConfigError(source, _option_of(exc.where, touched), exc.message) from None
        raise _first_failing(cfg, ops, source) from None


def _edited(cfg, ops, source):
    """(the config tree after ops, the option of the last op that named one)."""
    tree = xdump.to_tree(cfg)
    touched = None
    for op in ops:
        kind = op.get("op")
        fn = _OPS.get(kind)
        at = f"{source} line {op['line']}" if "line" in op else source
        if fn is None:
            raise ConfigError(at, "", f"unknown operation {kind!r}")
        touched = fn(tree, op, at) or touched
    return tree, touched


def _first_failing(cfg, ops, source) -> ConfigError:
    """The error of the first line after which the batch no longer validates, where ipvsadm -R (which applies
    line by line) would stop. Bisection over prefixes: no op is the running config (valid), all ops are not."""
    lo, hi = 0, len(ops)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _invalid(cfg, ops[:mid], source) is None:
            lo = mid
        else:
            hi = mid
    error, touched = _invalid(cfg, ops[:hi], source)
    return ConfigError(f"{source} line {ops[hi - 1].get('line', '?')}", _option_of(error.where, touched),
                       error.message)


def _invalid(cfg, ops, source):
    """(the validation error, the option last touched) of the config after ops, or None if it validates."""
    tree, touched = _edited(cfg, ops, source)
    try:
        xread.from_tree(tree, cfg.source)
    except ConfigError as exc:
        return exc, touched
    return None


def _option_of(where: str, touched) -> str:
    """The option behind a validator field path (``service[2].real[0].weight`` -> ``-w``)."""
    if not where:
        return ""
    field = re.sub(r"\[\d+\]", "", where.rsplit(".", 1)[-1])
    if where.startswith("mark"):
        return _MARK_FIELDS.get(field, "--mark")
    if where.startswith("timeouts"):
        return "--set"
    if field in _SERVICE_FIELDS:
        return _SERVICE_FIELDS[field]
    return touched or where  # vip, port, proto, fwmark, family: the service option itself


def _find_service(tree, ident):
    for i, svc in enumerate(tree["service"]):
        if "fwmark" in ident:
            if svc.get("fwmark") == ident["fwmark"] and svc.get("family", "ipv4") == f"ipv{ident['family']}":
                return i
        elif ("vip" in svc and svc.get("proto") == ident["proto"] and svc.get("port") == ident["port"]
              and ipaddress.ip_address(svc["vip"]) == ipaddress.ip_address(ident["vip"])):
            return i
    return None


def _need_service(tree, op, source):
    ident = op["service"]
    i = _find_service(tree, ident)
    if i is None:
        raise ConfigError(source, ident_option(ident), f"no service {ident_name(ident)}")
    return tree["service"][i]


def _set_settings(svc, op, replace):
    """Write the service settings an op gives; with replace, those it does not give return to defaults."""
    if replace:
        for key in ("scheduler", "sched_flags", "mh_table_size", "persistence_timeout", "persistence_netmask",
                    "persistence_mode", "expire_quiescent_template", "ops", "placement",
                    "persistence_engine"):
            svc.pop(key, None)
        svc["scheduler"] = xconfig.DEFAULT_SCHEDULER
        svc.setdefault("method", "dr")  # ipvsadm -E keeps it: IPVS's method is the reals', which -E leaves
    if op.get("scheduler") is not None and op["scheduler"] != svc.get("scheduler"):
        svc["scheduler"] = op["scheduler"]
        if op["scheduler"] != "mh":
            svc.pop("mh_table_size", None)
        if op.get("sched_flags") is None:
            svc.pop("sched_flags", None)
    if op.get("sched_flags") is not None:
        svc["sched_flags"] = list(op["sched_flags"])
        if not svc["sched_flags"]:
            del svc["sched_flags"]
    _set_method(svc, op)  # kept when not given, even by -E: the reals' -g / -m / -i say it (ipvsadm)
    if op.get("ops") is not None:
        svc["ops"] = op["ops"]
        if not op["ops"]:
            del svc["ops"]
    if op.get("persistence") is False:
        for key in ("persistence_timeout", "persistence_netmask", "persistence_mode", "expire_quiescent_template",
                    "placement", "persistence_engine"):
            svc.pop(key, None)
    elif op.get("persistence") is not None:
        svc["persistence_timeout"] = op["persistence"]
    if op.get("netmask") is not None:
        svc["persistence_netmask"] = op["netmask"]
    if op.get("pe") is not None:
        svc["persistence_engine"] = op["pe"]


def _set_method(svc, op):
    """The method and tunnel keys an op gives (a method without tunnel keys: IPVS's tunnel defaults)."""
    if op.get("method") is None:
        return
    svc["method"] = op["method"]
    for key in xtunnel.KEYS:
        svc.pop(key, None)
    svc.update(op.get("tunnel") or {})


def _real_method(svc, me, op, source):
    """A method given with a real (ipvsadm -a/-e -g|-m|-i; IPVS's is a real's) sets the service's (with its tunnel
    keys) while it has no real but ``me`` (index; None: adding); else it must be the service's (xlb's method is)."""
    if op.get("method") is None:
        return
    mine = {k: svc[k] for k in xtunnel.KEYS if k in svc}
    if op["method"] == svc.get("method", "dr") and (op["method"] != "tun" or (op.get("tunnel") or {}) == mine):
        return
    others = [r["address"] for j, r in enumerate(svc.get("real", [])) if j != me]
    if others:
        opt = METHOD_OPTION.get(op["method"], "-g")
        now = svc.get("method", "dr")
        raise ConfigError(source, opt, f"{ident_name(op['service'])} forwards to {others[0]} by {now} "
                                       f"({METHOD_OPTION.get(now, '-g')}{''.join(f' {k}={v}' for k, v in mine.items())}): "
                                       "every real of a service uses the service's method; change the service "
                                       f"(-E ... {opt}) instead")
    _set_method(svc, op)
    for r in svc.get("real", []):
        r.pop("port", None)   # a port of its own is NAT's


def _service_add(tree, op, source):
    ident = op["service"]
    if _find_service(tree, ident) is not None:
        raise ConfigError(source, ident_option(ident), f"service {ident_name(ident)} already exists "
                                                       "(edit it with -E / `xlb service edit`)")
    svc = dict(ident)
    if "fwmark" in svc:
        svc["family"] = f"ipv{svc['family']}"
    _set_settings(svc, op, replace=True)
    svc["real"] = []
    tree["service"].append(svc)
    return ident_option(ident)


def _service_edit(tree, op, source):
    svc = _need_service(tree, op, source)
    _set_settings(svc, op, replace=bool(op.get("replace")))
    return ident_option(op["service"])


def _service_del(tree, op, source):
    _need_service(tree, op, source)
    del tree["service"][_find_service(tree, op["service"])]


def _real_address(svc, op, source):
    """(address, port) naming the real as IPVS's destination: NAT's own port (None: the client's, also for -r's 0 or
    the service's); under direct routing the port must be the service's (DR keeps the destination port): None."""
    addr = ipaddress.ip_address(op["address"])
    port = op.get("port")
    if svc.get("method", "dr") == "nat":
        return addr, None if port in (None, 0, svc.get("port")) else port
    if port is not None and "vip" in svc and svc["port"] != 0 and port not in (0, svc["port"]):
        raise ConfigError(source, "-r", f"{addr}:{port}: direct routing keeps the destination port, so a real "
                                        f"of a service on port {svc['port']} takes {addr} or {addr}:{svc['port']}")
    return addr, None


def _find_real(svc, dest, loose=False):
    """Indexes of the reals at ``dest`` (_real_address); ``loose`` (-e/-d with no port): else all on the address."""
    found = [j for j, r in enumerate(svc["real"]) if ipaddress.ip_address(r["address"]) == dest[0]]
    exact = [j for j in found if svc["real"][j].get("port") in ((dest[1],) if dest[1] else (None, svc.get("port")))]
    return exact if exact or not loose else found


def _dest_name(dest):
    return str(dest[0]) if dest[1] is None else xconfig.real_text(dest[0], dest[1])


def _set_real(svc, real, op, replace):
    if replace:
        for key in ("uthreshold", "lthreshold"):
            real.pop(key, None)
        real["weight"] = 1
    port = op.get("port")
    if svc.get("method", "dr") == "nat" and port is not None:
        if port in (0, svc.get("port")):
            real.pop("port", None)   # the port the client sent to
        else:
            real["port"] = port
    for key in ("weight", "uthreshold", "lthreshold"):
        if op.get(key) is not None:
            real[key] = op[key]
            if key != "weight" and not op[key]:
                del real[key]


def _real_add(tree, op, source):
    svc = _need_service(tree, op, source)
    _real_method(svc, None, op, source)
    dest = _real_address(svc, op, source)
    if _find_real(svc, dest):
        raise ConfigError(source, "-r", f"real {_dest_name(dest)} already exists in {ident_name(op['service'])} "
                                        "(edit it with -e / `xlb real edit`)")
    real = {"address": str(dest[0])}
    _set_real(svc, real, op, replace=True)
    svc.setdefault("real", []).append(real)
    return ident_option(op["service"])


def _need_real(tree, op, source):
    """(the service's tree, the real's index in it); the real must exist."""
    svc = _need_service(tree, op, source)
    dest = _real_address(svc, op, source)
    found = _find_real(svc, dest, loose=op.get("port") is None)
    if len(found) != 1:
        ports = ", ".join(_dest_name((dest[0], svc["real"][j].get("port", svc.get("port", 0)))) for j in found)
        raise ConfigError(source, "-r", f"no real {_dest_name(dest)} in {ident_name(op['service'])}" if not found else
                          f"{ident_name(op['service'])} has reals {ports}: give the real's port")
    return svc, found[0]


def _real_edit(tree, op, source):
    svc, j = _need_real(tree, op, source)
    _real_method(svc, j, op, source)
    _set_real(svc, svc["real"][j], op, replace=bool(op.get("replace")))
    return ident_option(op["service"])


def _real_del(tree, op, source):
    svc, j = _need_real(tree, op, source)
    del svc["real"][j]


def _mark_tree(op):
    out = {"mark": op["mark"], "proto": op.get("proto") or "any", "dst": op["dst"]}
    if op.get("ports"):
        out["ports"] = list(op["ports"])
    return out


def _mark_add(tree, op, source):
    new = _mark_tree(op)
    probe = _rule(new, source)  # normalised (ports merged) to compare with what is there
    if any(_rule(m, source) == probe for m in tree["mark"]):
        raise ConfigError(source, "--mark", "that mark rule already exists")
    tree["mark"].append(new)


def _rule(mark_tree, source):
    """A mark rule's identity (mark, proto, dst, merged ports), validated on its own."""
    try:
        r = xread.from_tree({"mark": [mark_tree]}, source).marks[0]
    except ConfigError as exc:
        raise ConfigError(source, _option_of(exc.where, None), exc.message) from None
    return rule_identity(r)


def _mark_del(tree, op, source):
    """Delete the rules that match every field given (--mark, and --proto/--dst/--ports when given)."""
    want = {k: op[k] for k in ("proto", "dst") if op.get(k) is not None}
    if "dst" in want:
        want["dst"] = _rule({"mark": 1, "dst": want["dst"]}, source)[2]
    if op.get("ports"):
        want["ports"] = _rule({"mark": 1, "dst": "0.0.0.0/0", "ports": op["ports"]}, source)[3]
    fields = ("mark", "proto", "dst", "ports")
    keep = []
    for m in tree["mark"]:
        rule = dict(zip(fields, _rule(m, source)))
        if rule["mark"] != op["mark"] or any(rule[k] != v for k, v in want.items()):
            keep.append(m)
    if len(keep) == len(tree["mark"]):
        given = "".join(f" --{k} {op[k]}" for k in ("proto", "dst", "ports") if op.get(k))
        raise ConfigError(source, "--mark", f"no mark rule matches --mark {op['mark']}{given}")
    tree["mark"] = keep


def _clear(tree, op, source):
    tree["service"] = []


def _timeouts(tree, op, source):
    for key in ("tcp", "tcpfin", "udp"):
        if op.get(key):
            tree["timeouts"][key] = op[key]


_OPS = {"service-add": _service_add, "service-edit": _service_edit, "service-del": _service_del,
        "real-add": _real_add, "real-edit": _real_edit, "real-del": _real_del,
        "mark-add": _mark_add, "mark-del": _mark_del, "clear": _clear, "timeouts": _timeouts}


def save_text(cfg: xconfig.Config, header: str = "") -> str:
    """`xlb save`: TOML that `xlb run --config` accepts and that reproduces cfg."""
    return xdump.dumps(xdump.to_tree(cfg), header)

