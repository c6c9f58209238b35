"""check_via_vip: health checks sent to VIP:port the way client traffic reaches a DR real, set up by the daemon
with pyroute2 (never `ip`).

A check socket carries SO_MARK M; a policy rule sends mark M to routing table M, which holds one route: the VIP
via the real (on its link). The kernel then addresses the check's frames to the real's MAC with the VIP as the
destination, as xlb's data plane forwards a client's; a real that lost the VIP from its `lo` drops them and the
check fails, though a check of its own address would pass. The real answers the balancer's own address directly,
as it answers clients: XDP lets that pass (no VIP). The balancer must not hold the VIP as a local address (the
kernel's local table comes before every rule), which xlb never needs. One mark and table per (VIP, real), from
MARK_BASE up; the rules and tables of an earlier run (killed before it could remove them) go at start.

A tun service's real gets the same rule and route, and its checks' frames are wrapped on their way out by
bpf/hcencap.c (xlb/dataplane/hcencap.py), a TC egress program on the interface toward the real: mark M -> the
service's tunnel (IPIP, GUE, GRE) to the real with the struct tunnel the data plane's tunnels map holds for it
(outer source: tunnel_source, else the balancer's address toward the real), so the check's outer headers are the
ones bpf/tun.h puts on a client's packet. The real's `xlb decap` unwraps them; without the VIP on its lo the check
fails. The route may then go through a gateway (a tunnel needs no shared link). A real of the other family than
the VIP (4in6, 6in4) cannot be a next hop of the VIP's route (IPv6 routes take no IPv4 gateway): table M routes the
VIP via a placeholder IPv6 link-local next hop (fe80::584c:0:M's low 16 bits) that a permanent neighbour entry
resolves to the interface's own MAC, and bpf/hcencap.c gives the wrapped frame the MACs of the FIB's next hop
toward the real (as the data plane's bpf_fib_lookup does: it needs the forwarding sysctl that `xlb run` sets)."""
import dataclasses
import ipaddress
import socket

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ..dataplane.hcencap import HcEncap
from ..dataplane.tunnels import entry as tunnel_entry
from ..errors import XlbError

MARK_BASE = 0x584C0000       # "XL" << 16: marks and table ids MARK_BASE .. MARK_BASE + 0xffff
MARK_SPAN = 0x10000
RULE_PRIORITY = 1000         # before the main table's rule (32766), after the local table's (0)
PLACEHOLDER = ipaddress.ip_network("fe80::584c:0:0/112")   # next hops of mixed-family checks' routes, by mark
NUD_PERMANENT = 0x80


def _family(addr):
    return socket.AF_INET6 if ipaddress.ip_address(addr).version == 6 else socket.AF_INET


class ViaVip:
    """The marks, rules and routes of every check sent via a VIP. ``mark(check)`` returns the check with its
    so_mark (routes installed on first use); ``keep_only(keys)`` removes those of (VIP, real) pairs no check
    uses any more; ``close()`` removes them all."""

    def __init__(self, log):
        self.log = log
        self.marks = {}          # key(check) -> mark (also the table id)
        self.placeholders = {}   # mark -> (ifindex, placeholder next hop) of a mixed-family check's route
        self.ipr = None
        self.encap = HcEncap(log)   # tun reals' checks: the TC program, loaded on first use

    def _netlink(self):
        if self.ipr is None:
            self.ipr = IPRoute()
            self._remove_stale()
        return self.ipr

    def _remove_stale(self):
        """Rules (and their tables' routes) in our range, and placeholder neighbours, that an earlier run left."""
        try:
            for n in self.ipr.get_neighbours(family=socket.AF_INET6):
                dst = n.get_attr("NDA_DST")
                if dst and ipaddress.ip_address(dst) in PLACEHOLDER:
                    self._unneigh(n["ifindex"], dst)
        except NetlinkError:
            pass
        for family in (socket.AF_INET, socket.AF_INET6):
            try:
                rules = self.ipr.get_rules(family=family)
            except NetlinkError:
                continue
            for rule in rules:
                table = rule.get_attr("FRA_TABLE") or rule["table"]
                if MARK_BASE <= table < MARK_BASE + MARK_SPAN:
                    self._drop(family, table)

    @staticmethod
    def key(check):
        """What one mark stands for: (VIP, real, the tunnel or None)."""
        return (check.connect_ip, check.via, check.via_tunnel)

    def mark(self, check):
        key = self.key(check)
        if key not in self.marks:
            used = set(self.marks.values())
            m = next(m for m in range(MARK_BASE, MARK_BASE + MARK_SPAN) if m not in used)
            self.marks[key] = m
            self._install(m, *key)
        return dataclasses.replace(check, so_mark=self.marks[key])

    def _install(self, m, vip, real, tunnel=None):
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
            gateway = hop.get_attr("RTA_GATEWAY")
            if gateway and tunnel is None:
                raise ValueError(f"{real} is reached through a gateway: direct routing needs it on a link")
            if tunnel is not None:
                self.encap.set(m, _tunnel(tunnel, real, hop), real, oif)
            if _family(real) == fam:
                ipr.route("replace", family=fam, dst=f"{vip}/{plen}", gateway=gateway or real, oif=oif, table=m)
            else:
                self._placeholder_route(m, fam, f"{vip}/{plen}", oif)
        except (NetlinkError, OSError, ValueError, XlbError) as exc:
            self.log(f"xlb: check_via_vip: no route to [{vip}] via [{real}] ({exc}): its checks fail")
            try:
                ipr.route("replace", family=fam, dst=f"{vip}/{plen}", type="unreachable", table=m)
            except NetlinkError as exc2:
                self.log(f"xlb: check_via_vip: cannot add an unreachable route to table {m:#x}: {exc2}")

    def _placeholder_route(self, m, fam, dst, oif):
        """Table m: dst via the placeholder next hop of mark m on oif, which resolves to oif's own MAC (the TC
        program puts the real's next hop's MACs on the wrapped frame)."""
        gw = str(PLACEHOLDER.network_address + (m - MARK_BASE))
        (link,) = self.ipr.get_links(oif)
        self.ipr.neigh("replace", family=socket.AF_INET6, dst=gw, lladdr=link.get_attr("IFLA_ADDRESS"),
                       ifindex=oif, state=NUD_PERMANENT)
        self.placeholders[m] = (oif, gw)
        if fam == socket.AF_INET6:
            self.ipr.route("replace", family=fam, dst=dst, gateway=gw, oif=oif, table=m)
        else:
            self.ipr.route("replace", family=fam, dst=dst, via={"family": socket.AF_INET6, "addr": gw}, oif=oif,
                           table=m)

    def _unneigh(self, ifindex, dst):
        try:
            self.ipr.neigh("del", family=socket.AF_INET6, dst=dst, ifindex=ifindex)
        except NetlinkError:
            pass

    def _drop(self, family, table):
        try:
            self.ipr.rule("del", family=family, table=table, priority=RULE_PRIORITY, fwmark=table)
        except NetlinkError:
            pass
        try:
            self.ipr.flush_routes(family=family, table=table)
        except NetlinkError:
            pass
        if table in self.placeholders:
            self._unneigh(*self.placeholders.pop(table))

    def keep_only(self, keys):
        for key in [k for k in self.marks if k not in keys]:
            m = self.marks.pop(key)
            self._drop(_family(key[0]), m)
            if key[2] is not None:
                self.encap.unset(m)

    def close(self):
        self.keep_only(set())
        self.encap.close()
        if self.ipr is not None:
            self.ipr.close()
            self.ipr = None


def _tunnel(tunnel, real, hop):
    """The struct tunnel of a wrapped check, as the data plane's for that real (xlb/dataplane/tunnels.py plan):
    the service's tunnel_source of the real's family, else the balancer's own address toward the real."""
    addr = ipaddress.ip_address(real)
    net = tunnel.source_for(addr.version)
    if net is None:
        src = hop.get_attr("RTA_PREFSRC")
        if not src:
            raise ValueError("no source address toward the real")
        net = ipaddress.ip_network(src)
    return tunnel_entry(tunnel, addr, net)
