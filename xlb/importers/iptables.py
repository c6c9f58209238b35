"""Translate iptables MARK rules (the firewall-mark set-up of LVS/keepalived) into xlb ``[[mark]]`` entries.

Pure: no root, runs nothing. Reads the two forms the RHEL Load Balancer documentation and iptables-save write::

    iptables -t mangle -A PREROUTING -p tcp -d 198.51.100.10/32 -m multiport --dports 80,443 -j MARK --set-mark 80
    ip6tables -t mangle -A PREROUTING -p udp -d 2001:db8::10 --dport 53 -j MARK --set-mark 53

    *mangle
    -A PREROUTING -d 198.51.100.10/32 -p tcp -m tcp --dport 8000:8099 -j MARK --set-xmark 0x50/0xffffffff
    COMMIT

Only what translates exactly is accepted; anything else is a ConfigError naming the file and line:
- a rule must be in table mangle, chain PREROUTING, target MARK, and set the whole mark;
- matches: protocol (tcp, udp, all), destination prefixes, destination ports (``--dport``, ``--dports``);
  no source, interface, negation or other modules (xlb's mark rules cannot express them);
- iptables runs every rule in order and a later MARK overwrites an earlier one; xlb picks the most specific rule
  (a rule with ports, then the longest prefix, then a named protocol). Two rules that overlap with different
  marks must therefore have the later one strictly more specific, or the translation would differ: an error.
"""
from __future__ import annotations

import ipaddress
import os
import shlex
from dataclasses import dataclass

from ..errors import ConfigError

COMMANDS = {"iptables": 4, "iptables-legacy": 4, "iptables-nft": 4,
            "ip6tables": 6, "ip6tables-legacy": 6, "ip6tables-nft": 6}
FULL_MASK = 0xFFFFFFFF
IGNORED_MATCHES = ("tcp", "udp", "multiport", "comment")


@dataclass(frozen=True)
class MarkLine:
    """One translated rule: the ``[[mark]]`` table for xlb/config/model.py, and where it came from."""

    tree: dict  # {"mark": N, "proto": "tcp"|"udp"|"any", "dst": "prefix", "ports": [...]} (no "ports" = every port)
    file: str
    line: int
    command: str  # "iptables" / "ip6tables" / "-A PREROUTING" (iptables-save form)

    @property
    def dst(self):
        return ipaddress.ip_network(self.tree["dst"])

    @property
    def ports(self):
        out = []
        for p in self.tree.get("ports", ()):
            lo, _, hi = str(p).partition("-")
            out.append((int(lo), int(hi or lo)))
        return out

    def priority(self):
        """The order in which xlb's classifier prefers rules that overlap (bigger wins)."""
        return (bool(self.ports), self.dst.prefixlen, self.tree["proto"] != "any")


def load_rules(path) -> list[MarkLine]:
    source = str(path)
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8", errors="replace")
    except OSError as e:
        raise ConfigError(source, "", f"cannot read the marks file: {e.strerror or e}") from None
    return parse_rules(text, source)


def parse_rules(text: str, source: str = "<marks>") -> list[MarkLine]:
    """Every MARK rule of ``text`` in the order iptables would evaluate them; raises ConfigError on the first
    line that cannot be translated exactly."""
    rules: list[MarkLine] = []
    table = None  # iptables-save: the current *table
    save_family = 4
    logical = []
    pending, start = "", 0
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if pending:
            line = pending + " " + line
        else:
            start = lineno
        if line.endswith("\\"):
            pending = line[:-1].rstrip()
            continue
        pending = ""
        logical.append((start, line))
    for lineno, line in logical:
        if not line:
            continue
        if line.startswith("#"):
            if "ip6tables-save" in line:
                save_family = 6
            elif "iptables-save" in line:
                save_family = 4
            continue
        fail = _failer(source, lineno)
        if line.startswith("*"):
            table = line[1:].strip()
            continue
        if line.startswith(":"):
            continue  # iptables-save chain declaration
        if line == "COMMIT":
            table = None
            continue
        try:
            words = shlex.split(line, comments=True)
        except ValueError as e:
            fail(f"cannot split the line into words: {e}")
        if not words:
            continue
        if words[0].startswith("-"):
            if table is None:
                fail("a rule in iptables-save form must follow a '*mangle' line")
            family, command, args = save_family, f"{words[0]} {words[1] if len(words) > 1 else ''}".strip(), words
            args = ["-t", table] + args
        else:
            name = os.path.basename(words[0])
            if name not in COMMANDS:
                fail(f"expected an iptables or ip6tables command, got '{words[0]}'")
            family, command, args = COMMANDS[name], name, words[1:]
        if table is not None and not words[0].startswith("-"):
            fail("an iptables command inside an iptables-save table block")
        new, insert = _rule(args, family, source, lineno, command)
        if insert:
            rules[0:0] = new
        else:
            rules.extend(new)
    _check_order(rules, source)
    return rules


def _failer(source, lineno):
    def fail(message):
        raise ConfigError(source, f"line {lineno}", message)
    return fail


def _rule(args, family, source, lineno, command):
    """Translate one rule's options. Returns (MarkLines, inserted_at_top)."""
    fail = _failer(source, lineno)
    o = _scan_options(args, family, command, fail)
    _check_rule(o, fail)
    dsts = o["dsts"] or [ipaddress.ip_network("0.0.0.0/0" if family == 4 else "::/0")]
    out = []
    for net in dsts:
        tree = {"mark": o["mark"], "proto": o["proto"] or "any", "dst": str(net)}
        ports = o["ports"]
        if ports is not None and ports != [(0, 65535)]:
            tree["ports"] = [lo if lo == hi else f"{lo}-{hi}" for lo, hi in ports]
        out.append(MarkLine(tree, source, lineno, command))
    return out, o["insert"]


def _scan_options(args, family, command, fail):
    """One rule's options as {table, chain, insert, proto, dsts, ports, target, mark}; fails on any option, match
    or value that has no exact translation."""
    o = {"table": "filter", "chain": None, "insert": False, "proto": None, "dsts": None, "ports": None,
         "target": None, "mark": None}
    i = 0

    def value(opt):
        nonlocal i
        if i + 1 >= len(args) or args[i + 1].startswith("-") and opt not in ("--set-mark", "--set-xmark"):
            fail(f"{opt} needs a value")
        i += 1
        return args[i]

    while i < len(args):
        a = args[i]
        if a == "!":
            fail("negated matches ('!') cannot be translated: xlb mark rules only select what matches")
        elif a in ("-t", "--table"):
            o["table"] = value(a)
        elif a in ("-A", "--append"):
            o["chain"] = value(a)
        elif a in ("-I", "--insert"):
            o["chain"] = value(a)
            o["insert"] = True
            if i + 1 < len(args) and args[i + 1].isdigit():
                i += 1
                if args[i] != "1":
                    fail(f"-I {o['chain']} {args[i]}: inserting at a position other than the top cannot be "
                         "translated (give the rules in the order iptables evaluates them, with -A)")
        elif a in ("-p", "--protocol"):
            p = value(a).lower()
            o["proto"] = {"tcp": "tcp", "6": "tcp", "udp": "udp", "17": "udp", "all": "any", "0": "any"}.get(p)
            if o["proto"] is None:
                fail(f"protocol '{p}': xlb marks tcp and udp only")
        elif a in ("-d", "--destination", "--dst"):
            o["dsts"] = _destinations(value(a), family, command, fail)
        elif a in ("-m", "--match"):
            m = value(a)
            if m not in IGNORED_MATCHES:
                fail(f"match module '{m}' cannot be translated (translated: -p, -d, --dport, -m multiport --dports)")
        elif a in ("--dport", "--destination-port"):
            o["ports"] = [_port_range(value(a), fail)]
        elif a in ("--dports", "--destination-ports"):
            o["ports"] = [_port_range(p, fail) for p in value(a).split(",")]
        elif a == "--comment":
            value(a)
        elif a in ("-j", "--jump"):
            o["target"] = value(a)
        elif a in ("--set-mark", "--set-xmark"):
            o["mark"] = _set_mark(a, value(a), fail)
        else:
            fail(f"option '{a}' cannot be translated exactly (translated: -t mangle -A PREROUTING -p -d --dport "
                 "--dports -j MARK --set-mark)")
        i += 1
    return o


def _destinations(text, family, command, fail):
    """-d's comma-separated addresses or prefixes, each of the command's family."""
    dsts = []
    for d in text.split(","):
        try:
            net = ipaddress.ip_network(d, strict=False)
        except ValueError:
            fail(f"destination '{d}' is not an address or prefix (host names are not translated)")
        if net.version != family:
            fail(f"destination {d} is IPv{net.version} but {command} handles IPv{family}")
        dsts.append(net)
    return dsts


def _set_mark(opt, text, fail):
    """--set-mark/--set-xmark VALUE[/MASK]: the mark, which must be whole (a full mask)."""
    v, _, m = text.partition("/")
    try:
        mark = int(v, 0)
        mask = int(m, 0) if m else FULL_MASK
    except ValueError:
        fail(f"{opt} {text}: not a number")
    if mask != FULL_MASK:
        fail(f"{opt} {text}: a partial mask keeps bits of an earlier mark; only whole marks translate")
    return mark


def _check_rule(o, fail):
    """What a translated rule must be: mangle PREROUTING -j MARK with a whole non-zero mark; ports with tcp/udp."""
    if o["table"] != "mangle":
        fail(f"rule in table '{o['table']}': firewall marks for LVS are set in table mangle (-t mangle)")
    if o["chain"] != "PREROUTING":
        fail(f"rule in chain '{o['chain']}': only PREROUTING marks are translated (xlb classifies packets on "
             "arrival)")
    if o["target"] != "MARK":
        fail(f"target '{o['target']}': only -j MARK rules are translated")
    mark = o["mark"]
    if mark is None:
        fail("-j MARK without --set-mark")
    if not 1 <= mark <= FULL_MASK:
        fail(f"mark {mark}: must be 1..{FULL_MASK} (mark 0 is every unmarked packet)")
    if o["ports"] is not None and o["proto"] not in ("tcp", "udp"):
        fail("destination ports need -p tcp or -p udp (iptables refuses them otherwise)")


def _port_range(text, fail):
    lo, sep, hi = text.partition(":")
    try:
        lo_n = int(lo) if lo else 0
        hi_n = (int(hi) if hi else 65535) if sep else lo_n
    except ValueError:
        fail(f"port '{text}' is not a port or LO:HI range (service names are not translated)")
    if not 0 <= lo_n <= hi_n <= 65535:
        fail(f"port range '{text}' must be LO:HI with 0 <= LO <= HI <= 65535")
    if lo_n == 0 and (lo_n, hi_n) != (0, 65535):
        fail(f"port range '{text}' includes port 0, which xlb mark rules cannot name; start at 1")
    return (lo_n, hi_n)


def _overlap(a: MarkLine, b: MarkLine):
    """A description of a packet both rules match, or None."""
    if a.dst.version != b.dst.version:
        return None
    if a.tree["proto"] != "any" and b.tree["proto"] != "any" and a.tree["proto"] != b.tree["proto"]:
        return None
    if not (a.dst.subnet_of(b.dst) or b.dst.subnet_of(a.dst)):
        return None
    pa, pb = a.ports or [(0, 65535)], b.ports or [(0, 65535)]
    port = next((max(x[0], y[0]) for x in pa for y in pb if max(x[0], y[0]) <= min(x[1], y[1])), None)
    if port is None:
        return None
    proto = a.tree["proto"] if a.tree["proto"] != "any" else b.tree["proto"]
    dst = a.dst if a.dst.prefixlen >= b.dst.prefixlen else b.dst
    what = f"{'tcp/udp' if proto == 'any' else proto} to {dst}"
    return what + (f" port {port}" if a.ports or b.ports else "")


def _check_order(rules, source):
    """iptables: the last matching MARK wins; xlb: the most specific. They must agree wherever rules overlap."""
    for j, later in enumerate(rules):
        for earlier in rules[:j]:
            if earlier.tree["mark"] == later.tree["mark"]:
                continue
            what = _overlap(earlier, later)
            if what is None or later.priority() > earlier.priority():
                continue
            raise ConfigError(source, f"line {later.line}", (
                f"this rule (mark {later.tree['mark']}) and the rule at line {earlier.line} "
                f"(mark {earlier.tree['mark']}) both match {what}: iptables gives such packets the later rule's "
                f"mark, but xlb gives the most specific rule's mark, and this rule is not more specific. "
                "Put the more specific rule last, or make the rules not overlap"))
