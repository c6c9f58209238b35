"""Throwaway network-namespace topologies for integration tests and the demo (pyroute2 only, no `ip`); code runs
in them with xlb/lab/process.py, the small servers and clients are xlb/lab/servers.py.

    with Topology(prefix="xlbt") as topo:
        lb, rs = topo.netns("lb"), topo.netns("rs")
        topo.veth(lb, "eth0", rs, "eth0")
        topo.addr(lb, "eth0", "198.18.0.1/24")
        topo.addr(rs, "eth0", "198.18.0.2/24")
        topo.spawn(rs, tcp_echo_name_server, "rs1", [("0.0.0.0", 80)])
        assert run_in_netns(lb, tcp_ask, "198.18.0.1", "198.18.0.2", 80) == "rs1"

Every namespace gets a unique name (prefix, pid and a random suffix); leaving the `with` block stops every
process spawned and removes every namespace and root-namespace link created, even when the body raised.
Needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN).
"""

import ipaddress
import os
import secrets
import socket

from pyroute2 import IPRoute
from pyroute2 import netns as _pnetns
from pyroute2.netlink.exceptions import NetlinkError

from xlb.errors import KernelError

from .process import NetnsProcess, run_in_netns

IFNAMSIZ = 15  # usable characters in an interface name
IFA_F_NODAD = 0x02



def _sysctl_write(path, value):
    with open(os.path.join("/proc/sys", path.strip("/")), "w") as f:
        f.write(str(value))


def sysctl_read(path):
    with open(os.path.join("/proc/sys", path.strip("/"))) as f:
        return f.read().strip()


def _set_features(ifname, wanted):
    # Ethtool uses ioctl/genetlink sockets of the calling process, so this runs inside the namespace.
    from pyroute2.ethtool import Ethtool

    with Ethtool() as eth:
        features = eth.get_features(ifname)
        for name, on in wanted.items():
            features.features[name].enable = bool(on)
        eth.set_features(ifname, features)
        now = eth.get_features(ifname).features
        return {name: now[name].enable for name in wanted}


def _split_prefix(cidr):
    iface = ipaddress.ip_interface(cidr)
    return iface.ip, iface.network.prefixlen


class Topology:
    """A set of namespaces, links and processes that exist only for the lifetime of the `with` block.

    Namespace arguments are names returned by `netns()`; `None` means the namespace of the caller (links
    created there must be given unique names: use `name()`), and are removed on exit too.
    """

    def __init__(self, prefix="xlbt"):
        self.prefix = prefix
        self.suffix = f"{os.getpid() % 0xFFFF:x}{secrets.token_hex(2)}"
        self._namespaces = []
        self._root_links = []
        self._procs = []
        self._closed = False

    # names -------------------------------------------------------------------------------------------------
    def name(self, base=""):
        """A name unique to this topology that fits in an interface name (<= 15 characters)."""
        head = f"{self.prefix}{base}"[: IFNAMSIZ - len(self.suffix)]
        return f"{head}{self.suffix}"

    # lifecycle ---------------------------------------------------------------------------------------------
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        """Stop spawned processes, delete root-namespace links, remove namespaces. Idempotent; collects errors."""
        errors = []
        while self._procs:
            p = self._procs.pop()
            try:
                p.stop()
            except Exception as e:  # noqa: BLE001
                errors.append(e)
        while self._root_links:
            ifname = self._root_links.pop()
            try:
                with IPRoute() as ipr:
                    idx = ipr.link_lookup(ifname=ifname)
                    if idx:
                        ipr.link("del", index=idx[0])
            except NetlinkError as e:
                if e.code != 19:  # ENODEV: already gone with its peer
                    errors.append(e)
        while self._namespaces:
            ns = self._namespaces.pop()
            try:
                if ns in _pnetns.listnetns():
                    _pnetns.remove(ns)
            except OSError as e:
                errors.append(e)
        self._closed = True
        if errors:
            raise KernelError(f"topology cleanup left things behind: {errors}")

    # building ----------------------------------------------------------------------------------------------
    def _ipr(self, ns):
        return IPRoute(netns=ns) if ns is not None else IPRoute()

    def _index(self, ipr, ns, ifname):
        idx = ipr.link_lookup(ifname=ifname)
        if not idx:
            raise KernelError(f"no interface {ifname} in netns {ns or '(current)'}")
        return idx[0]

    def netns(self, name):
        """Create a namespace with lo up; return its unique name."""
        real = f"{self.prefix}-{name}-{self.suffix}"
        try:
            _pnetns.create(real)
        except OSError as e:
            raise KernelError(f"cannot create netns {real}: {e}") from e
        self._namespaces.append(real)
        self.link_up(real, "lo")
        return real

    def link_up(self, ns, ifname):
        with self._ipr(ns) as ipr:
            ipr.link("set", index=self._index(ipr, ns, ifname), state="up")

    def veth(self, ns_a, if_a, ns_b, if_b):
        """Create a veth pair `ns_a:if_a` <-> `ns_b:if_b`, both up; return (ifindex_a, ifindex_b)."""
        peer = {"ifname": if_b}
        if ns_b is not None:
            peer["net_ns_fd"] = ns_b
        try:
            with self._ipr(ns_a) as ipr:
                ipr.link("add", ifname=if_a, kind="veth", peer=peer)
                if ns_a is None:
                    self._root_links.append(if_a)
                idx_a = self._index(ipr, ns_a, if_a)
                ipr.link("set", index=idx_a, state="up")
            with self._ipr(ns_b) as ipr:
                if ns_b is None:
                    self._root_links.append(if_b)
                idx_b = self._index(ipr, ns_b, if_b)
                ipr.link("set", index=idx_b, state="up")
        except NetlinkError as e:
            raise KernelError(f"cannot create veth {ns_a}:{if_a} <-> {ns_b}:{if_b}: {e}") from e
        return idx_a, idx_b

    def bridge(self, ns, name, ports=()):
        """Create bridge `name` in `ns`, enslave `ports` (interface names in `ns`), bring all up; return ifindex."""
        with self._ipr(ns) as ipr:
            ipr.link("add", ifname=name, kind="bridge")
            if ns is None:
                self._root_links.append(name)
            br = self._index(ipr, ns, name)
            for port in ports:
                ipr.link("set", index=self._index(ipr, ns, port), master=br, state="up")
            ipr.link("set", index=br, state="up")
        return br

    def addr(self, ns, ifname, cidr):
        """Add an IPv4 or IPv6 address ("198.18.0.1/24", "fc00::1/64"); IPv6 skips DAD so it works at once."""
        ip, plen = _split_prefix(cidr)
        extra = {"flags": IFA_F_NODAD} if ip.version == 6 else {}
        with self._ipr(ns) as ipr:
            ipr.addr("add", index=self._index(ipr, ns, ifname), address=str(ip), prefixlen=plen, **extra)

    def mac(self, ns, ifname, mac):
        """Set the link-layer address of `ifname` ("02:00:00:00:00:01")."""
        with self._ipr(ns) as ipr:
            ipr.link("set", index=self._index(ipr, ns, ifname), address=mac)

    def neigh(self, ns, ifname, addr, mac):
        """Add a permanent neighbour entry: `addr` is at `mac` on `ifname`."""
        family = socket.AF_INET6 if ipaddress.ip_address(addr).version == 6 else socket.AF_INET
        with self._ipr(ns) as ipr:
            ipr.neigh("replace", dst=addr, lladdr=mac, ifindex=self._index(ipr, ns, ifname), family=family,
                      state=0x80)  # NUD_PERMANENT

    def ifindex(self, ns, ifname):
        with self._ipr(ns) as ipr:
            return self._index(ipr, ns, ifname)

    def lo_addr(self, ns, addr):
        """Put `addr` on lo (as /32 or /128 unless a prefix is given): a DR real server's VIP."""
        if "/" not in addr:
            addr = f"{addr}/{32 if ipaddress.ip_address(addr).version == 4 else 128}"
        self.addr(ns, "lo", addr)

    def lo_addr_del(self, ns, addr):
        """Take `addr` (added by lo_addr) off lo: a DR real that lost its VIP."""
        ip = ipaddress.ip_address(addr)
        with self._ipr(ns) as ipr:
            ipr.addr("del", index=self._index(ipr, ns, "lo"), address=str(ip), prefixlen=32 if ip.version == 4 else 128)

    def route(self, ns, dst, gateway=None, dev=None):
        """Add (or replace) a route; `dst` is a prefix or "default" (family taken from the gateway)."""
        if dst == "default":
            version = ipaddress.ip_address(gateway).version if gateway else 4
            dst = "0.0.0.0/0" if version == 4 else "::/0"
        net = ipaddress.ip_network(dst, strict=False)
        spec = {"dst": str(net.network_address), "dst_len": net.prefixlen,
                "family": socket.AF_INET if net.version == 4 else socket.AF_INET6}
        if gateway:
            spec["gateway"] = gateway
        with self._ipr(ns) as ipr:
            if dev:
                spec["oif"] = self._index(ipr, ns, dev)
            ipr.route("replace", **spec)

    def sysctl(self, ns, path, value):
        """Write /proc/sys/`path` (e.g. "net/ipv4/conf/all/arp_ignore") inside `ns`."""
        run_in_netns(ns, _sysctl_write, path, value)

    def sysctl_get(self, ns, path):
        return run_in_netns(ns, sysctl_read, path)

    def gro(self, ns, ifname, on=True):
        """Turn GRO on/off on `ifname` in `ns`; return the new state.

        A frame XDP_REDIRECTed or XDP_TX'd into a veth is delivered by the peer only when the peer runs
        NAPI, i.e. has GRO on (or an XDP program of its own); otherwise it is dropped silently.
        """
        return run_in_netns(ns, _set_features, ifname, {"rx-gro": on})["rx-gro"]

    def tx_checksum(self, ns, ifname, on=True):
        """Turn transmit checksum offload on/off; return the new state.

        With offload on, a veth hands the peer packets whose TCP/UDP checksum is only partial, with the fix-up
        left in skb metadata. Native XDP on the peer sees the raw frame and forwards it with the partial
        checksum, which the receiver drops. Senders in front of a native-XDP veth must checksum themselves,
        as every real NIC's receive path delivers.
        """
        return run_in_netns(ns, _set_features, ifname, {"tx-checksum-ip-generic": on})["tx-checksum-ip-generic"]

    def spawn(self, ns, fn, *args, **kwargs):
        """Start `fn(*args, **kwargs)` in `ns` as a NetnsProcess that this topology stops on exit."""
        proc = NetnsProcess(ns, fn, *args, **kwargs)
        self._procs.append(proc)
        return proc.start()




