"""The tunnels map: for each real of a ``method = "tun"`` service, the outer headers bpf/tun.h puts in front of its
packets (struct tunnel). The outer source is the service's ``tunnel_source`` of the real's family (an address, or a
prefix whose host bits the data plane fills from the flow's hash), else the balancer's own address toward the real
as the kernel's route to it says (IPVS's choice; learned at each apply, so a reload follows a renumbering).
"""
import ipaddress

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from . import structs as S
from .mapkeys import htons
from ..config.model import addr_bytes
from ..errors import ConfigError, KernelError


def plan(config, route_source=None):
    """{(service key, real address): S.Tunnel} for every tunnelled real; raises ConfigError naming the real when its
    outer source is neither configured nor learnable. Changes nothing."""
    rows = {}
    learned = {}
    for svc in config.services:
        t = svc.tunnel
        if t is None:
            continue
        for r in svc.reals:
            net = t.source_for(r.address.version)
            if net is None:
                if r.address not in learned:
                    learned[r.address] = (route_source or learn_source)(r.address)
                src = learned[r.address]
                if src is None:
                    raise ConfigError(config.source, r.where,
                                      f"no route to tunnelled real {r.address} gives this host a source address; "
                                      f"give the service a tunnel_source of IPv{r.address.version}")
                net = ipaddress.ip_network(src)
            rows[(svc.key, r.address)] = entry(t, r.address, net)
    return rows


def entry(t, address, net):
    """struct tunnel for real `address` of a service with Tunnel t, its outer sources the network net."""
    host = int(net.hostmask).to_bytes(net.max_prefixlen // 8, "big")
    flags = (S.TUN_F_CSUM if t.csum != "nocsum" else 0) | (0 if t.gue_header else S.TUN_F_BARE)
    return S.Tunnel(src=S.addr_words(addr_bytes(net.network_address)), src_host=S.addr_words(host.ljust(16, b"\0")),
                    port=htons(t.port), type=S.TUN_TYPE[t.type], flags=flags,
                    family=S.AF_INET if address.version == 4 else S.AF_INET6)


def learn_source(address):
    """This host's preferred source address toward `address` (the route's), or None without a route."""
    try:
        with IPRoute() as ipr:
            route = ipr.route("get", dst=str(address))[0]
    except NetlinkError as exc:
        if exc.code in (101, 113, 22):  # ENETUNREACH, EHOSTUNREACH, EINVAL: no route
            return None
        raise KernelError(f"cannot read the route to real {address}: {exc}") from exc
    src = route.get_attr("RTA_PREFSRC")
    return ipaddress.ip_address(src) if src else None
