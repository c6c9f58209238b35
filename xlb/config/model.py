"""Load and validate xlb's TOML configuration into frozen dataclasses.

Pure: imports no bcc and needs no root, so every rule here is unit-tested (tests/test_config.py).
Every problem raises ``xlb.errors.ConfigError(source, where, message)`` where ``where`` is the field path an
operator can find in the file (``service[1].real[0].weight``, ``mark[2].ports[1]``) or ``line N`` for TOML syntax;
:func:`parse` adds the field's line (``line``, found by xlb/config/tomlpos.py).
Unknown keys are errors everywhere, so a typo never silently falls back to a default.

Decisions worth knowing:
- ``persistence_netmask``, ``persistence_mode`` and ``expire_quiescent_template`` are rejected on a service without
  ``persistence_timeout``: they would have no effect, and saying so beats silently ignoring them.
- ``mh_table_size`` is rejected unless ``scheduler = "mh"`` for the same reason.
- ``family`` on a vip service is allowed only when it agrees with the vip's address family.
- Two mark rules "claim the same thing" only with an identical ``dst`` prefix; a longer prefix inside a shorter one is
  not a conflict (longest prefix wins in the data plane), and neither is a specific-proto rule next to an "any" rule
  (the specific proto wins), nor a ported rule next to a no-ports rule (the ported rule wins).
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import json
import re
import tomllib
from dataclasses import dataclass

from . import realcheck
from xlb.errors import ConfigError
from xlb.config.tomlpos import located

# Schedulers the data plane implements, and the IPVS ones an operator may reasonably ask for but we do not have.
SCHEDULERS = ("rr", "wrr", "lc", "wlc", "sed", "nq", "fo", "ovf", "sh", "dh", "mh")
IPVS_SCHEDULERS_NOT_YET = ("lblc", "lblcr")
DEFAULT_SCHEDULER = "wlc"  # as IPVS
# ipvsadm -b / keepalived's sh-port, sh-fallback, mh-port, mh-fallback: which flags each scheduler takes.
SCHED_FLAGS = {"sh": ("sh-port", "sh-fallback"), "mh": ("mh-port", "mh-fallback")}
METHODS = ("dr",)
METHODS_NOT_YET = ("nat", "tun")
PERSISTENCE_MODES = ("lvs", "timeout")

U32_MAX = 2**32 - 1
TIMEOUT_MAX = 2**31 - 1  # seconds; far beyond any sane value, keeps ns arithmetic in u64
CONNS_MIN, CONNS_MAX = 1024, 64 * 2**20
FLOW_CACHE_MIN, FLOW_CACHE_MAX = 1024, 2**24  # entries per CPU (64 bytes each)
MH_SIZE_MIN, MH_SIZE_MAX = 2, 1000003


@dataclass(frozen=True)
class Timeouts:
    """Connection-table idle timeouts in seconds (IPVS ``ipvsadm --set tcp tcpfin udp``)."""

    tcp: int = 900  # established TCP
    tcpfin: int = 120  # after FIN/RST
    udp: int = 300
    syn: int = 60  # TCP seen only SYN (IPVS SYN_RECV)


@dataclass(frozen=True)
class Tables:
    """Map sizes and the timer-sweep period (``[tables]``)."""

    conns: int = 1048576  # connection table entries
    templates: int = 262144  # persistence templates
    sweep_interval: float = 1.0  # seconds between timer sweeps
    flow_cache: int = 65536  # established-flow cache entries per CPU (a power of two; 0 = off)


@dataclass(frozen=True)
class MarkRule:
    """One ``[[mark]]``: packets to ``dst`` (and ``proto``/``ports``) get firewall mark ``mark``."""

    mark: int  # 1 .. 2**32-1
    proto: str  # "tcp" | "udp" | "any"
    dst: ipaddress.IPv4Network | ipaddress.IPv6Network
    ports: tuple  # ((lo, hi), ...) inclusive, merged and sorted; () = every port
    where: str  # "mark[3]"


@dataclass(frozen=True)
class Real:
    """A real server of a service."""

    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    weight: int = 1  # 0..65535; 0 = quiescent (keeps its connections, gets no new ones)
    where: str = ""
    uthreshold: int = 0  # connections (active + inactive) at which the real is overloaded; 0 = no limit
    lthreshold: int = 0  # an overloaded real takes new connections again below this; 0 = 3/4 of uthreshold


def fwmark_key(family, mark) -> tuple:
    """A firewall-mark service's identity (Service.key): its mark and address family."""
    return ("fwm", family, mark)


@dataclass(frozen=True)
class Service:
    """A virtual service: either a firewall-mark service or a (proto, vip, port) service."""

    fwmark: int | None
    vip: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    port: int | None  # 0 = port-zero service (any port; requires persistence)
    proto: str | None  # "tcp" | "udp"; None for fwmark services
    family: int  # 4 or 6
    scheduler: str
    method: str
    persistence_timeout: int | None  # seconds; None = not persistent
    persistence_netmask: bytes  # 16 bytes; IPv4 mask in the first 4, rest zero
    persistence_mode: str
    expire_quiescent_template: bool
    mh_table_size: int
    reals: tuple  # tuple[Real]
    where: str  # "service[0]"
    sched_flags: tuple = ()  # ("sh-port", "sh-fallback") / ("mh-port", "mh-fallback"), sorted

    @property
    def key(self) -> tuple:
        """Identity of the service, hashable and stable across reloads."""
        if self.fwmark is not None:
            return fwmark_key(self.family, self.fwmark)
        return (self.proto, self.vip, self.port)

    @property
    def name(self) -> str:
        """Operator label: ``fwm/80``, ``fwm6/80``, ``tcp/198.51.100.10:80``, ``udp/[2001:db8::1]:53``."""
        if self.fwmark is not None:
            return f"fwm{'6' if self.family == 6 else ''}/{self.fwmark}"
        host = f"[{self.vip}]" if self.family == 6 else str(self.vip)
        return f"{self.proto}/{host}:{self.port}"


@dataclass(frozen=True)
class Config:
    timeouts: Timeouts
    tables: Tables
    marks: tuple  # tuple[MarkRule]
    services: tuple  # tuple[Service]
    source: str


# ---------------------------------------------------------------------------------------------------------------
# Public byte-level helpers (shared with the loader, which fills 16-byte address fields in BPF maps).


def is_prime(n) -> bool:
    """True if ``n`` is a prime integer (trial division; fine for table sizes up to a few million)."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 2:
        return False
    if n < 4:
        return True
    if n % 2 == 0:
        return False
    i = 3
    while i * i <= n:
        if n % i == 0:
            return False
        i += 2
    return True


def addr_bytes(addr) -> bytes:
    """16 bytes for an address: IPv4 in the first 4 bytes, zero-padded; IPv6 as is. Accepts str or ip_address."""
    # An address object is taken as is, not parsed again (DataPlane.apply calls this twice per real).
    a = addr if isinstance(addr, (ipaddress.IPv4Address, ipaddress.IPv6Address)) else ipaddress.ip_address(addr)
    return a.packed.ljust(16, b"\0")


def netmask_bytes(family: int, spec) -> bytes:
    """The 16-byte persistence mask for ``spec`` (None = all ones), laid out like :func:`addr_bytes`.

    IPv4: a dotted mask string; non-contiguous masks such as ``255.255.0.255`` are legal, as in IPVS.
    IPv6: a prefix length 1..128, as int or digit string (``64`` or ``"64"``).
    Raises ValueError with an operator-readable message.
    """
    if family == 4:
        if spec is None:
            return b"\xff" * 4 + b"\0" * 12
        if not isinstance(spec, str):
            raise ValueError(f"an IPv4 netmask must be a dotted mask string like \"255.255.255.0\", got {_show(spec)}")
        try:
            return ipaddress.IPv4Address(spec).packed + b"\0" * 12
        except ValueError:
            raise ValueError(
                f"an IPv4 netmask must be a dotted mask like \"255.255.255.0\", got {_show(spec)}"
            ) from None
    if family == 6:
        if spec is None:
            return b"\xff" * 16
        plen = None
        if isinstance(spec, int) and not isinstance(spec, bool):
            plen = spec
        elif isinstance(spec, str) and spec.strip().isdigit():
            plen = int(spec.strip())
        if plen is None or not 1 <= plen <= 128:
            raise ValueError(f"an IPv6 netmask must be a prefix length 1..128 (e.g. 64), got {_show(spec)}")
        return ((1 << 128) - (1 << (128 - plen))).to_bytes(16, "big")
    raise ValueError(f"family must be 4 or 6, got {family!r}")


def mask_address(addr_b16: bytes, mask_b16: bytes) -> bytes:
    """Bytewise AND of a 16-byte address and a 16-byte mask (the persistence-template client key)."""
    if len(addr_b16) != 16 or len(mask_b16) != 16:
        raise ValueError("mask_address takes two 16-byte values")
    return bytes(a & m for a, m in zip(addr_b16, mask_b16))


# ---------------------------------------------------------------------------------------------------------------
# Entry points


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
    v = _V(source)
    top = v.table(doc, "", ("timeouts", "tables", "mark", "service"))
    timeouts = _timeouts(v, top)
    tables = _tables(v, top)
    marks = tuple(_mark(v, item, where) for where, item in v.array_of_tables(top, "", "mark"))
    _check_mark_conflicts(v, marks)
    services = tuple(_service(v, item, where) for where, item in v.array_of_tables(top, "", "service"))
    _check_duplicate_services(v, services)
    realcheck.check(services, marks, source)  # reals that cannot work: VIPs, loopback, multicast...
    return Config(timeouts=timeouts, tables=tables, marks=marks, services=services, source=source)


# ---------------------------------------------------------------------------------------------------------------
# Validation helpers


_TOML_LOC = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")
_TOML_END = re.compile(r"\s*\(at end of document\)\s*$")


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


def _show(value) -> str:
    """Render a value the way it looks in TOML, for messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return str(value)


def _join(where, key):
    return f"{where}.{key}" if where else key


class _V:
    """Validation context: knows the source and produces ConfigErrors with field paths."""

    def __init__(self, source):
        self.source = source

    def fail(self, where, message):
        raise ConfigError(self.source, where, message)

    def table(self, value, where, allowed) -> dict:
        """Check ``value`` is a table with only ``allowed`` keys; return it."""
        if not isinstance(value, dict):
            self.fail(where, f"must be a table, got {_show(value)}")
        for key in value:
            if key not in allowed:
                hint = difflib.get_close_matches(key, allowed, n=1)
                did = f"did you mean '{hint[0]}'? " if hint else ""
                self.fail(_join(where, key), f"unknown key '{key}'; {did}allowed here: {', '.join(allowed)}")
        return value

    def array_of_tables(self, tbl, where, key):
        """Yield (where, item) for ``[[key]]``; missing = empty."""
        items = tbl.get(key, [])
        path = _join(where, key)
        if not isinstance(items, list):
            header = re.sub(r"\[\d+\]", "", path)  # service[0].real -> service.real
            self.fail(path, f"must be an array of tables (write [[{header}]]), got {_show(items)}")
        for i, item in enumerate(items):
            yield f"{path}[{i}]", item

    def integer(self, tbl, where, key, lo, hi, default=None, required=False):
        """An integer field in lo..hi (booleans are not integers here)."""
        if key not in tbl:
            if required:
                self.fail(_join(where, key), f"{key} is required (an integer {lo}..{hi})")
            return default
        value = tbl[key]
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            self.fail(_join(where, key), f"{key} must be an integer {lo}..{hi}, got {_show(value)}")
        return value

    def choice(self, tbl, where, key, choices, default=None, required=False):
        """A string field from a fixed set."""
        if key not in tbl:
            if required:
                self.fail(_join(where, key), f"{key} is required (one of: {', '.join(choices)})")
            return default
        value = tbl[key]
        if value not in choices:
            self.fail(_join(where, key), f"{key} must be one of: {', '.join(choices)}; got {_show(value)}")
        return value

    def flag(self, tbl, where, key, default):
        if key not in tbl:
            return default
        value = tbl[key]
        if not isinstance(value, bool):
            self.fail(_join(where, key), f"{key} must be true or false, got {_show(value)}")
        return value


def _timeouts(v, top) -> Timeouts:
    where = "timeouts"
    tbl = v.table(top.get(where, {}), where, [f.name for f in dataclasses.fields(Timeouts)])
    d = Timeouts()
    return Timeouts(**{f.name: v.integer(tbl, where, f.name, 1, TIMEOUT_MAX, getattr(d, f.name))
                       for f in dataclasses.fields(Timeouts)})


def _tables(v, top) -> Tables:
    where = "tables"
    tbl = v.table(top.get(where, {}), where, ("conns", "templates", "sweep_interval", "flow_cache"))
    d = Tables()
    conns = v.integer(tbl, where, "conns", CONNS_MIN, CONNS_MAX, d.conns)
    templates = v.integer(tbl, where, "templates", CONNS_MIN, CONNS_MAX, d.templates)
    sweep = tbl.get("sweep_interval", d.sweep_interval)
    if not isinstance(sweep, (int, float)) or isinstance(sweep, bool) or not 0.05 <= sweep <= 60:
        v.fail(_join(where, "sweep_interval"),
               f"sweep_interval must be a number of seconds 0.05..60, got {_show(sweep)}")
    flow_cache = v.integer(tbl, where, "flow_cache", 0, FLOW_CACHE_MAX, d.flow_cache)
    if flow_cache & (flow_cache - 1) or 0 < flow_cache < FLOW_CACHE_MIN:
        v.fail(_join(where, "flow_cache"), f"flow_cache must be a power of two from {FLOW_CACHE_MIN} (entries per "
               f"CPU), or 0 for none; got {flow_cache}")
    return Tables(conns=conns, templates=templates, sweep_interval=float(sweep), flow_cache=flow_cache)


# --- [[mark]] ---------------------------------------------------------------------------------------------------


def _mark(v, item, where) -> MarkRule:
    tbl = v.table(item, where, ("mark", "proto", "dst", "ports"))
    mark = v.integer(tbl, where, "mark", 1, U32_MAX, required=True)
    proto = v.choice(tbl, where, "proto", ("tcp", "udp", "any"), default="any")
    if "dst" not in tbl:
        v.fail(_join(where, "dst"), 'dst is required (a prefix such as "198.51.100.0/24" or "2001:db8::/64")')
    dst_s = tbl["dst"]
    if not isinstance(dst_s, str):
        v.fail(_join(where, "dst"), f"dst must be a prefix string like \"198.51.100.0/24\", got {_show(dst_s)}")
    try:
        dst = ipaddress.ip_network(dst_s, strict=True)
    except ValueError as e:
        hint = ""
        try:
            hint = f" (did you mean \"{ipaddress.ip_network(dst_s, strict=False)}\"?)"
        except ValueError:
            pass
        v.fail(_join(where, "dst"), f"dst must be a network prefix with no host bits set: {e}{hint}")
    _no_zone(v, dst.network_address, _join(where, "dst"), f"/{dst.prefixlen}")
    ports = _ports(v, tbl, where)
    return MarkRule(mark=mark, proto=proto, dst=dst, ports=ports, where=where)


def _ports(v, tbl, where) -> tuple:
    """Parse ``ports = [80, "8000-8080"]`` into merged, sorted inclusive ranges; omitted = () = every port."""
    if "ports" not in tbl:
        return ()
    path = _join(where, "ports")
    raw = tbl["ports"]
    if not isinstance(raw, list):
        v.fail(path, f"ports must be an array of ports and \"lo-hi\" ranges, got {_show(raw)}")
    if not raw:
        v.fail(path, "ports is empty; omit the key to match every port")
    ranges = []
    for i, p in enumerate(raw):
        bad = f"each port must be an integer 1..65535 or a string \"lo-hi\" with 1 <= lo <= hi <= 65535, got {_show(p)}"
        if isinstance(p, int) and not isinstance(p, bool):
            lo = hi = p
        elif isinstance(p, str) and re.fullmatch(r"\s*\d+\s*(-\s*\d+\s*)?", p):
            parts = [int(x) for x in p.split("-")]
            lo, hi = parts[0], parts[-1]
        else:
            v.fail(f"{path}[{i}]", bad)
        if not 1 <= lo <= hi <= 65535:
            v.fail(f"{path}[{i}]", bad)
        ranges.append((lo, hi))
    ranges.sort()
    merged = [ranges[0]]
    for lo, hi in ranges[1:]:
        plo, phi = merged[-1]
        if lo <= phi + 1:  # overlapping or adjacent
            merged[-1] = (plo, max(phi, hi))
        else:
            merged.append((lo, hi))
    return tuple(merged)


def _first_overlap(a, b):
    """First port in both sorted range tuples, or None."""
    for alo, ahi in a:
        for blo, bhi in b:
            lo = max(alo, blo)
            if lo <= min(ahi, bhi):
                return lo
    return None


def _check_mark_conflicts(v, marks):
    """Reject two rules with the same prefix and proto that would give one packet two different marks."""
    groups = {}
    for rule in marks:
        groups.setdefault((rule.dst, rule.proto), []).append(rule)
    for (dst, proto), rules in groups.items():
        for j, b in enumerate(rules):
            for a in rules[:j]:
                if a.mark == b.mark:
                    continue
                if not a.ports and not b.ports:
                    what = "every port"
                elif a.ports and b.ports:
                    port = _first_overlap(a.ports, b.ports)
                    if port is None:
                        continue
                    what = f"port {port}"
                else:
                    continue  # a ported rule is more specific than a no-ports rule: no conflict
                v.fail(b.where, f"conflicts with {a.where}: both match {proto} {dst} {what} "
                                f"but give mark {b.mark} and mark {a.mark}")


# --- [[service]] ------------------------------------------------------------------------------------------------

_SERVICE_KEYS = ("fwmark", "family", "vip", "port", "proto", "scheduler", "method", "persistence_timeout",
                 "persistence_netmask", "persistence_mode", "expire_quiescent_template", "mh_table_size",
                 "sched_flags", "real")


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
                v.fail(_join(where, k), f"{k} applies only to vip services; a fwmark service matches by mark")
        family = 6 if fam_key == "ipv6" else 4
    elif "vip" in tbl:
        vip = _address(v, tbl["vip"], _join(where, "vip"), "vip")
        family = vip.version
        if fam_key is not None and fam_key != f"ipv{family}":
            v.fail(_join(where, "family"), f"family {_show(fam_key)} does not match vip {vip} (IPv{family}); "
                                           "remove family, a vip service takes it from the address")
        port = v.integer(tbl, where, "port", 0, 65535, required=True)
        proto = v.choice(tbl, where, "proto", ("tcp", "udp"), required=True)
    else:
        v.fail(where, "a service needs either fwmark = N or vip/port/proto")

    scheduler = _scheduler(v, tbl, where)
    method = tbl.get("method", "dr")
    if method in METHODS_NOT_YET:
        v.fail(_join(where, "method"), f"method {_show(method)} is not supported yet (supported: {', '.join(METHODS)})")
    if method not in METHODS:
        v.fail(_join(where, "method"), f"unknown method {_show(method)} (supported: {', '.join(METHODS)})")

    ptimeout = v.integer(tbl, where, "persistence_timeout", 1, TIMEOUT_MAX)
    if ptimeout is None:
        for k in ("persistence_netmask", "persistence_mode", "expire_quiescent_template"):
            if k in tbl:
                v.fail(_join(where, k), f"{k} has no effect without persistence_timeout; "
                                        "set persistence_timeout or remove it")
    try:
        pmask = netmask_bytes(family, tbl.get("persistence_netmask"))
    except ValueError as e:
        v.fail(_join(where, "persistence_netmask"), f"persistence_netmask: {e}")
    pmode = v.choice(tbl, where, "persistence_mode", PERSISTENCE_MODES, default="lvs")
    eqt = v.flag(tbl, where, "expire_quiescent_template", False)
    if port == 0 and ptimeout is None:
        v.fail(_join(where, "port"), "port 0 (all ports) requires persistence_timeout, as in IPVS; "
                                     "set persistence_timeout or give a port")

    reals = _reals(v, tbl, where, family)
    if "mh_table_size" in tbl and scheduler != "mh":
        v.fail(_join(where, "mh_table_size"), f"mh_table_size applies only to scheduler \"mh\" "
                                              f"(this service uses {_show(scheduler)})")
    mh_size = v.integer(tbl, where, "mh_table_size", MH_SIZE_MIN, MH_SIZE_MAX, 4093)
    if not is_prime(mh_size):
        v.fail(_join(where, "mh_table_size"), f"mh_table_size must be a prime number, got {mh_size}")
    if scheduler == "mh" and mh_size < len(reals):
        v.fail(_join(where, "mh_table_size"), f"mh_table_size {mh_size} is smaller than the number of reals "
                                              f"({len(reals)}); use a prime well above it")

    flags = _sched_flags(v, tbl, where, scheduler)
    return Service(fwmark=fwmark, vip=vip, port=port, proto=proto, family=family, scheduler=scheduler,
                   method=method, persistence_timeout=ptimeout, persistence_netmask=pmask, persistence_mode=pmode,
                   expire_quiescent_template=eqt, mh_table_size=mh_size, reals=reals, where=where,
                   sched_flags=flags)


def _sched_flags(v, tbl, where, scheduler) -> tuple:
    if "sched_flags" not in tbl:
        return ()
    fwhere = _join(where, "sched_flags")
    value = tbl["sched_flags"]
    allowed = SCHED_FLAGS.get(scheduler, ())
    if not allowed:
        v.fail(fwhere, f"scheduler {_show(scheduler)} takes no flags (sh takes {', '.join(SCHED_FLAGS['sh'])}; "
                       f"mh takes {', '.join(SCHED_FLAGS['mh'])})")
    if not isinstance(value, list):
        v.fail(fwhere, f"sched_flags must be a list like [\"{allowed[0]}\"], got {_show(value)}")
    for i, f in enumerate(value):
        if f not in allowed:
            v.fail(f"{fwhere}[{i}]", f"unknown flag {_show(f)} for scheduler {_show(scheduler)} "
                                     f"(allowed: {', '.join(allowed)})")
    return tuple(sorted(set(value)))


def _scheduler(v, tbl, where) -> str:
    s = tbl.get("scheduler", DEFAULT_SCHEDULER)
    supported = ", ".join(SCHEDULERS)
    if s in SCHEDULERS:
        return s
    if s in IPVS_SCHEDULERS_NOT_YET:
        v.fail(_join(where, "scheduler"), f"scheduler '{s}' is not supported yet (supported: {supported})")
    v.fail(_join(where, "scheduler"), f"unknown scheduler {_show(s)} (supported: {supported})")


def _address(v, value, where, what):
    """A single IP address (no prefix)."""
    if isinstance(value, str):
        try:
            addr = ipaddress.ip_address(value)
        except ValueError:
            pass
        else:
            return _no_zone(v, addr, where)
    v.fail(where, f"{what} must be an IPv4 or IPv6 address like \"198.51.100.10\", got {_show(value)}")


def _no_zone(v, addr, where, suffix=""):
    """Refuse an IPv6 zone index ("fe80::1%eth0"): the maps hold 16 bytes, so it would be silently dropped there,
    and two spellings of one address would pass as two (duplicate services, reals, conflicting mark rules)."""
    zone = getattr(addr, "scope_id", None)
    if zone:
        plain = ipaddress.IPv6Address(addr.packed)
        v.fail(where, f"a zone index (\"%{zone}\") has no meaning here; write \"{plain}{suffix}\"")
    return addr


def _reals(v, tbl, where, family) -> tuple:
    reals = []
    seen = {}
    for rwhere, item in v.array_of_tables(tbl, where, "real"):
        rt = v.table(item, rwhere, ("address", "weight", "uthreshold", "lthreshold"))
        if "address" not in rt:
            v.fail(_join(rwhere, "address"), "address is required")
        addr = _address(v, rt["address"], _join(rwhere, "address"), "address")
        if addr.version != family:
            v.fail(_join(rwhere, "address"), f"real {addr} is IPv{addr.version} but the service is IPv{family}")
        if addr in seen:
            v.fail(_join(rwhere, "address"), f"duplicate real {addr}: already given as {seen[addr]}")
        seen[addr] = rwhere
        weight = v.integer(rt, rwhere, "weight", 0, 65535, 1)
        upper = v.integer(rt, rwhere, "uthreshold", 0, U32_MAX, 0)
        lower = v.integer(rt, rwhere, "lthreshold", 0, U32_MAX, 0)
        if lower and not upper:
            v.fail(_join(rwhere, "lthreshold"), "lthreshold has no effect without uthreshold")
        if upper and lower >= upper:
            v.fail(_join(rwhere, "lthreshold"), f"lthreshold {lower} must be below uthreshold {upper}")
        reals.append(Real(address=addr, weight=weight, where=rwhere, uthreshold=upper, lthreshold=lower))
    return tuple(reals)


def _check_duplicate_services(v, services):
    first = {}
    for s in services:
        if s.key in first:
            v.fail(s.where, f"duplicate service {s.name}: already defined as {first[s.key]}")
        first[s.key] = s.where


# ---------------------------------------------------------------------------------------------------------------
# Config -> TOML (`xlb save`): parse(dumps(cfg)) == cfg, field paths included, the source aside.


def to_tree(cfg: Config) -> dict:
    """The TOML-shaped tree of ``cfg``: every setting explicit, optional keys only where they mean something."""
    tree = {"timeouts": dataclasses.asdict(cfg.timeouts), "tables": dataclasses.asdict(cfg.tables)}
    tree["mark"] = [_mark_tree(rule) for rule in cfg.marks]
    tree["service"] = [_service_tree(svc) for svc in cfg.services]
    return tree


def _mark_tree(rule) -> dict:
    out = {"mark": rule.mark, "proto": rule.proto, "dst": str(rule.dst)}
    if rule.ports:
        out["ports"] = [lo if lo == hi else f"{lo}-{hi}" for lo, hi in rule.ports]
    return out


def netmask_spec(family: int, mask: bytes):
    """The config spelling of a 16-byte persistence mask: a dotted IPv4 mask, or an IPv6 prefix length string."""
    if family == 4:
        return str(ipaddress.IPv4Address(mask[:4]))
    return str(bin(int.from_bytes(mask, "big")).count("1"))


def _service_tree(svc) -> dict:
    if svc.fwmark is not None:
        out = {"fwmark": svc.fwmark, "family": f"ipv{svc.family}"}
    else:
        out = {"vip": str(svc.vip), "port": svc.port, "proto": svc.proto}
    out["scheduler"] = svc.scheduler
    if svc.sched_flags:
        out["sched_flags"] = list(svc.sched_flags)
    if svc.scheduler == "mh":
        out["mh_table_size"] = svc.mh_table_size
    out["method"] = svc.method
    if svc.persistence_timeout is not None:
        out["persistence_timeout"] = svc.persistence_timeout
        out["persistence_netmask"] = netmask_spec(svc.family, svc.persistence_netmask)
        out["persistence_mode"] = svc.persistence_mode
        if svc.expire_quiescent_template:
            out["expire_quiescent_template"] = True
    reals = []
    for r in svc.reals:
        rt = {"address": str(r.address), "weight": r.weight}
        if r.uthreshold:
            rt["uthreshold"] = r.uthreshold
        if r.lthreshold:
            rt["lthreshold"] = r.lthreshold
        reals.append(rt)
    out["real"] = reals
    return out


def dumps(tree: dict, header: str = "") -> str:
    """TOML text for a tree of tables, arrays of tables and scalar/scalar-array values (what to_tree makes)."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    _dump_table(lines, tree, "", 0)
    return "\n".join(lines).strip("\n") + "\n"


def _dump_table(lines, tbl, path, depth):
    indent = "  " * max(0, depth - 1)
    subs = []
    for key, value in tbl.items():
        if isinstance(value, dict) or (isinstance(value, list) and value and isinstance(value[0], dict)):
            subs.append((key, value))
        elif not (isinstance(value, list) and not value and key in ("mark", "service", "real")):
            lines.append(f"{indent}{key} = {_toml_value(value)}")
    for key, value in subs:
        sub = f"{path}.{key}" if path else key
        items = [value] if isinstance(value, dict) else value
        for item in items:
            lines.append("")
            lines.append(f"{'  ' * depth}[{sub}]" if isinstance(value, dict) else f"{'  ' * depth}[[{sub}]]")
            _dump_table(lines, item, sub, depth + 1)


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string: JSON's escapes are TOML's
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")
