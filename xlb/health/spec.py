"""What to check, as keepalived names it: a frozen model the TOML config and the keepalived importer both build,
validated here (pure: no sockets, no root) with errors that name the field.

A service carries the health settings of keepalived's ``virtual_server`` (``delay_loop``, ``quorum``,
``sorry_server``...), each real those of a ``real_server`` and its checkers (``[service.real.check]``, a table or a
list). ``resolve`` fills every unset value the way keepalived does: checker, else real server, else virtual server,
else the checker kind's default."""
import dataclasses
import difflib
import ipaddress
import re
import shlex
from dataclasses import dataclass

from ..errors import ConfigError
from .via import check_destination, via_vip

DEFAULT_DELAY_LOOP = 60.0
DEFAULT_CONNECT_TIMEOUT = 5.0
WEIGHT_MAX = 65535
DNS_TYPES = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "MX": 15, "TXT": 16, "AAAA": 28, "RRSIG": 46, "DNSKEY": 48}
HTTP_PROTOCOLS = ("1.0", "1.0C", "1.1")
SMTP_DEFAULT_HELO = "smtpchecker.keepalived.org"

# kind -> (default retry, default delay_before_retry; None: the checker's delay_loop)
KIND_DEFAULTS = {
    "TCP_CHECK": (1, 1.0), "HTTP_GET": (1, 3.0), "SSL_GET": (1, 3.0), "MISC_CHECK": (0, 1.0),
    "DNS_CHECK": (3, None), "UDP_CHECK": (1, 1.0), "PING_CHECK": (1, 1.0), "SMTP_CHECK": (1, 1.0),
    "FILE_CHECK": (0, 1.0),
}
UNSUPPORTED = {"BFD_CHECK": "BFD_CHECK is not supported by xlb"}

TIMING = ("retry", "delay_before_retry", "delay_loop", "warmup", "alpha", "connect_timeout")
_CONNECT = ("connect_ip", "connect_port", "bindto", "bind_port", "connect_timeout")
_COMMON = TIMING + ("log_all_failures",)
_HTTP = _CONNECT + ("url", "virtualhost", "http_protocol", "fast_recovery", "nb_get_retry")
KIND_KEYS = {
    "TCP_CHECK": _CONNECT,
    "HTTP_GET": _HTTP,
    "SSL_GET": _HTTP + ("enable_sni", "ca", "certificate", "key"),
    "MISC_CHECK": ("misc_path", "misc_timeout", "misc_dynamic", "user"),
    "DNS_CHECK": _CONNECT + ("type", "name"),
    "UDP_CHECK": _CONNECT + ("payload", "require_reply", "min_reply_length", "max_reply_length"),
    "PING_CHECK": _CONNECT,
    "SMTP_CHECK": _CONNECT + ("helo_name",),
    "FILE_CHECK": ("track_file", "weight", "reverse"),
}
REAL_KEYS = TIMING + ("inhibit_on_failure", "notify_up", "notify_down", "check_via_vip", "check")
SERVICE_KEYS = TIMING + ("inhibit_on_failure", "quorum", "hysteresis", "quorum_up", "quorum_down", "sorry_server",
                         "sorry_server_inhibit", "omega", "on_real_failure", "check_via_vip", "script_user", "check")
ON_REAL_FAILURE = ("keep", "reschedule", "reset")


@dataclass(frozen=True)
class Url:
    """One ``url { }`` of HTTP_GET/SSL_GET: every url of a checker must pass."""
    path: str
    status_code: tuple = ((200, 299),)  # inclusive ranges
    digest: str | None = None           # MD5 of the body, 32 lower-case hex digits
    regex: str | None = None
    regex_no_match: bool = False
    virtualhost: str | None = None


@dataclass(frozen=True)
class Check:
    """One checker block. ``None`` means "inherit" until ``resolve`` fills it in."""
    kind: str
    where: str = ""
    connect_ip: str | None = None
    connect_port: int | None = None
    bindto: str | None = None
    bind_port: int | None = None
    connect_timeout: float | None = None
    retry: int | None = None
    delay_before_retry: float | None = None
    delay_loop: float | None = None
    warmup: float | None = None
    alpha: bool | None = None
    log_all_failures: bool = False
    url: tuple = ()
    virtualhost: str | None = None
    http_protocol: str = "1.0"
    fast_recovery: bool = False
    enable_sni: bool = False
    ca: str | None = None
    certificate: str | None = None
    key: str | None = None
    misc_path: tuple = ()
    misc_timeout: float | None = None
    misc_dynamic: bool = False
    user: tuple | None = None            # (user, group or None)
    type: str = "SOA"
    name: str = "."
    payload: bytes = b""
    require_reply: bool = False
    reply: bytes | None = None
    reply_mask: bytes | None = None      # 0xf nibbles where require_reply had X (any value)
    min_reply_length: int = 0
    max_reply_length: int = 255
    helo_name: str = SMTP_DEFAULT_HELO
    track_file: str | None = None
    weight: int = 0
    reverse: bool = False
    via: str | None = None               # check_via_vip: the real the packets to connect_ip (the VIP) go to
    so_mark: int | None = None           # set by the daemon: the mark its policy route to ``via`` takes
    via_tunnel: object = None            # check_via_vip to a tun service's real: its config.tunnel.Tunnel


@dataclass(frozen=True)
class Real:
    address: str
    port: int = 0
    weight: int = 1
    checks: tuple = ()
    inhibit_on_failure: bool | None = None
    notify_up: tuple | None = None
    notify_down: tuple | None = None
    retry: int | None = None
    delay_before_retry: float | None = None
    delay_loop: float | None = None
    warmup: float | None = None
    alpha: bool | None = None
    connect_timeout: float | None = None
    check_via_vip: bool | None = None

    @property
    def key(self):
        return (self.address, self.port)


@dataclass(frozen=True)
class Service:
    """The health side of one virtual service; ``name`` is how logs show it (``[198.51.100.10]:tcp:80``)."""
    name: str
    protocol: str = "tcp"
    reals: tuple = ()
    delay_loop: float = DEFAULT_DELAY_LOOP
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    retry: int | None = None
    delay_before_retry: float | None = None
    warmup: float | None = None
    alpha: bool = False
    inhibit_on_failure: bool = False
    quorum: int = 1
    hysteresis: int = 0
    quorum_up: tuple | None = None
    quorum_down: tuple | None = None
    sorry_server: tuple | None = None    # (address, port)
    sorry_server_inhibit: bool = False
    omega: bool = False
    on_real_failure: str | None = None   # None: "keep" for TCP, "reschedule" for UDP (bpf/consts.h)
    check_via_vip: bool = False
    vip: str | None = None               # the service's VIP (None: a fwmark service), where check_via_vip goes
    tunnel: object = None                # method "tun": its config.tunnel.Tunnel (check_via_vip wraps checks so)
    script_user: tuple | None = None     # (user, group or None) the notify/quorum commands run as; None: the daemon's


# --- field readers: each takes (value, where) and returns the value to store or raises ConfigError ---------------

def _user(r, v, where):
    """ "USER" or "USER GROUP" (or a list of one or two names) -> (user, group or None)."""
    parts = v.split() if isinstance(v, str) else v
    if not isinstance(parts, list) or not 1 <= len(parts) <= 2 or not all(isinstance(p, str) for p in parts):
        r.fail(where, f"must be \"USER\" or \"USER GROUP\", got {v!r}")
    return (parts[0], parts[1] if len(parts) > 1 else None)


class _Reader:
    def __init__(self, source):
        self.source = source

    def fail(self, where, message):
        raise ConfigError(self.source, where, message)

    def seconds(self, v, where, lo=0.0):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < lo:
            self.fail(where, f"must be a number of seconds >= {lo:g}, got {v!r}")
        return float(v)

    def count(self, v, where, lo=0, hi=2**31 - 1):
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            self.fail(where, f"must be an integer {lo}..{hi}, got {v!r}")
        return v

    def boolean(self, v, where):
        if not isinstance(v, bool):
            self.fail(where, f"must be true or false, got {v!r}")
        return v

    def text(self, v, where):
        if not isinstance(v, str) or not v:
            self.fail(where, f"must be a non-empty string, got {v!r}")
        return v

    def address(self, v, where):
        try:
            return str(ipaddress.ip_address(self.text(v, where)))
        except ValueError:
            self.fail(where, f"{v!r} is not an IPv4 or IPv6 address")

    def port(self, v, where):
        return self.count(v, where, 1, 65535)

    def argv(self, v, where):
        """A command as argv: a list of strings, or one string split like a shell would (never run by one)."""
        if isinstance(v, str):
            try:
                v = shlex.split(v)
            except ValueError as e:
                self.fail(where, f"cannot split the command: {e}")
        if not isinstance(v, list) or not v or not all(isinstance(a, str) and a for a in v):
            self.fail(where, f"must be a command (a string or a list of strings), got {v!r}")
        return tuple(v)

    def hex_bytes(self, v, where, wildcards=False):
        """Hex digits (spaces allowed) -> bytes; with ``wildcards`` an X nibble matches anything (bytes, mask)."""
        digits = re.sub(r"\s+", "", self.text(v, where))
        allowed = "0-9a-fA-F" + ("xX" if wildcards else "")
        if len(digits) % 2 or not re.fullmatch(f"[{allowed}]+", digits):
            self.fail(where, f"must be an even number of hex digits{' (X: any)' if wildcards else ''}, got {v!r}")
        data = bytes.fromhex(re.sub("[xX]", "0", digits))
        mask = bytes.fromhex("".join("f" if c in "xX" else "0" for c in digits))
        return (data, mask) if wildcards else data

    def keys(self, tbl, where, allowed):
        """``tbl`` is a table of ``allowed`` keys only: the first stranger is named, with the likeliest fix."""
        if not isinstance(tbl, dict):
            self.fail(where, f"must be a table, got {tbl!r}")
        stranger = next((k for k in tbl if k not in allowed), None)
        if stranger is not None:
            near = difflib.get_close_matches(stranger, allowed, n=1)
            self.fail(f"{where}.{stranger}", f"unknown key '{stranger}'; "
                      + (f"did you mean '{near[0]}'? " if near else "") + f"allowed here: {', '.join(allowed)}")
        return tbl

    def tables(self, v, where):
        """A table or a list of tables -> [(where, table)]."""
        if isinstance(v, dict):
            return [(where, v)]
        if not isinstance(v, list):
            self.fail(where, f"must be a table or a list of tables, got {v!r}")
        return [(f"{where}[{i}]", t) for i, t in enumerate(v)]


_TIMING_FIELDS = {
    "retry": lambda r, v, w: r.count(v, w), "nb_get_retry": lambda r, v, w: r.count(v, w),
    "delay_before_retry": lambda r, v, w: r.seconds(v, w), "delay_loop": lambda r, v, w: r.seconds(v, w, 0.001),
    "warmup": lambda r, v, w: r.seconds(v, w), "alpha": lambda r, v, w: r.boolean(v, w),
    "connect_timeout": lambda r, v, w: r.seconds(v, w, 0.001),
}
_FIELDS = dict(_TIMING_FIELDS, **{
    "connect_ip": _Reader.address, "bindto": _Reader.address,
    "connect_port": _Reader.port, "bind_port": _Reader.port,
    "log_all_failures": _Reader.boolean, "fast_recovery": _Reader.boolean, "enable_sni": _Reader.boolean,
    "misc_dynamic": _Reader.boolean, "require_reply": _Reader.boolean, "reverse": _Reader.boolean,
    "virtualhost": _Reader.text, "ca": _Reader.text, "certificate": _Reader.text, "key": _Reader.text,
    "helo_name": _Reader.text, "track_file": _Reader.text, "misc_path": _Reader.argv,
    "misc_timeout": lambda r, v, w: r.seconds(v, w, 0.001), "payload": _Reader.hex_bytes,
    "min_reply_length": lambda r, v, w: r.count(v, w, 0, 65535),
    "max_reply_length": lambda r, v, w: r.count(v, w, 0, 65535),
    "weight": lambda r, v, w: r.count(v, w, -254, 254),
})


def _choice(r, v, where, choices):
    if v not in choices:
        r.fail(where, f"must be one of: {', '.join(choices)}; got {v!r}")
    return v


def _status_codes(r, v, where):
    """200, "200-299", or a list of those -> tuple of inclusive ranges."""
    out = []
    for i, item in enumerate(v if isinstance(v, list) else [v]):
        w = f"{where}[{i}]" if isinstance(v, list) else where
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+))?\s*", str(item)) if not isinstance(item, bool) else None
        lo, hi = (int(m.group(1)), int(m.group(2) or m.group(1))) if m else (0, 0)
        if not m or not 100 <= lo <= hi <= 599:
            r.fail(w, f"must be an HTTP status (100..599) or a range like \"200-299\", got {item!r}")
        out.append((lo, hi))
    return tuple(out)


def _url(r, tbl, where):
    r.keys(tbl, where, ("path", "status_code", "digest", "regex", "regex_no_match", "virtualhost"))
    if "path" not in tbl:
        r.fail(f"{where}.path", "path is required (keepalived ignores a url without one)")
    kw = {"path": r.text(tbl["path"], f"{where}.path")}
    if "status_code" in tbl:
        kw["status_code"] = _status_codes(r, tbl["status_code"], f"{where}.status_code")
    if "digest" in tbl:
        d = r.text(tbl["digest"], f"{where}.digest").lower()
        if not re.fullmatch("[0-9a-f]{32}", d):
            r.fail(f"{where}.digest", f"must be an MD5 digest (32 hex digits), got {tbl['digest']!r}")
        kw["digest"] = d
    if "regex" in tbl:
        try:
            re.compile(kw.setdefault("regex", r.text(tbl["regex"], f"{where}.regex")))
        except re.error as e:
            r.fail(f"{where}.regex", f"invalid regular expression: {e}")
    for k, read in (("regex_no_match", r.boolean), ("virtualhost", r.text)):
        if k in tbl:
            kw[k] = read(tbl[k], f"{where}.{k}")
    return Url(**kw)


def parse_check(tbl, where, source="config"):
    """One ``check`` table (keepalived's keywords, ``type = "TCP_CHECK"``-style ``kind``) -> Check."""
    r = _Reader(source)
    if not isinstance(tbl, dict):
        r.fail(where, f"must be a table, got {tbl!r}")
    kind = tbl.get("kind")
    if kind in UNSUPPORTED:
        r.fail(f"{where}.kind", UNSUPPORTED[kind])
    _choice(r, kind, f"{where}.kind", tuple(KIND_DEFAULTS))
    allowed = ("kind",) + KIND_KEYS[kind] + (() if kind == "FILE_CHECK" else _COMMON)
    r.keys(tbl, where, allowed)
    kw = {}
    for k, v in tbl.items():
        w = f"{where}.{k}"
        if k == "kind":
            continue
        if k == "url":
            kw["url"] = tuple(_url(r, t, tw) for tw, t in r.tables(v, w))
        elif k == "type":
            kw["type"] = _choice(r, str(v).upper(), w, tuple(DNS_TYPES))
        elif k == "name":
            if not isinstance(v, str) or (v != "." and ("" in v.rstrip(".").split(".") or v.startswith("."))):
                r.fail(w, f"must be a domain name without empty labels, got {v!r}")
            kw["name"] = v
        elif k == "http_protocol":
            kw[k] = _choice(r, v, w, HTTP_PROTOCOLS)
        elif k == "require_reply":
            if isinstance(v, bool):
                kw[k] = v
            else:
                kw[k] = True
                kw["reply"], kw["reply_mask"] = r.hex_bytes(v, w, wildcards=True)
        elif k == "user":
            kw[k] = _user(r, v, w)
        else:
            kw["retry" if k == "nb_get_retry" else k] = _FIELDS[k](r, v, w)
    if kind in ("HTTP_GET", "SSL_GET") and not kw.get("url"):
        r.fail(f"{where}.url", f"{kind} needs at least one url {{ path ... }}")
    if kind == "MISC_CHECK" and not kw.get("misc_path"):
        r.fail(f"{where}.misc_path", "MISC_CHECK needs misc_path (the command to run)")
    if kind == "FILE_CHECK" and not kw.get("track_file"):
        r.fail(f"{where}.track_file", "FILE_CHECK needs track_file (the file to read)")
    if kw.get("min_reply_length", 0) > kw.get("max_reply_length", 255):
        r.fail(f"{where}.min_reply_length", "min_reply_length > max_reply_length: the check would always fail")
    if kw.get("bindto") and kw.get("connect_ip") and \
            ipaddress.ip_address(kw["bindto"]).version != ipaddress.ip_address(kw["connect_ip"]).version:
        r.fail(f"{where}.bindto", "bindto and connect_ip are of different address families")
    return Check(kind=kind, where=where, **kw)


def _defaults(r, tbl, where, keys):
    return {k: _TIMING_FIELDS[k](r, tbl[k], f"{where}.{k}") for k in keys if k in tbl}


def parse_real(address, port, weight, tbl, where, source="config", default_checks=()):
    """The health keys of one ``[[service.real]]`` table (other keys are the config's business)."""
    r = _Reader(source)
    kw = _defaults(r, tbl, where, TIMING)
    for k in ("notify_up", "notify_down"):
        if k in tbl:
            kw[k] = r.argv(tbl[k], f"{where}.{k}")
    for k in ("inhibit_on_failure", "check_via_vip"):
        if k in tbl:
            kw[k] = r.boolean(tbl[k], f"{where}.{k}")
    checks = default_checks
    if "check" in tbl:
        checks = tuple(parse_check(t, w, source) for w, t in r.tables(tbl["check"], f"{where}.check"))
    return Real(address=address, port=port, weight=weight, checks=checks, **kw)


def parse_service(name, protocol, tbl, reals, where, source="config", vip=None, tunnel=None):
    """The health keys of one ``[[service]]`` table; ``reals`` are (address, port, weight, table, where)."""
    r = _Reader(source)
    kw = _defaults(r, tbl, where, TIMING)
    for k in ("inhibit_on_failure", "sorry_server_inhibit", "omega", "check_via_vip"):
        if k in tbl:
            kw[k] = r.boolean(tbl[k], f"{where}.{k}")
    if "on_real_failure" in tbl:
        kw["on_real_failure"] = _choice(r, tbl["on_real_failure"], f"{where}.on_real_failure", ON_REAL_FAILURE)
    for k, lo in (("quorum", 1), ("hysteresis", 0)):
        if k in tbl:
            kw[k] = r.count(tbl[k], f"{where}.{k}", lo)
    for k in ("quorum_up", "quorum_down"):
        if k in tbl:
            kw[k] = r.argv(tbl[k], f"{where}.{k}")
    if "script_user" in tbl:
        kw["script_user"] = _user(r, tbl["script_user"], f"{where}.script_user")
    if "sorry_server" in tbl:
        v, w = tbl["sorry_server"], f"{where}.sorry_server"
        if isinstance(v, dict):
            r.keys(v, w, ("address", "port"))
            kw["sorry_server"] = (r.address(v.get("address"), f"{w}.address"),
                                  r.port(v["port"], f"{w}.port") if "port" in v else 0)
        else:
            kw["sorry_server"] = (r.address(v, w), 0)
    defaults = ()
    if "check" in tbl:
        defaults = tuple(parse_check(t, cw, source) for cw, t in r.tables(tbl["check"], f"{where}.check"))
    built = tuple(parse_real(a, p, wt, t, rw, source, defaults) for a, p, wt, t, rw in reals)
    svc = Service(name=name, protocol=protocol, reals=built, vip=vip, tunnel=tunnel, **kw)
    total = sum(max(0, x.weight) for x in built)
    if svc.hysteresis >= svc.quorum and "hysteresis" in tbl:
        r.fail(f"{where}.hysteresis", f"hysteresis {svc.hysteresis} must be below quorum {svc.quorum}")
    if "quorum" in tbl and svc.quorum > total and not any(c.misc_dynamic for x in built for c in x.checks):
        r.fail(f"{where}.quorum", f"quorum {svc.quorum} exceeds the total weight of the reals ({total}): "
                                  "the service could never gain quorum")
    for x in built:
        for c in x.checks:
            check_destination(r, c, x, svc)
    return svc


def resolve(check, real, service):
    """``check`` with every inherited value filled in: checker, else real, else service, else the kind's default."""
    def pick(name, default):
        for src in (check, real, service):
            v = getattr(src, name, None)
            if v is not None:
                return v
        return default
    retry_default, dbr_default = KIND_DEFAULTS[check.kind]
    via = via_vip(real, service) and check.kind not in ("MISC_CHECK", "FILE_CHECK")
    delay_loop = pick("delay_loop", DEFAULT_DELAY_LOOP)
    return dataclasses.replace(
        check, delay_loop=delay_loop, retry=pick("retry", retry_default),
        delay_before_retry=pick("delay_before_retry", dbr_default if dbr_default else delay_loop),
        warmup=pick("warmup", delay_loop), alpha=bool(pick("alpha", False)) and check.kind != "FILE_CHECK",
        connect_timeout=pick("connect_timeout", DEFAULT_CONNECT_TIMEOUT),
        connect_ip=check.connect_ip or (service.vip if via else None) or real.address,
        connect_port=check.connect_port or real.port, misc_timeout=check.misc_timeout or delay_loop,
        via=real.address if via else None, via_tunnel=service.tunnel if via else None)


def inhibit(real, service):
    return real.inhibit_on_failure if real.inhibit_on_failure is not None else service.inhibit_on_failure
