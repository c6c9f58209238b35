"""check_via_vip: health checks sent to VIP:port the way client traffic reaches a DR real, set up by the daemon
with pyroute2 (never `ip`).

A check socket carries SO_MARK M; a policy rule sends mark M to routing table M, which holds one route: the VIP
via the real (on its link). The kernel then addresses the check's frames to the real's MAC with the VIP as the
destination, as xlb's data plane forwards a client's; a real that lost the VIP from its `lo` drops them and the
check fails, though a check of its own address would pass. The real answers the balancer's own address directly,
as it answers clients: XDP lets that pass (no VIP). The balancer must not hold the VIP as a local address (the
kernel's local table comes before every rule), which xlb never needs. One mark and table per (VIP, real), from
MARK_BASE up; the rules and tables of an earlier run (killed before it could remove them) go at start.

TUN reals (encapsulated checks) wait for the tunnel forwarding method: a tun service is not yet configurable."""
import dataclasses
import ipaddress
import socket

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

MARK_BASE = 0x584C0000       # "XL" << 16: marks and table ids MARK_BASE .. MARK_BASE + 0xffff
MARK_SPAN = 0x10000
RULE_PRIORITY = 1000         # before the main table's rule (32766), after the local table's (0)


def _family(addr):
    return socket.AF_INET6 if ipaddress.ip_address(addr).version == 6 else socket.AF_INET


class ViaVip:
    """The marks, rules and routes of every check sent via a VIP. ``mark(check)`` returns the check with its
    so_mark (routes installed on first use); ``keep_only(keys)`` removes those of (VIP, real) pairs no check
    uses any more; ``close()`` removes them all."""

    def __init__(self, log):
        self.log = log
        self.marks = {}          # (vip, real) -> mark (also the table id)
        self.ipr = None

    def _netlink(self):
        if self.ipr is None:
            self.ipr = IPRoute()
            self._remove_stale()
        return self.ipr

    def _remove_stale(self):
        """Rules (and their tables' routes) in our range that an earlier run left behind."""
        for family in (socket.AF_INET, socket.AF_INET6):
            try:
                rules = self.ipr.get_rules(family=family)
            except NetlinkError:
                continue
            for rule in rules:
                table = rule.get_attr("FRA_TABLE") or rule["table"]
                if MARK_BASE <= table < MARK_BASE + MARK_SPAN:
                    self._drop(family, table)

    def mark(self, check):
        key = (check.connect_ip, check.via)
        if key not in self.marks:
            used = set(self.marks.values())
            m = next(m for m in range(MARK_BASE, MARK_BASE + MARK_SPAN) if m not in used)
            self.marks[key] = m
            self._install(m, *key)
        return dataclasses.replace(check, so_mark=self.marks[key])

    def _install(self, m, vip, real):
        """Rule mark m -> table m; in table m the VIP via the real, out of the interface the real is on. A real
        that cannot be reached gets an unreachable route: its checks fail rather than take the main table's way."""
        fam = _family(vip)
        plen = 32 if fam == socket.AF_INET else 128
        ipr = self._netlink()
        try:
            ipr.rule("add", family=fam, fwmark=m, table=m, priority=RULE_PRIORITY)
        except NetlinkError as exc:
            if exc.code != 17:   # EEXIST
                self.log(f"xlb: check_via_vip: cannot add the rule for mark {m:#x}: {exc}")
        try:
            (hop,) = ipr.route("get", dst=real)
            oif = hop.get_attr("RTA_OIF")
            if hop.get_attr("RTA_GATEWAY"):
                raise ValueError(f"{real} is reached through a gateway: direct routing needs it on a link")
            ipr.route("replace", family=fam, dst=f"{vip}/{plen}", gateway=real, oif=oif, table=m)
        except (NetlinkError, OSError, ValueError) as exc:
            self.log(f"xlb: check_via_vip: no route to [{vip}] via [{real}] ({exc}): its checks fail")
            try:
                ipr.route("replace", family=fam, dst=f"{vip}/{plen}", type="unreachable", table=m)
            except NetlinkError as exc2:
                self.log(f"xlb: check_via_vip: cannot add an unreachable route to table {m:#x}: {exc2}")

    def _drop(self, family, table):
        try:
            self.ipr.rule("del", family=family, table=table, priority=RULE_PRIORITY, fwmark=table)
        except NetlinkError:
            pass
        try:
            self.ipr.flush_routes(family=family, table=table)
        except NetlinkError:
            pass

    def keep_only(self, keys):
        for key in [k for k in self.marks if k not in keys]:
            self._drop(_family(key[0]), self.marks.pop(key))

    def close(self):
        self.keep_only(set())
        if self.ipr is not None:
            self.ipr.close()
            self.ipr = None
