"""The XDP attachment of an interface as the kernel reports it over netlink (pyroute2): which program, in which
mode, and an interface's index. Imports no other xlb module but xlb.errors, so the loader (program) and the pin
directory's checks (pin) both ask it.
"""
from ..errors import KernelError


def attached_prog_id(ifname, ns=None):
    """Id of the XDP program on ifname (in namespace ns, default this one), or None."""
    return attached_prog(ifname, ns)[0]


# IFLA_XDP_ATTACHED as pyroute2 names it -> our mode names (offloaded and several-at-once programs: None)
_ATTACHED_MODES = {"xdp": "native", "xdpgeneric": "generic"}


def attached_prog(ifname, ns=None):
    """(id, mode) of the XDP program on ifname (in namespace ns, default this one): mode "native", "generic" or
    None (offloaded); (None, None) when it has none."""
    from pyroute2 import IPRoute
    with IPRoute(netns=ns) if ns else IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=ifname)
        if not idx:
            return None, None
        xdp = ipr.get_links(idx[0])[0].get_attr("IFLA_XDP")
    if not xdp or not xdp.get_attr("IFLA_XDP_PROG_ID"):
        return None, None
    return xdp.get_attr("IFLA_XDP_PROG_ID"), _ATTACHED_MODES.get(xdp.get_attr("IFLA_XDP_ATTACHED"))


def ifindex_of(ifname):
    """The index of interface `ifname` in this network namespace (KernelError if there is none)."""
    from pyroute2 import IPRoute
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=ifname)
    if not idx:
        raise KernelError(f"no interface named {ifname!r} in this network namespace")
    return idx[0]
