"""Import keepalived.conf (and iptables MARK rules) into xlb's Config.

Pure: no bcc, no root. :func:`load` reads the file with xlb/importers/keepalived/reader.py (keepalived's own reading rules:
comments, ``@`` lines, ``$`` parameters, ``~SEQ``, ``include``), interprets the ``virtual_server``,
``virtual_server_group`` and ``global_defs lvs_timeouts`` parts into the TOML-shaped tree xlb/config/model.py
validates (:func:`xlb.config.model.from_tree`), so the native config stays the one validator. A config error about a
field is re-raised naming the keepalived file, line and keyword that produced the field.

What keepalived calls a configuration problem in a virtual server (``keepalived -t`` says it and exits 5) is an
error here: xlb never guesses a correction (keepalived's "no protocol set - defaulting to UDP"), except where
keepalived's own correction changes nothing under direct routing and keepalived runs the config: those
(``protocol`` of a fwmark service, a real's port) are Problems of kind "warning", logged, and the config runs.
What keepalived accepts but xlb cannot forward the same way (NAT, TUN, lblc, lblcr, SCTP, one-packet scheduling,
persistence engines, weights above 65535) is an error of kind "unsupported". Sections xlb does not use (VRRP,
BFD, global settings other than lvs_timeouts, ...) are skipped with one warning per kind of section.
Health-check blocks and the checker settings (delay_loop, quorum, sorry_server, ...) are kept, unchecked, in
:class:`Import` for the health-check work; until then xlb does not run them and says so once.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ...config import model as xconfig
from ...config import realcheck
from ...errors import ConfigError
from .reader import Reader, build_tree

# keepalived 2.2.7's list of valid lvs_sched values (check_parser.c).
KEEPALIVED_SCHEDULERS = ("rr", "wrr", "lc", "wlc", "lblc", "sh", "mh", "dh", "fo", "ovf", "lblcr", "sed", "nq")
CHECKERS = ("TCP_CHECK", "HTTP_GET", "SSL_GET", "MISC_CHECK", "SMTP_CHECK", "DNS_CHECK", "UDP_CHECK",
            "PING_CHECK", "FILE_CHECK", "BFD_CHECK")
# Settings of the health checker (virtual_server and real_server level): kept for the health-check work.
VS_CHECK_SETTINGS = ("delay_loop", "retry", "delay_before_retry", "warmup", "connect_timeout",
                     "inhibit_on_failure", "alpha", "omega", "quorum", "quorum_up", "quorum_down", "hysteresis",
                     "ha_suspend", "smtp_alert", "virtualhost", "snmp_name", "sorry_server",
                     "sorry_server_inhibit", "sorry_server_lvs_method", "track_file")
RS_CHECK_SETTINGS = ("inhibit_on_failure", "notify_up", "notify_down", "alpha", "retry", "delay_before_retry",
                     "warmup", "connect_timeout", "delay_loop", "smtp_alert", "virtualhost", "snmp_name",
                     "track_file", "track_bfd")
IPVS_DEFAULT_PERSISTENCE = 360  # seconds, ipvsadm -p without a value, and keepalived's persistence_timeout alone
LVS_MAX_TIMEOUT = 86400 * 31
WEIGHT_MAX = 65535  # bpf/structs.h real.weight is a __u16
IPVS_WEIGHT_MAX = 2**31 - 1  # keepalived's IPVS_WEIGHT_LIMIT (INT_MAX)
GROUP_RANGE_MAX = 256  # addresses one virtual_server_group range may expand to
MAX_LISTED = 50  # problems an error message lists (all are in KeepalivedError.problems)


@dataclass(frozen=True)
class Problem:
    """Something in the keepalived config that stops xlb from running it."""

    file: str
    line: int
    keyword: str
    message: str
    # "error": keepalived -t reports it too; "unsupported": keepalived runs it, xlb cannot; "warning": keepalived -t
    # reports it (and exits non-zero) but keepalived corrects it and runs, and so does xlb, the same way.
    kind: str = "error"

    def __str__(self):
        tag = "not supported by xlb: " if self.kind == "unsupported" else ""
        return f"{self.file}: line {self.line}: {self.keyword}: {tag}{self.message}"


class KeepalivedError(ConfigError):
    """The keepalived config has problems; ``problems`` lists them all, in file order."""

    def __init__(self, problems):
        self.problems = tuple(problems)
        first = self.problems[0]
        tag = "not supported by xlb: " if first.kind == "unsupported" else ""
        message = f"{first.keyword}: {tag}{first.message}"
        if len(self.problems) > 1:
            shown = self.problems[1:1 + MAX_LISTED]
            message += f" (and {len(self.problems) - 1} more problems)\n" + "\n".join(f"  {p}" for p in shown)
            if len(self.problems) > 1 + MAX_LISTED:
                message += f"\n  ... {len(self.problems) - 1 - MAX_LISTED} more not listed"
        super().__init__(first.file, f"line {first.line}", message)

    @property
    def only_unsupported(self) -> bool:
        """True when keepalived itself would run the config: every problem is a feature xlb lacks (or a warning)."""
        return all(p.kind != "error" for p in self.problems)


@dataclass(frozen=True)
class HealthCheck:
    """A checker block (TCP_CHECK, HTTP_GET, ...) of one real server, as written: kept, not run yet."""

    kind: str
    service: str  # xlb service name of the first service it belongs to, e.g. "tcp/198.51.100.10:80"
    real: str  # real server address
    file: str
    line: int
    body: tuple  # kaparse.Node children, as parsed


@dataclass(frozen=True)
class CheckSettings:
    """Checker settings of a virtual server (real=None) or a real server: delay_loop, quorum, sorry_server..."""

    service: str
    real: str | None
    settings: tuple  # ((keyword, args, file, line), ...)


@dataclass(frozen=True)
class Import:
    """What a keepalived.conf (and marks file) became: the Config xlb runs, and what it keeps or skipped."""

    config: xconfig.Config
    health_checks: tuple = ()
    check_settings: tuple = ()
    warnings: tuple = ()
    files: tuple = ()
    reported: tuple = ()  # Problems of kind "warning": keepalived -t reports them, corrects them and runs


# ---------------------------------------------------------------------------------------------------------------


def load(path, marks=None, instance_id=None) -> Import:
    """Read keepalived.conf at ``path`` (and an iptables MARK rules file ``marks``) into an :class:`Import`.

    Raises KeepalivedError (a ConfigError) listing every problem, or ConfigError from the shared validation.
    """
    return _Importer(str(path), instance_id).run(str(marks) if marks is not None else None)


class _VS:
    """What one virtual_server block said, before it becomes one or more xlb services."""

    def __init__(self, node):
        self.node = node
        self.kind = None  # "addr" | "fwmark" | "group"
        self.addr = None
        self.port = 0
        self.fwmark = None
        self.group = None
        self.af = None  # 4 | 6 | None
        self.sched = None
        self.flags = []  # (flag, node)
        self.method = None
        self.ptimeout = None
        self.ptimeout_node = None
        self.pgran = None
        self.pgran_node = None
        self.proto = None
        self.proto_node = None
        self.weight = None
        self.quorum = 1
        self.hysteresis = 0
        self.reals = []  # _RS
        self.settings = []
        self.lines = {}  # keyword -> node (the last one)


class _RS:
    def __init__(self, node, addr, port):
        self.node = node
        self.addr = addr
        self.port = port
        self.weight = None
        self.weight_node = None
        self.method = None
        self.uthreshold = None
        self.lthreshold = None
        self.lines = {}
        self.settings = []
        self.checks = []


class _Importer:
    def __init__(self, path, instance_id):
        self.path = path
        self.instance_id = instance_id
        self.problems: list[Problem] = []
        self.warnings: list[str] = []
        self.skipped: dict[str, list] = {}
        self.vss: list[_VS] = []
        self.groups: dict[str, tuple] = {}  # name -> (node, entries)
        self.timeouts = {}
        self.where: dict[str, tuple] = {}  # config field path -> (file, line, keyword)

    # --- problems ----------------------------------------------------------------------------------------------

    def err(self, node, message, keyword=None, kind="error"):
        self.problems.append(Problem(node.file, node.line, keyword or node.keyword, message, kind))

    def unsupported(self, node, message, keyword=None):
        self.err(node, message, keyword, kind="unsupported")

    def warn(self, node, message, keyword=None):
        """What keepalived -t reports and keepalived then corrects and runs: xlb runs it, corrected the same way."""
        self.err(node, message, keyword, kind="warning")

    # --- top level ---------------------------------------------------------------------------------------------

    def run(self, marks_path):
        reader = Reader(self.instance_id)
        reader.read(self.path)
        for p in reader.problems:
            self.problems.append(Problem(p.file, p.line, "(file)", p.message))
        self.warnings.extend(f"{p.file}: line {p.line}: {p.message}" for p in reader.notes)
        root, tree_problems = build_tree(reader.lines)
        for node in root:
            self.root_node(node)
        spans = [(vs.node.file, vs.node.line) for vs in self.vss]
        for p in tree_problems:
            # Brace trouble inside a virtual server changes what it means; elsewhere it only concerns skipped parts.
            if p.everywhere or any(p.file == f for f, _ in spans):
                self.problems.append(Problem(p.file, p.line, "(block)", p.message))
            else:
                self.warnings.append(f"{p.file}: line {p.line}: {p.message} (outside virtual servers; ignored)")
        for kind, nodes in self.skipped.items():
            first = nodes[0]
            more = f" and {len(nodes) - 1} more" if len(nodes) > 1 else ""
            self.warnings.append(f"{first.file}: line {first.line}: skipped {kind}{more}: "
                                 f"{_SKIP_REASON.get(kind, 'not used by xlb')}")
        tree = {"service": []}
        if self.timeouts:
            tree["timeouts"] = self.timeouts
        checks, settings = [], []
        for vs in self.vss:
            self.finish_vs(vs, tree["service"], checks, settings)
        if marks_path is not None:
            from ..iptables import load_rules
            rules = load_rules(marks_path)
            tree["mark"] = [r.tree for r in rules]
            for i, r in enumerate(rules):
                self.where[f"mark[{i}]"] = (r.file, r.line, r.command)
        self.problems.sort(key=lambda p: (p.kind == "warning", p.file != self.path, p.file, p.line))
        if any(p.kind != "warning" for p in self.problems):
            raise KeepalivedError(self.problems)
        reported = tuple(self.problems)
        self.warnings[:0] = [str(p) for p in reported]
        cfg = self.validate(tree)
        if checks or settings:
            n = len(checks)
            self.warnings.append(f"{self.path}: {n} health-check block{'s' if n != 1 else ''} and the checker "
                                 f"settings are kept but not run: xlb does not health-check reals yet, so every "
                                 f"real takes traffic as if its checks passed")
        return Import(config=cfg, health_checks=tuple(checks), check_settings=tuple(settings),
                      warnings=tuple(self.warnings), files=tuple(reader.files), reported=reported)

    def validate(self, tree):
        try:
            return xconfig.from_tree(tree, self.path)
        except ConfigError as e:
            raise self.translate(e) from None

    def translate(self, e: ConfigError) -> ConfigError:
        """Name the keepalived file, line and keyword behind a field path of the generated tree."""
        path = e.where
        while path:
            if path in self.where:
                file, line, keyword = self.where[path]
                field_name = e.where[len(path):].lstrip(".")
                detail = e.message
                if field_name:
                    detail = f"{detail} (xlb field {e.where})"
                return ConfigError(file, f"line {line}", f"{keyword}: {detail}")
            cut = max(path.rfind("."), path.rfind("["))
            path = path[:cut] if cut > 0 else ""
        return ConfigError(self.path, e.where, e.message)

    def root_node(self, node):
        kw = node.keyword
        if kw == "virtual_server":
            self.virtual_server(node)
        elif kw == "virtual_server_group":
            self.virtual_server_group(node)
        elif kw == "global_defs":
            self.global_defs(node)
        elif kw in _VS_KEYWORDS:
            self.err(node, "a virtual_server keyword outside any virtual_server block (a missing '{'?)")
        else:
            self.skipped.setdefault(kw, []).append(node)

    def global_defs(self, node):
        skipped = []
        for child in node.children or ():
            if child.keyword == "lvs_timeouts":
                self.lvs_timeouts(child)
            else:
                skipped.append(child.keyword)
        if skipped:
            self.warnings.append(f"{node.where()}: skipped global_defs settings other than lvs_timeouts "
                                 f"({', '.join(dict.fromkeys(skipped))}): not used by xlb")

    def lvs_timeouts(self, node):
        args = list(node.args)
        names = {"tcp": "tcp", "tcpfin": "tcpfin", "udp": "udp"}
        while args:
            key = args.pop(0)
            if key not in names or not args:
                self.err(node, f"expected 'tcp N', 'tcpfin N' or 'udp N', got '{key}'")
                return
            value = args.pop(0)
            n = _uint(value)
            if n is None or not 1 <= n <= xconfig.TIMEOUT_MAX:
                self.err(node, f"invalid {key} timeout '{value}'")
                return
            self.timeouts[names[key]] = n
            self.where[f"timeouts.{names[key]}"] = (node.file, node.line, "lvs_timeouts")

    # --- virtual_server_group ----------------------------------------------------------------------------------

    def virtual_server_group(self, node):
        if not node.args:
            self.err(node, "needs a name")
            return
        entries = []
        for child in node.children or ():
            words = (child.keyword,) + child.args
            entry = self.group_entry(child, words)
            if entry is not None:
                entries.append(entry)
        if not entries:
            self.err(node, f"virtual server group {node.args[0]} has no entries")
            return
        self.groups[node.args[0]] = (node, entries)

    def group_entry(self, node, words):
        """("fwmark", mark, family|None, node) or ("addr", [addresses], port, node)."""
        if words[0] == "fwmark":
            mark = _uint(words[1]) if len(words) > 1 else None
            if mark is None or mark > xconfig.U32_MAX:
                self.err(node, f"fwmark '{words[1] if len(words) > 1 else ''}' must be in [0, {xconfig.U32_MAX}]")
                return None
            fam = None
            if len(words) > 2:
                fam = {"inet": 4, "inet6": 6}.get(words[2])
                if fam is None:
                    self.err(node, f"fwmark {mark} family {words[2]} unknown")
                    return None
            return ("fwmark", mark, fam, node)
        port = 0
        if len(words) > 1 and words[1].strip("0"):
            port = _port(words[1])
            if port is None:
                self.err(node, f"invalid virtual server group port '{words[1]}'")
                return None
        addrs = self.address_range(node, words[0])
        if addrs is None:
            return None
        return ("addr", addrs, port, node)

    def address_range(self, node, text):
        """One address, ``A-B`` (last octet / hextet or a full end address) or ``A/len``, as a list."""
        try:
            if "/" in text:
                net = ipaddress.ip_network(text, strict=True)
                addrs_n = net.num_addresses
                if addrs_n > GROUP_RANGE_MAX:
                    self.unsupported(node, f"{text} expands to {addrs_n} virtual addresses; xlb expands at most "
                                           f"{GROUP_RANGE_MAX} per group entry (use a fwmark and a mark rule)")
                    return None
                return list(net) if addrs_n > 1 else [net.network_address]
            if "-" in text:
                start_s, end_s = text.split("-", 1)
                start = ipaddress.ip_address(start_s)
                if ("." in end_s and start.version == 4) or (":" in end_s and start.version == 6):
                    end = ipaddress.ip_address(end_s)
                else:
                    last = int(end_s, 10 if start.version == 4 else 16)
                    unit = 8 if start.version == 4 else 16
                    end = ipaddress.ip_address((int(start) >> unit << unit) | last)
                if end.version != start.version or int(end) < int(start):
                    self.err(node, f"address range end is less than the start - {text}")
                    return None
                count = int(end) - int(start) + 1
                if count > GROUP_RANGE_MAX:
                    self.unsupported(node, f"{text} expands to {count} virtual addresses; xlb expands at most "
                                           f"{GROUP_RANGE_MAX} per group entry")
                    return None
                return [ipaddress.ip_address(int(start) + i) if start.version == 4 else
                        ipaddress.IPv6Address(int(start) + i) for i in range(count)]
            return [ipaddress.ip_address(_unbracket(text))]
        except ValueError:
            self.err(node, f"invalid virtual server group IP address {text}")
            return None

    # --- virtual_server ----------------------------------------------------------------------------------------

    def virtual_server(self, node):
        vs = _VS(node)
        a = node.args
        if not a:
            self.err(node, "needs an address and port, 'fwmark N' or 'group NAME'")
            return
        if a[0] == "group":
            if len(a) < 2:
                self.err(node, "virtual_server group needs a group name")
                return
            vs.kind, vs.group = "group", a[1]
        elif a[0] == "fwmark":
            mark = _uint(a[1]) if len(a) > 1 else None
            if mark is None or mark > xconfig.U32_MAX:
                self.err(node, f"virtual server fwmark '{a[1] if len(a) > 1 else ''}' must be in "
                               f"[0, {xconfig.U32_MAX}]")
                return
            if mark == 0:
                self.err(node, "fwmark 0 marks nothing: packets without a mark have mark 0")
                return
            vs.kind, vs.fwmark = "fwmark", mark
        else:
            addr = _addr(a[0])
            port = 0
            if len(a) > 1 and a[1].strip("0"):
                port = _port(a[1])
            if addr is None or port is None:
                self.err(node, f"invalid virtual server IP address/port {' '.join(a[:2])}")
                return
            vs.kind, vs.addr, vs.port, vs.af = "addr", addr, port, addr.version
        if node.children is None:
            self.err(node, "missing '{' block")
            return
        for child in node.children:
            self.vs_keyword(vs, child)
        self.vss.append(vs)

    def vs_keyword(self, vs, n):
        kw, a = n.keyword, n.args
        vs.lines[kw] = n
        if kw in ("lb_algo", "lvs_sched"):
            if not a or a[0] not in KEEPALIVED_SCHEDULERS:
                self.err(n, f"invalid lvs_scheduler '{a[0] if a else ''}'")
            elif a[0] in xconfig.IPVS_SCHEDULERS_NOT_YET:
                self.unsupported(n, f"scheduler '{a[0]}' (supported: {', '.join(xconfig.SCHEDULERS)})")
            else:
                vs.sched = a[0]
        elif kw in ("lb_kind", "lvs_method"):
            vs.method = self.method(n)
        elif kw in ("sh-port", "sh-fallback", "mh-port", "mh-fallback", "flag-1", "flag-2", "flag-3"):
            self.sched_flag(vs, n)
        elif kw == "hashed":
            self.warnings.append(f"{n.where()}: hashed has no effect (IPVS ignores it); skipped")
        elif kw == "ops":
            self.unsupported(n, "one-packet scheduling (ops): xlb schedules connections, not single packets")
        elif kw == "persistence_timeout":
            vs.ptimeout_node = n
            if not a:
                vs.ptimeout = IPVS_DEFAULT_PERSISTENCE
            else:
                t = _uint(a[0])
                if t is None or not 1 <= t <= LVS_MAX_TIMEOUT:
                    self.err(n, f"persistence_timeout invalid: '{a[0]}' (1..{LVS_MAX_TIMEOUT} seconds)")
                else:
                    vs.ptimeout = t
        elif kw == "persistence_granularity":
            self.granularity(vs, n)
        elif kw == "persistence_engine":
            self.unsupported(n, "persistence engines (sip): xlb persists by client address only")
        elif kw == "protocol":
            p = a[0].lower() if a else ""
            if p in ("tcp", "udp"):
                vs.proto, vs.proto_node = p, n
            elif p == "sctp":
                vs.proto, vs.proto_node = p, n
                self.unsupported(n, "protocol SCTP: xlb balances TCP and UDP")
            else:
                self.err(n, f"unknown protocol {a[0] if a else '(none)'}")
        elif kw == "ip_family":
            fam = {"inet": 4, "inet6": 6}.get(a[0] if a else "")
            if fam is None:
                self.err(n, f"unknown address family {a[0] if a else '(none)'}")
            elif vs.af is not None and fam != vs.af:
                self.err(n, f"virtual server specified family {a[0]} conflicts with server family")
            else:
                vs.af = fam
        elif kw == "weight":
            w = _uint(a[0]) if a else None
            if w is None or not 1 <= w <= WEIGHT_MAX:
                self.err(n, f"virtual server weight {a[0] if a else ''} is outside range 1-{WEIGHT_MAX}")
            else:
                vs.weight = w
        elif kw == "real_server":
            self.real_server(vs, n)
        elif kw in VS_CHECK_SETTINGS:
            self.vs_setting(vs, n)
            vs.settings.append(n)
        else:
            self.err(n, f"unknown keyword in virtual_server (block at line {vs.node.line})")
            return
        if n.children is not None and kw != "real_server":
            self.err(n, "unexpected '{' block after this keyword")

    def vs_setting(self, vs, n):
        """Checker settings are kept, but those keepalived checks are checked here too, as keepalived does."""
        kw, a = n.keyword, n.args
        if kw in ("quorum", "hysteresis"):
            v = _uint(a[0]) if a else None
            lo = 1 if kw == "quorum" else 0
            if v is None or v < lo or v > xconfig.U32_MAX:
                self.err(n, f"{kw} {a[0] if a else ''} must be in [{lo}, {xconfig.U32_MAX}]")
                v = 1 if kw == "quorum" else None
            if v is not None:
                setattr(vs, kw, v)
        elif kw in ("delay_loop", "delay_before_retry", "warmup", "connect_timeout"):
            self.timer(n, minimum=1 if kw in ("delay_loop", "connect_timeout") else 0)
        elif kw == "retry":
            v = _uint(a[0]) if a else None
            if v is None or v < 1:
                self.err(n, f"retry value invalid - {a[0] if a else ''}")
        elif kw == "sorry_server":
            if not a or _addr(a[0]) is None or (len(a) > 1 and a[1].strip("0") and _port(a[1]) is None):
                self.err(n, f"invalid sorry server IP address {' '.join(a)}")

    def timer(self, n, minimum):
        a = n.args
        try:
            v = float(a[0])
            ok = v >= minimum and v == v and v != float("inf")
        except (ValueError, IndexError):
            ok = False
        if not ok:
            self.err(n, f"{n.keyword} '{a[0] if a else ''}' invalid")

    def method(self, n):
        m = n.args[0] if n.args else ""
        if m == "DR":
            return "dr"
        if m in ("NAT", "TUN"):
            self.unsupported(n, f"{n.keyword} {m}: xlb forwards by direct routing only (lb_kind DR)")
            return m.lower()
        self.err(n, f"unknown [{m}] routing method")
        return None

    def sched_flag(self, vs, n):
        kw = n.keyword
        if vs.sched not in ("sh", "mh"):
            if kw.startswith("flag-"):
                self.warnings.append(f"{n.where()}: {kw} has no effect with scheduler {vs.sched or 'wlc'}; skipped")
                return
            self.err(n, f"{kw} only applies to sh scheduler - ignoring (set lb_algo sh or mh before it)")
            return
        names = {"flag-1": f"{vs.sched}-fallback", "flag-2": f"{vs.sched}-port"}
        flag = names.get(kw, kw)
        if kw == "flag-3":
            self.warnings.append(f"{n.where()}: flag-3 has no effect with scheduler {vs.sched}; skipped")
            return
        if not flag.startswith(vs.sched + "-"):
            # keepalived silently ignores mh-port under sh and sh-port under mh: say so.
            self.warnings.append(f"{n.where()}: {kw} has no effect with scheduler {vs.sched}; skipped")
            return
        vs.flags.append((flag, n))

    def granularity(self, vs, n):
        a = n.args
        if not a:
            self.err(n, "persistence_granularity needs a netmask or prefix length")
            return
        af = vs.af or (4 if "." in a[0] else 6)
        if af == 6:
            v = _uint(a[0])
            if v is None or not 1 <= v <= 128:
                self.err(n, f"invalid IPv6 persistence_granularity specified - {a[0]}")
                return
            vs.pgran = str(v)
        else:
            try:
                vs.pgran = str(ipaddress.IPv4Address(a[0]))
            except ValueError:
                self.err(n, f"invalid IPv4 persistence_granularity specified - {a[0]}")
                return
        vs.pgran_node = n
        if vs.af is None:
            vs.af = af
        if vs.ptimeout is None:
            vs.ptimeout = IPVS_DEFAULT_PERSISTENCE
            vs.ptimeout_node = vs.ptimeout_node or n

    def real_server(self, vs, n):
        a = n.args
        addr = _addr(a[0]) if a else None
        port = 0
        if len(a) > 1 and a[1].strip("0"):
            port = _port(a[1])
        if addr is None or port is None:
            self.err(n, f"invalid real server ip address/port {'/'.join(a[:2])}")
            return
        rs = _RS(n, addr, port)
        if n.children is None:
            self.err(n, "missing '{' at the beginning of the real_server block")
        for c in n.children or ():
            self.rs_keyword(vs, rs, c)
        if (rs.method or vs.method) != "tun":  # keepalived lets tunnelled reals be of the other family
            if vs.af is None:
                vs.af = addr.version
            elif vs.af != addr.version:
                self.err(n, f"address family of virtual server and real server {addr} don't match")
                return
        vs.reals.append(rs)

    def rs_keyword(self, vs, rs, n):
        kw, a = n.keyword, n.args
        rs.lines[kw] = n
        if kw == "weight":
            w = _uint(a[0]) if a else None
            if w is None or w > IPVS_WEIGHT_MAX:
                self.err(n, f"real server weight {a[0] if a else ''} is outside range 0-{IPVS_WEIGHT_MAX}")
            elif w > WEIGHT_MAX:
                self.unsupported(n, f"weight {w}: xlb's data plane holds weights up to {WEIGHT_MAX} (IPVS and "
                                    f"keepalived allow up to {IPVS_WEIGHT_MAX}); scale the weights down")
            else:
                rs.weight, rs.weight_node = w, n
        elif kw == "lvs_method":
            rs.method = self.method(n)
        elif kw in ("uthreshold", "lthreshold"):
            v = _uint(a[0]) if a else None
            if v is None or v > xconfig.U32_MAX:
                self.err(n, f"invalid real_server {kw} '{a[0] if a else ''}'")
            else:
                setattr(rs, kw, v)
        elif kw in CHECKERS:
            if n.children is None:
                self.err(n, f"missing '{{' at the beginning of the {kw} block")
            rs.checks.append(n)
            return
        elif kw in RS_CHECK_SETTINGS:
            if kw in ("delay_loop", "delay_before_retry", "warmup", "connect_timeout"):
                self.timer(n, minimum=1 if kw in ("delay_loop", "connect_timeout") else 0)
            rs.settings.append(n)
        else:
            self.err(n, f"unknown keyword in real_server (block at line {rs.node.line})")
            return
        if n.children is not None:
            self.err(n, "unexpected '{' block after this keyword")

    # --- from a virtual server to xlb services -----------------------------------------------------------------

    def finish_vs(self, vs, services, checks, settings):
        node = vs.node
        if not vs.reals:
            self.err(node, "virtual server has no real servers (keepalived ignores it)")
            return
        if vs.sched is None and "lb_algo" not in vs.lines and "lvs_sched" not in vs.lines:
            self.err(node, "no scheduler set (keepalived defaults to wlc): add 'lb_algo wlc' or another")
        if vs.method is None and "lb_kind" not in vs.lines and "lvs_method" not in vs.lines \
                and any(rs.method is None for rs in vs.reals):
            self.err(node, "no forwarding method set (keepalived defaults to NAT, which xlb does not do): "
                           "add 'lb_kind DR'")
        # The entries this virtual server stands for: (kind, value, family, port, node).
        entries = []
        if vs.kind == "group":
            grp = self.groups.get(vs.group)
            if grp is None:
                self.err(node, f"virtual server group {vs.group} is not defined")
                return
            for e in grp[1]:
                if e[0] == "fwmark":
                    entries.append(("fwmark", e[1], e[2], 0, e[3]))
                else:
                    entries.extend(("addr", addr, addr.version, e[2], e[3]) for addr in e[1])
        elif vs.kind == "fwmark":
            entries.append(("fwmark", vs.fwmark, None, 0, node))
        else:
            entries.append(("addr", vs.addr, vs.addr.version, vs.port, node))
        address_based = any(e[0] == "addr" for e in entries)
        if address_based and vs.proto is None:
            self.err(node, "no protocol set (keepalived defaults to UDP): add 'protocol TCP' or 'protocol UDP'")
        if not address_based and vs.proto is not None:
            self.warn(vs.proto_node, "protocol specified for fwmark - protocol will be ignored (as keepalived "
                                     "does: the mark rules choose protocols)")
        seen = {}
        weight_sum = 0
        for rs in vs.reals:
            key = (rs.addr, rs.port)
            if key in seen:
                self.err(rs.node, f"real server {rs.addr} is duplicated (first at line {seen[key]})")
            seen.setdefault(key, rs.node.line)
            w = rs.weight if rs.weight is not None else (vs.weight or 1)
            weight_sum += w
            if rs.port and (rs.method or vs.method or "nat") != "nat":  # only NAT may change the port
                vports = {e[3] for e in entries if e[0] == "addr"}
                if any(e[0] == "fwmark" for e in entries):
                    self.warn(rs.node, f"fwmark virtual server, real server {rs.addr} has port {rs.port} specified "
                                       "- clearing (as keepalived does: direct routing keeps the packet's port)")
                elif vports and vports != {rs.port}:
                    report = self.err if vs.kind == "group" else self.warn  # keepalived resets only a plain VS's
                    report(rs.node, f"virtual server port {'/'.join(map(str, sorted(vports)))} and real server "
                                    f"port {rs.port} don't match - resetting (direct routing keeps the port)")
        self.sorry_server(vs, entries)
        if vs.quorum > weight_sum:
            self.err(vs.lines.get("quorum", node), f"quorum {vs.quorum} exceeds total weight of real servers "
                                                   f"{weight_sum}")
        elif vs.hysteresis >= vs.quorum and "hysteresis" in vs.lines:
            self.err(vs.lines["hysteresis"], f"hysteresis {vs.hysteresis} >= quorum {vs.quorum}")
        first_name = None
        for kind, value, fam, port, enode in entries:
            svc = {}
            index = len(services)
            sw = f"service[{index}]"
            self.where[sw] = (node.file, node.line, "virtual_server")
            if kind == "fwmark":
                svc["fwmark"] = value
                family = fam or vs.af or 4
                svc["family"] = f"ipv{family}"
                self.where[f"{sw}.fwmark"] = (enode.file, enode.line, enode.keyword)
            else:
                family = fam
                svc["vip"] = str(value)
                svc["port"] = port
                svc["proto"] = vs.proto or "udp"
                self.where[f"{sw}.vip"] = (enode.file, enode.line, enode.keyword)
                self.where[f"{sw}.port"] = (enode.file, enode.line, enode.keyword)
                if vs.proto_node:
                    self.where[f"{sw}.proto"] = (vs.proto_node.file, vs.proto_node.line, "protocol")
                if port == 0 and vs.ptimeout is None:
                    self.err(enode, "port 0 (every port) is only valid for persistent services: "
                                    "add persistence_timeout")
            if vs.sched:
                svc["scheduler"] = vs.sched
                self._w(f"{sw}.scheduler", vs.lines.get("lb_algo") or vs.lines.get("lvs_sched"))
            if vs.ptimeout is not None:
                svc["persistence_timeout"] = vs.ptimeout
                self._w(f"{sw}.persistence_timeout", vs.ptimeout_node)
            if vs.pgran is not None:
                svc["persistence_netmask"] = vs.pgran
                self._w(f"{sw}.persistence_netmask", vs.pgran_node)
            if vs.flags:
                svc["sched_flags"] = [f for f, _ in vs.flags]
                for i, (_, fn) in enumerate(vs.flags):
                    self._w(f"{sw}.sched_flags[{i}]", fn)
                self._w(f"{sw}.sched_flags", vs.flags[0][1])
            reals = []
            for rs in vs.reals:
                if rs.addr.version != family:
                    continue  # a group mixing families: each service takes the reals of its family
                if rs.addr.is_loopback:  # IPVS delivers to a real on the director itself; XDP forwarding cannot
                    self.unsupported(rs.node, f"real {rs.addr} is a loopback address: {realcheck.LOCAL}")
                rw = f"{sw}.real[{len(reals)}]"
                self._w(rw, rs.node)
                real = {"address": str(rs.addr),
                        "weight": rs.weight if rs.weight is not None else (vs.weight or 1)}
                if rs.weight_node:
                    self._w(f"{rw}.weight", rs.weight_node)
                if rs.uthreshold:
                    real["uthreshold"] = rs.uthreshold
                    self._w(f"{rw}.uthreshold", rs.lines["uthreshold"])
                if rs.lthreshold:
                    if rs.uthreshold:
                        real["lthreshold"] = rs.lthreshold
                        self._w(f"{rw}.lthreshold", rs.lines["lthreshold"])
                    else:
                        self.warnings.append(f"{rs.lines['lthreshold'].where()}: lthreshold has no effect "
                                             "without uthreshold; skipped")
                reals.append(real)
            svc["real"] = reals
            services.append(svc)
            name = _service_name(svc)
            first_name = first_name or name
        for rs in vs.reals:
            for c in rs.checks:
                checks.append(HealthCheck(c.keyword, first_name or "", str(rs.addr), c.file, c.line,
                                          tuple(c.children or ())))
            if rs.settings:
                settings.append(CheckSettings(first_name or "", str(rs.addr), _settings(rs.settings)))
        if vs.settings:
            settings.append(CheckSettings(first_name or "", None, _settings(vs.settings)))

    def sorry_server(self, vs, entries):
        """keepalived's checks of a sorry server (kept for the health-check work, not used for forwarding yet)."""
        n = vs.lines.get("sorry_server")
        if n is None or not n.args or _addr(n.args[0]) is None:
            return
        addr = _addr(n.args[0])
        port = _port(n.args[1]) if len(n.args) > 1 and n.args[1].strip("0") else 0
        vports = {e[3] for e in entries if e[0] == "addr"}
        if port and vports and vports != {port} and (vs.method or "nat") != "nat":
            self.err(n, f"virtual server and sorry server ports don't match ({port})")
        inhibit = "sorry_server_inhibit" in vs.lines
        vs_inhibit = "inhibit_on_failure" in vs.lines
        for rs in vs.reals:
            if rs.addr == addr and (not rs.port or not port or rs.port == port):
                rs_inhibit = _true(rs.lines["inhibit_on_failure"]) if "inhibit_on_failure" in rs.lines \
                    else vs_inhibit
                if rs_inhibit != inhibit:
                    self.err(n, f"real server {rs.addr} (line {rs.node.line}) is also the sorry server, but their "
                                "inhibit_on_failure settings differ")

    def _w(self, path, node):
        if node is not None:
            self.where[path] = (node.file, node.line, node.keyword)


_VS_KEYWORDS = frozenset(("real_server", "lb_algo", "lvs_sched", "lb_kind", "lvs_method", "persistence_timeout",
                          "persistence_granularity", "protocol", "weight", "uthreshold", "lthreshold") + CHECKERS
                         + VS_CHECK_SETTINGS + RS_CHECK_SETTINGS) - {"track_file", "snmp_name"}

_SKIP_REASON = {
    "vrrp_instance": "VRRP is not part of xlb (run keepalived for VRRP, or another VRRP daemon)",
    "vrrp_sync_group": "VRRP is not part of xlb",
    "vrrp_script": "VRRP is not part of xlb",
}


def _settings(nodes):
    return tuple((n.keyword, tuple(n.args), n.file, n.line) for n in nodes)


def _service_name(svc):
    if "fwmark" in svc:
        return f"fwm{'6' if svc.get('family') == 'ipv6' else ''}/{svc['fwmark']}"
    host = f"[{svc['vip']}]" if ":" in svc["vip"] else svc["vip"]
    return f"{svc['proto']}/{host}:{svc['port']}"


def _true(node):
    """keepalived's check_true_false for an optional on/off argument (none = on)."""
    return not node.args or node.args[0] in ("true", "on", "yes")


def _uint(text):
    """A decimal unsigned integer as keepalived's read_unsigned takes it, or None."""
    t = text.strip()
    return int(t) if t.isdigit() else None


def _port(text):
    p = _uint(text)
    return p if p is not None and 1 <= p <= 65535 else None


def _unbracket(text):
    return text[1:-1] if text.startswith("[") and text.endswith("]") else text


def _addr(text):
    try:
        return ipaddress.ip_address(_unbracket(text))
    except ValueError:
        return None
