"""The ``[[mark]]`` rules of the config (the firewall marks xlb sets itself, for fwmark services): each rule's
fields, its ports as merged ranges, and the check that no two rules give one packet two marks. Two rules "claim
the same thing" only with an identical ``dst`` prefix; a longer prefix inside a shorter one is not a conflict
(longest prefix wins in the data plane), and neither is a specific-proto rule next to an "any" rule (the specific
proto wins), nor a ported rule next to a no-ports rule (the ported rule wins).
"""
import ipaddress
import re

from .model import U32_MAX, MarkRule, show_value
from .validate import join, no_zone


def read(v, top) -> tuple:
    """The document's ``[[mark]]`` rules, checked against each other."""
    marks = tuple(_mark(v, item, where) for where, item in v.array_of_tables(top, "", "mark"))
    _check_conflicts(v, marks)
    return marks


def _mark(v, item, where) -> MarkRule:
    tbl = v.table(item, where, ("mark", "proto", "dst", "ports"))
    mark = v.integer(tbl, where, "mark", 1, U32_MAX, required=True)
    proto = v.choice(tbl, where, "proto", ("tcp", "udp", "any"), default="any")
    if "dst" not in tbl:
        v.fail(join(where, "dst"), 'dst is required (a prefix such as "198.51.100.0/24" or "2001:db8::/64")')
    dst_s = tbl["dst"]
    if not isinstance(dst_s, str):
        v.fail(join(where, "dst"), f"dst must be a prefix string like \"198.51.100.0/24\", got {show_value(dst_s)}")
    try:
        dst = ipaddress.ip_network(dst_s, strict=True)
    except ValueError as e:
        hint = ""
        try:
            hint = f" (did you mean \"{ipaddress.ip_network(dst_s, strict=False)}\"?)"
        except ValueError:
            pass
        v.fail(join(where, "dst"), f"dst must be a network prefix with no host bits set: {e}{hint}")
    no_zone(v, dst.network_address, join(where, "dst"), f"/{dst.prefixlen}")
    ports = _ports(v, tbl, where)
    return MarkRule(mark=mark, proto=proto, dst=dst, ports=ports, where=where)


def _ports(v, tbl, where) -> tuple:
    """Parse ``ports = [80, "8000-8080"]`` into merged, sorted inclusive ranges; omitted = () = every port."""
    if "ports" not in tbl:
        return ()
    path = join(where, "ports")
    raw = tbl["ports"]
    if not isinstance(raw, list):
        v.fail(path, f"ports must be an array of ports and \"lo-hi\" ranges, got {show_value(raw)}")
    if not raw:
        v.fail(path, "ports is empty; omit the key to match every port")
    ranges = []
    for i, p in enumerate(raw):
        bad = f"each port must be an integer 1..65535 or a string \"lo-hi\" with 1 <= lo <= hi <= 65535, got {show_value(p)}"
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


def _check_conflicts(v, marks):
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
