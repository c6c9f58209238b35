"""Next hops of real servers: the kernel resolves them, the data plane reads them with bpf_fib_lookup.

For every real, we ask the kernel for its route; an on-link real gets a *managed* neighbour entry
(NTF_EXT_MANAGED, Linux 5.16+), which the kernel resolves at once and keeps fresh by itself, so the first packet
to a real finds its MAC and a real that moves is re-learned without traffic. A real behind a gateway cannot be
reached by direct routing: we say so (the data plane counts drop_not_onlink).

The managed entries are xlb's: when a real leaves the config (a reload, a runtime edit) and when the daemon detaches
its program (SIGTERM), :func:`remove_managed` deletes them, so removed reals are not kept resolved for ever. Entries
that were there without the managed flag (static, learned, the operator's) are never touched.
"""
import ipaddress
import socket

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ..errors import KernelError

NTF_EXT_MANAGED = 0x1
NUD_NONE = 0x00
_EEXIST = 17
_ENOENT = 2


def _family(addr):
    return socket.AF_INET6 if addr.version == 6 else socket.AF_INET


def ensure_neighbours(addresses, log=print, _warned=set(), tunnelled=frozenset()):
    """Make sure each on-link address has a neighbour entry the kernel keeps resolved. A tunnelled real (its outer
    packets follow the route, gateway included) behind a gateway is no problem: no warning.

    Returns {address: "managed" | "present" | "via-gateway" | "no-route"}.
    """
    status = {}
    try:
        ipr = IPRoute()
    except NetlinkError as exc:
        raise KernelError(f"netlink unavailable: {exc}") from exc
    with ipr:
        for addr in sorted(set(addresses), key=lambda a: (a.version, a)):
            addr = ipaddress.ip_address(addr)
            try:
                route = ipr.route("get", dst=str(addr))[0]
            except NetlinkError:
                status[addr] = "no-route"
                if addr not in _warned:
                    _warned.add(addr)
                    log(f"xlb: real {addr}: no route; direct routing cannot reach it")
                continue
            if route.get_attr("RTA_GATEWAY"):
                status[addr] = "via-gateway"
                if addr not in _warned and addr not in tunnelled:
                    _warned.add(addr)
                    log(f"xlb: real {addr} is behind gateway {route.get_attr('RTA_GATEWAY')}; direct routing "
                        "needs it on-link (packets to it are dropped as drop_not_onlink)")
                continue
            oif = route.get_attr("RTA_OIF")
            try:
                ipr.neigh("add", dst=str(addr), ifindex=oif, family=_family(addr), state=NUD_NONE,
                          NDA_FLAGS_EXT=NTF_EXT_MANAGED)
                status[addr] = "managed"
            except NetlinkError as exc:
                if exc.code != _EEXIST:
                    raise KernelError(f"cannot add a neighbour entry for real {addr}: {exc}") from exc
                status[addr] = "present"
    return status


def remove_managed(addresses):
    """Delete the managed (NTF_EXT_MANAGED) neighbour entries of these addresses; others stay. Returns how many."""
    removed = 0
    if not addresses:
        return removed
    try:
        ipr = IPRoute()
    except NetlinkError as exc:
        raise KernelError(f"netlink unavailable: {exc}") from exc
    with ipr:
        for addr in map(ipaddress.ip_address, addresses):
            for entry in ipr.get_neighbours(dst=str(addr), family=_family(addr)):
                if not (entry.get_attr("NDA_FLAGS_EXT") or 0) & NTF_EXT_MANAGED:
                    continue
                try:
                    ipr.neigh("del", dst=str(addr), ifindex=entry["ifindex"], family=_family(addr))
                    removed += 1
                except NetlinkError as exc:
                    if exc.code != _ENOENT:
                        raise KernelError(f"cannot remove the neighbour entry of {addr}: {exc}") from exc
    return removed
