"""keepalived's own checks of the virtual_server, virtual_server_group and lvs_timeouts keywords, as keepalived
(check_parser.c) makes them: each keyword's arguments read into a VS or RS, every problem recorded with its
file, line and keyword. A mixin of the importer (xlb/importers/keepalived/translate.py), which turns the result
into xlb's config.
"""
from __future__ import annotations

import ipaddress

from . import tunnel as ka_tunnel
from .model import RS, VS, Problem
from ...config import model as xconfig

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

_VS_KEYWORDS = frozenset(("real_server", "lb_algo", "lvs_sched", "lb_kind", "lvs_method", "persistence_timeout",
                          "persistence_granularity", "protocol", "weight", "uthreshold", "lthreshold") + CHECKERS
                         + VS_CHECK_SETTINGS + RS_CHECK_SETTINGS) - {"track_file", "snmp_name"}
SKIP_REASON = {
    "vrrp_instance": "VRRP is not part of xlb (run keepalived for VRRP, or another VRRP daemon)",
    "vrrp_sync_group": "VRRP is not part of xlb",
    "vrrp_script": "VRRP is not part of xlb",
}


def settings_of(nodes):
    return tuple((n.keyword, tuple(n.args), n.file, n.line) for n in nodes)


def kw_true(node):
    """keepalived's check_true_false for an optional on/off argument (none = on)."""
    return not node.args or node.args[0] in ("true", "on", "yes")


def kw_uint(text):
    """A decimal unsigned integer as keepalived's read_unsigned takes it, or None."""
    t = text.strip()
    return int(t) if t.isdigit() else None


def kw_port(text):
    p = kw_uint(text)
    return p if p is not None and 1 <= p <= 65535 else None


def kw_unbracket(text):
    return text[1:-1] if text.startswith("[") and text.endswith("]") else text


def kw_addr(text):
    try:
        return ipaddress.ip_address(kw_unbracket(text))
    except ValueError:
        return None


def kw_addr_port(args):
    """A virtual or real server's ``IP [PORT]`` as keepalived reads it: a missing or all-zero port is 0; None for
    an address or port that does not parse."""
    addr = kw_addr(args[0]) if args else None
    port = kw_port(args[1]) if len(args) > 1 and args[1].strip("0") else 0
    return addr, port


class Checks:
    """The importer's reading of each keyword (needs problems, skipped, vss, groups and timeouts)."""

    def err(self, node, message, keyword=None, kind="error"):
        self.problems.append(Problem(node.file, node.line, keyword or node.keyword, message, kind))

    def unsupported(self, node, message, keyword=None):
        self.err(node, message, keyword, kind="unsupported")

    def warn(self, node, message, keyword=None):
        """What keepalived -t reports and keepalived then corrects and runs: xlb runs it, corrected the same way."""
        self.err(node, message, keyword, kind="warning")

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
            elif child.keyword == "script_user" and 1 <= len(child.args) <= 2:
                self.script_user = (" ".join(child.args), child)  # notify/quorum commands run as (translate.py)
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
            n = kw_uint(value)
            if n is None or not 1 <= n <= xconfig.TIMEOUT_MAX:
                self.err(node, f"invalid {key} timeout '{value}'")
                return
            self.timeouts[names[key]] = n
            self.where[f"timeouts.{names[key]}"] = (node.file, node.line, "lvs_timeouts")

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
            mark = kw_uint(words[1]) if len(words) > 1 else None
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
            port = kw_port(words[1])
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
            return [ipaddress.ip_address(kw_unbracket(text))]
        except ValueError:
            self.err(node, f"invalid virtual server group IP address {text}")
            return None

    def virtual_server(self, node):
        vs = VS(node)
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
            mark = kw_uint(a[1]) if len(a) > 1 else None
            if mark is None or mark > xconfig.U32_MAX:
                self.err(node, f"virtual server fwmark '{a[1] if len(a) > 1 else ''}' must be in "
                               f"[0, {xconfig.U32_MAX}]")
                return
            if mark == 0:
                self.err(node, "fwmark 0 marks nothing: packets without a mark have mark 0")
                return
            vs.kind, vs.fwmark = "fwmark", mark
        else:
            addr, port = kw_addr_port(a)
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
            vs.method = self.method(n, vs)
        elif kw in ("sh-port", "sh-fallback", "mh-port", "mh-fallback", "flag-1", "flag-2", "flag-3"):
            self.sched_flag(vs, n)
        elif kw == "hashed":
            self.warnings.append(f"{n.where()}: hashed has no effect (IPVS ignores it); skipped")
        elif kw == "ops":
            vs.ops_node = n
        elif kw == "persistence_timeout":
            vs.ptimeout_node = n
            if not a:
                vs.ptimeout = IPVS_DEFAULT_PERSISTENCE
            else:
                t = kw_uint(a[0])
                if t is None or not 1 <= t <= LVS_MAX_TIMEOUT:
                    self.err(n, f"persistence_timeout invalid: '{a[0]}' (1..{LVS_MAX_TIMEOUT} seconds)")
                else:
                    vs.ptimeout = t
        elif kw == "persistence_granularity":
            self.granularity(vs, n)
        elif kw == "persistence_engine":
            if a and a[0] == "sip":
                vs.pe, vs.pe_node = "sip", n
            else:
                self.unsupported(n, f"persistence engine '{a[0] if a else ''}': IPVS has one, sip")
        elif kw == "protocol":
            p = a[0].lower() if a else ""
            if p in ("tcp", "udp", "sctp"):
                vs.proto, vs.proto_node = p, n
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
            w = kw_uint(a[0]) if a else None
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
            v = kw_uint(a[0]) if a else None
            lo = 1 if kw == "quorum" else 0
            if v is None or v < lo or v > xconfig.U32_MAX:
                self.err(n, f"{kw} {a[0] if a else ''} must be in [{lo}, {xconfig.U32_MAX}]")
                v = 1 if kw == "quorum" else None
            if v is not None:
                setattr(vs, kw, v)
        elif kw in ("delay_loop", "delay_before_retry", "warmup", "connect_timeout"):
            self.timer(n, minimum=1 if kw in ("delay_loop", "connect_timeout") else 0)
        elif kw == "retry":
            v = kw_uint(a[0]) if a else None
            if v is None or v < 1:
                self.err(n, f"retry value invalid - {a[0] if a else ''}")
        elif kw == "sorry_server":
            if not a or kw_addr(a[0]) is None or (len(a) > 1 and a[1].strip("0") and kw_port(a[1]) is None):
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

    def method(self, n, holder):
        """The method of an lb_kind / lvs_method line; a TUN line's tunnel keys go to holder.tunnel."""
        m = n.args[0] if n.args else ""
        if m in ("DR", "NAT"):
            return m.lower()
        if m == "TUN":
            holder.tunnel = ka_tunnel.options(n, self.err)
            return "tun"
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
            v = kw_uint(a[0])
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
        addr, port = kw_addr_port(a)
        if addr is None or port is None:
            self.err(n, f"invalid real server ip address/port {'/'.join(a[:2])}")
            return
        rs = RS(n, addr, port)
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
            w = kw_uint(a[0]) if a else None
            if w is None or w > IPVS_WEIGHT_MAX:
                self.err(n, f"real server weight {a[0] if a else ''} is outside range 0-{IPVS_WEIGHT_MAX}")
            elif w > WEIGHT_MAX:
                self.unsupported(n, f"weight {w}: xlb's data plane holds weights up to {WEIGHT_MAX} (IPVS and "
                                    f"keepalived allow up to {IPVS_WEIGHT_MAX}); scale the weights down")
            else:
                rs.weight, rs.weight_node = w, n
        elif kw == "lvs_method":
            rs.method = self.method(n, rs)
        elif kw in ("uthreshold", "lthreshold"):
            v = kw_uint(a[0]) if a else None
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
