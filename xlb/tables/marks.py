"""Mark rules to LPM entries (pure): what the data plane's `mark_rules` trie must hold for a list of MarkRules.

The trie key is (family, proto, port, destination prefix); port 0 stands for "every port". The data plane asks
twice, once with the packet's port and once with 0, so a rule naming the port beats an every-port rule, and within
each the longest prefix wins. A rule for proto "any" is written for tcp and udp, except where a rule naming that
proto claims the same prefix and port: the specific protocol wins.
"""
import ipaddress

from ..config.model import addr_bytes, fwmark_key

PROTO_NUM = {"tcp": 6, "udp": 17, "sctp": 132}  # mark rules use tcp and udp; services sctp too


def rule_identity(rule):
    """What makes two rules the same rule across reloads (its hit counter follows it)."""
    return (rule.mark, rule.proto, str(rule.dst), rule.ports)


def _ports(rule):
    if not rule.ports:
        return (0,)
    return [p for lo, hi in rule.ports for p in range(lo, hi + 1)]


def lpm_entries(rules):
    """{(family, proto_num, port, prefix_bytes16, prefixlen): rule_index} for the mark_rules trie."""
    entries = {}
    # Specific protocols first, so an "any" rule fills only what they leave.
    order = sorted(range(len(rules)), key=lambda i: rules[i].proto == "any")
    for i in order:
        rule = rules[i]
        family = rule.dst.version
        prefix = addr_bytes(rule.dst.network_address)
        protos = ("tcp", "udp") if rule.proto == "any" else (rule.proto,)
        for proto in protos:
            for port in _ports(rule):
                key = (family, PROTO_NUM[proto], port, prefix, rule.dst.prefixlen)
                entries.setdefault(key, i)
    return entries


def vip_prefixes(config):
    """{(family, prefix_bytes16, prefixlen)} of every VIP and mark-rule destination (to recognise fragments)."""
    out = set()
    for svc in config.services:
        if svc.vip is not None:
            out.add((svc.family, addr_bytes(svc.vip), 128 if svc.family == 6 else 32))
    out.update(dst_prefix(rule) for rule in config.marks)
    return out


def dst_prefix(rule):
    """A mark rule's destination as (family, prefix_bytes16, prefixlen)."""
    return (rule.dst.version, addr_bytes(rule.dst.network_address), rule.dst.prefixlen)


def fwmark_prefixes(config):
    """{fwmark service key: {(family, prefix_bytes16, prefixlen)}}: the destinations of the mark rules that feed each
    fwmark service (the rules of its mark and family)."""
    out = {svc.key: set() for svc in config.services if svc.fwmark is not None}
    for rule in config.marks:
        prefixes = out.get(fwmark_key(rule.dst.version, rule.mark))
        if prefixes is not None:
            prefixes.add(dst_prefix(rule))
    return out


def rule_identity_of_entries(entries):
    """rule_identity of the rule whose trie entries these are ([(mark, (family, proto, port, prefix,
    plen))]): "any" when it holds both protocols, its ports merged into ranges, () for every port."""
    mark = entries[0][0]
    family, _, _, prefix, plen = entries[0][1]
    protos = {e[1] for _, e in entries}
    ports = sorted({e[2] for _, e in entries} - {0})
    ranges = []
    for p in ports:
        if ranges and ranges[-1][1] == p - 1:
            ranges[-1] = (ranges[-1][0], p)
        else:
            ranges.append((p, p))
    proto = "any" if len(protos) > 1 else {v: k for k, v in PROTO_NUM.items()}[protos.pop()]
    dst = ipaddress.ip_network((prefix[:4] if family == 4 else prefix, plen))
    return (mark, proto, str(dst), tuple(ranges))
