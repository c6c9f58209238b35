"""Attach-time check for native XDP on a veth whose peer offloads transmit checksums (xlb cannot see it per packet).

A veth's peer with tx checksum offload on (a veth's default) hands over the TCP/UDP packets its own stack sends
with only a partial checksum, the rest left to skb metadata that native XDP never sees: xlb forwards such frames
as they are (counted as fwd_tx / fwd_redirect) and the real drops them for their checksum. Generic XDP runs after
the kernel has dealt with that. The peer is found through netlink (IFLA_LINK, and IFLA_LINK_NETNSID when it lives
in another namespace), its offload through ethtool (pyroute2's) inside the peer's namespace.
"""
import contextlib
import os
import socket
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2 import netns as pnetns
from pyroute2.netlink.exceptions import NetlinkError

# The features behind CHECKSUM_PARTIAL TCP/UDP packets (the kernel's NETIF_F_CSUM_MASK); `ethtool -K IF tx off`
# turns them all off.
CSUM_FEATURES = ("tx-checksum-ipv4", "tx-checksum-ip-generic", "tx-checksum-ipv6")


def tx_checksum_on(ifname):
    """Whether ifname (in the calling thread's namespace) offloads TCP/UDP transmit checksums."""
    from pyroute2.ethtool import Ethtool  # its ioctl and genetlink sockets belong to the calling thread's namespace

    with Ethtool() as eth:
        features = eth.get_features(ifname).features
    return any(features[name].enable for name in CSUM_FEATURES if name in features)


@contextlib.contextmanager
def _thread_in(ns_fd):
    """The calling thread in the namespace of ns_fd for the block (sockets made there stay there)."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        pnetns.setns(ns_fd)
        try:
            yield
        finally:
            pnetns.setns(home)
    finally:
        os.close(home)


def _namespaces():
    """Paths of the network namespaces on this host: the named ones, then every process's (each once)."""
    seen = set()
    named = sorted(Path("/run/netns").iterdir()) if Path("/run/netns").is_dir() else []
    procs = (Path("/proc") / p / "ns/net" for p in os.listdir("/proc") if p.isdigit())
    for path in (*named, *procs):
        try:
            st = os.stat(path)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            yield path


def _open_nsid(ipr, nsid):
    """(fd, path) of the namespace that this one calls nsid, or None."""
    for path in _namespaces():
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            got = ipr.get_netnsid(fd=fd)
        except NetlinkError:
            got = None
        if got and got.get("nsid") == nsid:
            return fd, path
        os.close(fd)
    return None


def offloading_peer(ifname):
    """(peer name, where) when ifname is a veth whose peer has tx checksum offload on; None otherwise or when the
    peer cannot be found (its namespace held by no process nor name)."""
    with IPRoute() as ipr:
        links = ipr.link("get", ifname=ifname)
        link = links[0]
        info = link.get_attr("IFLA_LINKINFO")
        if info is None or info.get_attr("IFLA_INFO_KIND") != "veth":
            return None
        peer_index, nsid = link.get_attr("IFLA_LINK"), link.get_attr("IFLA_LINK_NETNSID")
        if not peer_index:
            return None
        if nsid is None:
            peer = socket.if_indextoname(peer_index)
            return (peer, "this namespace") if tx_checksum_on(peer) else None
        found = _open_nsid(ipr, nsid)
    if found is None:
        return None
    fd, path = found
    try:
        with _thread_in(fd):
            peer = socket.if_indextoname(peer_index)
            on = tx_checksum_on(peer)
    finally:
        os.close(fd)
    where = f"namespace {path.name}" if path.parent == Path("/run/netns") else f"the namespace of {path}"
    return (peer, where) if on else None


def warn_native_veth(ifname, log):
    """Say what to do when native XDP on ifname would forward frames with partial checksums (see the module)."""
    try:
        found = offloading_peer(ifname)
    except (OSError, NetlinkError):
        return  # a check that cannot run must not stop the attach
    if found and log:
        peer, where = found
        log(f"xlb: warning: {ifname} is a veth whose peer {peer} ({where}) has tx checksum offload on: packets "
            f"its stack sends arrive with partial checksums, which native XDP forwards unfixed and the reals drop. "
            f"Turn it off on the peer (`ethtool -K {peer} tx off` in {where}) or run with --xdp-mode generic")
