"""Real-server addresses that can never receive forwarded traffic, refused before anything is applied.

Pure (tests/test_config.py): :func:`check` runs inside the config validator (``config.from_tree``), so a file
(`xlb check`, `xlb run`, SIGHUP), a keepalived import and every runtime edit (`xlb real add`, `xlb ipvsadm -a/-e`)
meet the same rules. :func:`check_local` needs the balancer's own addresses, which only the daemon knows: it runs
at apply time in the daemon (start, reload, runtime edit).

Which addresses, and why (direct routing rewrites only the Ethernet header; the real's address is what
``bpf_fib_lookup`` resolves to a next hop):
- IPVS refuses (``ip_vs_new_dest``) an IPv4 real that is not unicast or local (``inet_addr_type``): 0.0.0.0/8,
  255.255.255.255, multicast, a subnet broadcast; and an IPv6 real that is not unicast or is link-local (unless
  local): ``::``, multicast, ``::ffff:0:0/96``, ``fe80::/10``. xlb refuses the same. IPv4 link-local
  (169.254.0.0/16) is unicast to IPVS and stays allowed.
- IPVS accepts a local real (127.0.0.0/8, ``::1``, the director's own addresses) and delivers to it on the
  director; XDP cannot (the FIB lookup answers "not forwarded" and the packet is dropped as ``drop_fib``), so xlb
  refuses them: loopback here, the balancer's own addresses in the daemon.
- A real equal to a VIP (a vip service's, or a mark rule's single-address ``dst``): the packet to forward already
  has that destination, so the balancer would look up the VIP's own next hop, which is itself or nobody.
"""
from __future__ import annotations

import ipaddress

from ..errors import ConfigError, KernelError

_ZERO_NET4 = ipaddress.ip_network("0.0.0.0/8")
_BROADCAST4 = ipaddress.ip_address("255.255.255.255")
LOCAL = "xlb forwards out of the interface and cannot deliver to the balancer itself (IPVS can)"


def unusable(addr) -> str | None:
    """Why a real server at ``addr`` can never receive forwarded traffic, or None if it may."""
    if addr.version == 4:
        if addr in _ZERO_NET4:
            return "is in 0.0.0.0/8 (\"this network\"), not a host's address (IPVS refuses it too)"
        if addr == _BROADCAST4:
            return "is the broadcast address (IPVS refuses it too)"
    else:
        if addr.is_unspecified:
            return "is the unspecified address, not a host's (IPVS refuses it too)"
        if addr.ipv4_mapped is not None:
            return "is an IPv4-mapped address (IPVS refuses it); give the IPv4 real to an IPv4 service"
        if addr.is_link_local:
            return ("is link-local (IPVS refuses it too: it needs an interface scope); give the real's global or "
                    "unique-local address")
    if addr.is_multicast:
        return "is a multicast address (IPVS refuses it too); a real is one host"
    if addr.is_loopback:
        return f"is a loopback address: {LOCAL}"
    return None


def _vips(services, marks) -> dict:
    """{address: what makes it a VIP} for the vip services and the single-address mark rules."""
    out = {}
    for svc in services:
        if svc.vip is not None:
            out.setdefault(svc.vip, f"the VIP of {svc.where} ({svc.name})")
    for rule in marks:
        if rule.dst.prefixlen == rule.dst.max_prefixlen:
            out.setdefault(rule.dst.network_address, f"the dst of {rule.where} (mark {rule.mark})")
    return out


def check(services, marks, source) -> None:
    """Refuse the first real whose address is unusable or a VIP; the error names its ``address`` field."""
    vips = _vips(services, marks)
    for svc in services:
        for real in svc.reals:
            why = unusable(real.address)
            if why is None and real.address in vips:
                why = (f"is {vips[real.address]}: a real must be another host, which accepts the VIP locally "
                       "(see `tools/xlb-dr-real`)")
            if why:
                raise ConfigError(source, f"{real.where}.address", f"real {real.address} {why}")


def check_local(cfg, local: dict, iface: str, before=None, source=None) -> None:
    """Refuse a real that is one of the balancer's own addresses (``local``: {address: "address of IF" or
    "broadcast address of IF"}, from :func:`own_addresses`); the daemon runs it before it applies ``cfg``.

    A runtime edit gives the running config as ``before`` and its own ``source``: only the reals it adds are
    checked, and the error names its ``-r``. A file (start, reload) is checked whole and names the field."""
    known = {(svc.key, real.address) for svc in before.services for real in svc.reals} if before else set()
    for svc in cfg.services:
        for real in svc.reals:
            if real.address in local and (svc.key, real.address) not in known:
                raise ConfigError(source or cfg.source, "-r" if source else f"{real.where}.address",
                                  f"real {real.address} is the {local[real.address]} on this balancer (xlb runs "
                                  f"on {iface}): {LOCAL}; give a real server's address")


def interface_addresses(why):
    """[(interface name, its own address, the netlink message)] of every address in this network namespace; ``why``
    ends the error when netlink cannot answer."""
    from pyroute2 import IPRoute  # the daemon's side only: the pure checks above need no netlink
    from pyroute2.netlink.exceptions import NetlinkError
    try:
        with IPRoute() as ipr:
            names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
            addrs = list(ipr.get_addr())
    except (OSError, NetlinkError) as exc:
        raise KernelError(f"cannot list this host's addresses ({why}): {exc}") from exc
    out = []
    for msg in addrs:
        # IFA_LOCAL is ours; IFA_ADDRESS is too, except on a point-to-point link (the peer's) and it is the
        # only one IPv6 gives.
        local = ipaddress.ip_address((msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")).split("%")[0])
        out.append((names.get(msg["index"], f"interface {msg['index']}"), local, msg))
    return out


def own_addresses() -> dict:
    """{address: "address of IF" | "broadcast address of IF"} of every interface in this network namespace."""
    out = {}
    for ifname, local, msg in interface_addresses("a real must not be one of them"):
        out.setdefault(local, f"address of {ifname}")
        found = [msg.get_attr("IFA_BROADCAST")]
        if local.version == 4 and msg["prefixlen"] < 31:  # the kernel makes it a broadcast route, brd or not
            found.append(str(ipaddress.ip_network(f"{local}/{msg['prefixlen']}", strict=False).broadcast_address))
        for value in filter(None, found):
            out.setdefault(ipaddress.ip_address(value), f"broadcast address of {ifname}")
    return out
