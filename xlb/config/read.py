"""Load and validate xlb's TOML configuration into the frozen dataclasses of xlb/config/model.py.

Pure: imports no bcc and needs no root, so every rule here is unit-tested (tests/test_config.py).
Every problem raises ``xlb.errors.ConfigError(source, where, message)`` where ``where`` is the field path an
operator can find in the file (``service[1].real[0].weight``, ``mark[2].ports[1]``) or ``line N`` for TOML syntax;
:func:`parse` adds the field's line (``line``, found by xlb/config/tomlpos.py).
Unknown keys are errors everywhere, so a typo never silently falls back to a default.

Decisions worth knowing:
- ``persistence_netmask``, ``persistence_mode`` and ``expire_quiescent_template`` are rejected on a service without
  ``persistence_timeout``: they would have no effect, and saying so beats silently ignoring them.
- ``mh_table_size`` is rejected unless ``scheduler = "mh"`` for the same reason.
- ``placement = "consistent"`` needs ``persistence_timeout`` and places by Maglev: it implies ``scheduler = "mh"``
  and rejects any other scheduler, and ``mh-port`` (a template is keyed by the client address alone).
- ``family`` on a vip service is allowed only when it agrees with the vip's address family.

This module reads the document and its services; the node-wide tables are settings.py's, the mark rules
marks.py's, and the validation context they all use (field paths, unknown keys) validate.py's.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import tomllib

from . import health as xhealth
from . import marks as xmarks
from . import realcheck
from . import settings
from . import tunnel as xtunnel
from .model import (DEFAULT_SCHEDULER, IPVS_SCHEDULERS_NOT_YET, METHODS, MH_SIZE_MAX, MH_SIZE_MIN,
                    PERSISTENCE_ENGINES, PERSISTENCE_MODES, PLACEMENTS, SCHED_FLAGS, SCHEDULERS, SERVICE_PROTOS,
                    TIMEOUT_MAX, U32_MAX, Config, Icmp, Real, Service, is_prime, netmask_bytes, real_text,
                    show_value)
from .tomlpos import located
from .validate import Validator, join, no_zone
from ..errors import ConfigError

_TOML_LOC = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")
_TOML_END = re.compile(r"\s*\(at end of document\)\s*$")


def load(path) -> Config:
    """Read and validate the config file at ``path``; errors name ``str(path)`` as their source."""
    source = str(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError(source, "", f"cannot read the config file: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(source, "", f"the config file is not valid UTF-8 (byte offset {e.start})") from None
    return parse(text, source)


def parse(text: str, source: str = "<config>") -> Config:
    """Validate TOML ``text``; ``source`` names it in errors (a UTF-8 byte order mark at the start is skipped)."""
    text = text.removeprefix("\ufeff")
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise _syntax_error(source, text, e) from None
    except RecursionError:
        raise ConfigError(source, "", "TOML nested too deeply (arrays or inline tables inside each other "
                                      "hundreds of levels deep) to be a config") from None
    try:
        return from_tree(doc, source)
    except ConfigError as e:
        raise located(e, text) from None


def from_tree(doc: dict, source: str = "<config>") -> Config:
    """Validate an already-parsed TOML-shaped tree (dicts, lists, str, int) as :func:`parse` does after TOML.

    Importers of other formats (xlb/importers/keepalived/translate.py) and runtime edits (xlb/ops/admin.py) build this tree so every rule lives here; errors name
    the field path in the tree (``service[1].real[0].weight``).
    """
    v = Validator(source)
    top = v.table(doc, "", ("timeouts", "tables", "icmp", "sync", "bgp", "mark", "service"))
    timeouts = settings.timeouts(v, top)
    tables = settings.tables(v, top)
    sync = settings.sync(v, top)
    bgp = settings.bgp(v, top)
    marks = xmarks.read(v, top)
    services = tuple(_service(v, item, where) for where, item in v.array_of_tables(top, "", "service"))
    _check_duplicate_services(v, services)
    realcheck.check(services, marks, source)  # reals that cannot work: VIPs, loopback, multicast...
    icmp_t = v.table(top.get("icmp", {}), "icmp", ("echo_reply",))
    icmp = Icmp(echo_reply=v.flag(icmp_t, "icmp", "echo_reply", Icmp.echo_reply))
    return Config(timeouts=timeouts, tables=tables, marks=marks, services=services, source=source, icmp=icmp,
                  sync=sync, bgp=bgp)


def _syntax_error(source, text, e) -> ConfigError:
    """Turn tomllib's "Msg (at line N, column C)" into where="line N", message="TOML syntax error: Msg (column C)"."""
    msg = str(e)
    m = _TOML_LOC.search(msg)
    if m:
        return ConfigError(source, f"line {m.group(1)}", f"TOML syntax error: {msg[:m.start()]} (column {m.group(2)})")
    m = _TOML_END.search(msg)
    if m:
        last = max(1, len(text.splitlines()))
        return ConfigError(source, f"line {last}", f"TOML syntax error: {msg[:m.start()]} (at end of file)")
    return ConfigError(source, "", f"TOML syntax error: {msg}")


_SERVICE_KEYS = ("fwmark", "family", "vip", "port", "proto", "scheduler", "method", "persistence_timeout",
                 "persistence_netmask", "persistence_mode", "expire_quiescent_template", "persistence_engine",
                 "mh_table_size", "sched_flags", "ops", "placement", "real") + xtunnel.KEYS + xhealth.SERVICE_KEYS


def _service(v, item, where) -> Service:
    tbl = v.table(item, where, _SERVICE_KEYS)
    fam_key = v.choice(tbl, where, "family", ("ipv4", "ipv6"))
    fwmark = vip = port = proto = None
    if "fwmark" in tbl and "vip" in tbl:
        v.fail(where, "give either fwmark or vip/port/proto, not both")
    if "fwmark" in tbl:
        fwmark = v.integer(tbl, where, "fwmark", 1, U32_MAX)
        for k in ("port", "proto"):
            if k in tbl:
                v.fail(join(where, k), f"{k} applies only to vip services; a fwmark service matches by mark")
        family = 6 if fam_key == "ipv6" else 4
    elif "vip" in tbl:
        vip = _address(v, tbl["vip"], join(where, "vip"), "vip")
        family = vip.version
        if fam_key is not None and fam_key != f"ipv{family}":
            v.fail(join(where, "family"), f"family {show_value(fam_key)} does not match vip {vip} (IPv{family}); "
                                           "remove family, a vip service takes it from the address")
        port = v.integer(tbl, where, "port", 0, 65535, required=True)
        proto = v.choice(tbl, where, "proto", SERVICE_PROTOS, required=True)
    else:
        v.fail(where, "a service needs either fwmark = N or vip/port/proto")

    placement = v.choice(tbl, where, "placement", PLACEMENTS, default="scheduler")
    scheduler = _scheduler(v, tbl, where, placement)
    method = tbl.get("method", "dr")
    if method == "nat" and proto == "sctp":
        v.fail(join(where, "method"), "an SCTP service cannot use NAT: rewriting its addresses or ports needs "
                                       "the packet's CRC32c recomputed, which xlb does not do; use method \"dr\"")
    if method not in METHODS:
        v.fail(join(where, "method"), f"unknown method {show_value(method)} (supported: {', '.join(METHODS)})")
    tunnel = xtunnel.read(v, tbl, where, method, join)

    ptimeout = v.integer(tbl, where, "persistence_timeout", 1, TIMEOUT_MAX)
    if ptimeout is None:
        for k in ("persistence_netmask", "persistence_mode", "expire_quiescent_template", "placement",
                  "persistence_engine"):
            if k in tbl:
                v.fail(join(where, k), f"{k} has no effect without persistence_timeout; "
                                        "set persistence_timeout or remove it")
    try:
        pmask = netmask_bytes(family, tbl.get("persistence_netmask"))
    except ValueError as e:
        v.fail(join(where, "persistence_netmask"), f"persistence_netmask: {e}")
    pmode = v.choice(tbl, where, "persistence_mode", PERSISTENCE_MODES, default="lvs")
    eqt = v.flag(tbl, where, "expire_quiescent_template", False)
    engine = v.choice(tbl, where, "persistence_engine", PERSISTENCE_ENGINES)
    if engine and proto in ("tcp", "sctp"):
        v.fail(join(where, "persistence_engine"), f"persistence_engine \"sip\" reads UDP datagrams (as IPVS's); "
                                                   f"this is a {proto} service")
    if port == 0 and ptimeout is None:
        v.fail(join(where, "port"), "port 0 (all ports) requires persistence_timeout, as in IPVS; "
                                     "set persistence_timeout or give a port")

    reals = _reals(v, tbl, where, family, method, port, any_family=tunnel is not None)
    if "mh_table_size" in tbl and scheduler != "mh":
        v.fail(join(where, "mh_table_size"), f"mh_table_size applies only to scheduler \"mh\" "
                                              f"(this service uses {show_value(scheduler)})")
    mh_size = v.integer(tbl, where, "mh_table_size", MH_SIZE_MIN, MH_SIZE_MAX, 4093)
    if not is_prime(mh_size):
        v.fail(join(where, "mh_table_size"), f"mh_table_size must be a prime number, got {mh_size}")
    if scheduler == "mh" and mh_size < len(reals):
        v.fail(join(where, "mh_table_size"), f"mh_table_size {mh_size} is smaller than the number of reals "
                                              f"({len(reals)}); use a prime well above it")

    flags = _sched_flags(v, tbl, where, scheduler)
    ops = v.flag(tbl, where, "ops", False)
    if ops and proto == "tcp":
        v.fail(join(where, "ops"), "ops (one-packet scheduling) applies only to UDP, as in IPVS; "
                                    "remove it or use proto = \"udp\"")
    if placement == "consistent" and "mh-port" in flags:
        v.fail(join(where, "sched_flags"), "mh-port does not go with placement \"consistent\": a client's template "
                                            "is keyed by its (masked) address alone")
    svc = Service(fwmark=fwmark, vip=vip, port=port, proto=proto, family=family, scheduler=scheduler,
                  method=method, persistence_timeout=ptimeout, persistence_netmask=pmask, persistence_mode=pmode,
                  expire_quiescent_template=eqt, persistence_engine=engine, mh_table_size=mh_size, reals=reals,
                  where=where, sched_flags=flags, ops=ops, placement=placement,
                  health_keys=xhealth.picked(tbl, xhealth.SERVICE_KEYS) or None, tunnel=tunnel)
    return dataclasses.replace(svc, health=xhealth.service_spec(svc, tbl, v.source))


def _sched_flags(v, tbl, where, scheduler) -> tuple:
    if "sched_flags" not in tbl:
        return ()
    fwhere = join(where, "sched_flags")
    value = tbl["sched_flags"]
    allowed = SCHED_FLAGS.get(scheduler, ())
    if not allowed:
        v.fail(fwhere, f"scheduler {show_value(scheduler)} takes no flags (sh takes {', '.join(SCHED_FLAGS['sh'])}; "
                       f"mh takes {', '.join(SCHED_FLAGS['mh'])})")
    if not isinstance(value, list):
        v.fail(fwhere, f"sched_flags must be a list like [\"{allowed[0]}\"], got {show_value(value)}")
    for i, f in enumerate(value):
        if f not in allowed:
            v.fail(f"{fwhere}[{i}]", f"unknown flag {show_value(f)} for scheduler {show_value(scheduler)} "
                                     f"(allowed: {', '.join(allowed)})")
    return tuple(sorted(set(value)))


def _scheduler(v, tbl, where, placement) -> str:
    s = tbl.get("scheduler", "mh" if placement == "consistent" else DEFAULT_SCHEDULER)
    if placement == "consistent" and s != "mh":
        v.fail(join(where, "scheduler"), f"placement \"consistent\" places new clients by Maglev (scheduler "
                                          f"\"mh\"); scheduler {show_value(s)} would never be used: remove it")
    supported = ", ".join(SCHEDULERS)
    if s in SCHEDULERS:
        return s
    if s in IPVS_SCHEDULERS_NOT_YET:
        v.fail(join(where, "scheduler"), f"scheduler '{s}' is not supported yet (supported: {supported})")
    v.fail(join(where, "scheduler"), f"unknown scheduler {show_value(s)} (supported: {supported})")


def _address(v, value, where, what):
    """A single IP address (no prefix)."""
    if isinstance(value, str):
        try:
            addr = ipaddress.ip_address(value)
        except ValueError:
            pass
        else:
            return no_zone(v, addr, where)
    v.fail(where, f"{what} must be an IPv4 or IPv6 address like \"198.51.100.10\", got {show_value(value)}")


def _reals(v, tbl, where, family, method, svc_port, any_family=False) -> tuple:
    """The service's reals; any_family: a tunnel carries either family to a real of either (4in6, 6in4)."""
    reals = []
    seen = {}
    for rwhere, item in v.array_of_tables(tbl, where, "real"):
        rt = v.table(item, rwhere, ("address", "port", "weight", "uthreshold", "lthreshold") + xhealth.REAL_KEYS)
        if "address" not in rt:
            v.fail(join(rwhere, "address"), "address is required")
        addr = _address(v, rt["address"], join(rwhere, "address"), "address")
        if addr.version != family and not any_family:
            v.fail(join(rwhere, "address"), f"real {addr} is IPv{addr.version} but the service is IPv{family} "
                                             "(only method \"tun\" carries a family to a real of the other)")
        port = _real_port(v, rt, rwhere, method, svc_port)
        # One destination each, as IPVS's: an address, or under NAT an address and port (its own, else the
        # service's); direct routing and tunnels keep the port, so two reals there on one address are one.
        dest = (addr, svc_port if port is None else port)
        if dest in seen:
            name = f"{addr}" if port is None else real_text(addr, dest[1])
            v.fail(join(rwhere, "address"), f"duplicate real {name}: already given as {seen[dest]}")
        seen[dest] = rwhere
        weight = v.integer(rt, rwhere, "weight", 0, 65535, 1)
        upper = v.integer(rt, rwhere, "uthreshold", 0, U32_MAX, 0)
        lower = v.integer(rt, rwhere, "lthreshold", 0, U32_MAX, 0)
        if lower and not upper:
            v.fail(join(rwhere, "lthreshold"), "lthreshold has no effect without uthreshold")
        if upper and lower >= upper:
            v.fail(join(rwhere, "lthreshold"), f"lthreshold {lower} must be below uthreshold {upper}")
        reals.append(Real(address=addr, weight=weight, where=rwhere, uthreshold=upper, lthreshold=lower,
                          health=xhealth.picked(rt, xhealth.REAL_KEYS) or None, port=port))
    return tuple(reals)


def _real_port(v, rt, rwhere, method, svc_port):
    """A real's own port: NAT may send VIP:80 to real:8080; direct routing cannot change the port (the packet is
    not rewritten), so a DR real's port, if given, must be the service's."""
    port = v.integer(rt, rwhere, "port", 1, 65535)
    if port is None or method == "nat" or port == svc_port:
        return None if method != "nat" else port
    what = f"the service's port {svc_port}" if svc_port else "the client's port (a fwmark or port-zero service)"
    v.fail(join(rwhere, "port"), f"port {port} differs from {what}: only method = \"nat\" rewrites the port; "
                                  "remove port or set method = \"nat\"")


def _check_duplicate_services(v, services):
    first = {}
    for s in services:
        if s.key in first:
            v.fail(s.where, f"duplicate service {s.name}: already defined as {first[s.key]}")
        first[s.key] = s.where
