"""Throwaway network-namespace topologies for integration tests and the demo (pyroute2 only, no `ip`).

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

import contextlib
import ipaddress
import multiprocessing
import os
import pickle
import secrets
import selectors
import socket
import struct
import sys
import traceback

from pyroute2 import IPRoute
from pyroute2 import netns as _pnetns
from pyroute2.netlink.exceptions import NetlinkError

from xlb.errors import KernelError

IFNAMSIZ = 15  # usable characters in an interface name
IFA_F_NODAD = 0x02
IP_FREEBIND = 15
IPV6_FREEBIND = 78
IP_PKTINFO = 8
IPV6_RECVPKTINFO = 49
IPV6_PKTINFO = 50

_FORK = multiprocessing.get_context("fork")


# ---------------------------------------------------------------------------------------------------------
# Running code inside a namespace


def _enter(ns):
    """Move the calling process into namespace `ns` (None: stay). flags=0: never create one by accident."""
    if ns is not None:
        _pnetns.setns(ns, flags=0)


class _RemoteError(Exception):
    """An exception from a child that could not be pickled; carries the child's traceback text."""


def _pack_exception(exc):
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        blob = pickle.dumps(exc)
        pickle.loads(blob)
    except Exception:
        blob = pickle.dumps(_RemoteError(f"{type(exc).__name__}: {exc}"))
    return blob, tb


def _unpack_exception(blob, tb):
    exc = pickle.loads(blob)
    exc.__cause__ = _RemoteError("in the namespace child:\n" + tb)
    return exc


def _call_child(conn, ns, fn, args, kwargs):
    try:
        _enter(ns)
        result = fn(*args, **kwargs)
        conn.send(("ok", result))
    except BaseException as e:  # noqa: BLE001 - everything goes back to the parent
        conn.send(("err",) + _pack_exception(e))
    finally:
        conn.close()


@contextlib.contextmanager
def in_netns(ns):
    """Run the calling thread in namespace ns for the block (BPF_PROG_TEST_RUN resolves ingress_ifindex and
    bpf_fib_lookup looks up routes in the caller's namespace)."""
    _pnetns.pushns(ns)
    try:
        yield
    finally:
        _pnetns.popns()


def run_in_netns(ns, fn, *args, **kwargs):
    """Run `fn(*args, **kwargs)` in a forked child inside namespace `ns`; return its result or raise its error.

    The result and any exception must be picklable (an unpicklable exception arrives as a RuntimeError-like
    `_RemoteError` with the child's traceback). `ns=None` runs in the current namespace.
    """
    parent, child = _FORK.Pipe(duplex=False)
    proc = _FORK.Process(target=_call_child, args=(child, ns, fn, args, kwargs), daemon=True)
    proc.start()
    child.close()
    try:
        msg = parent.recv()
    except EOFError:
        proc.join()
        raise KernelError(f"child in netns {ns} died (exit code {proc.exitcode}) before answering") from None
    finally:
        parent.close()
    proc.join()
    if msg[0] == "ok":
        return msg[1]
    raise _unpack_exception(msg[1], msg[2])


_ready_conn = None  # set in a NetnsProcess child: the pipe on which notify_ready() reports


def notifies_ready(fn):
    """Mark `fn` as calling notify_ready() itself once it is serving; NetnsProcess.start() then waits for it."""
    fn.notifies_ready = True
    return fn


def notify_ready():
    """Tell the NetnsProcess parent that this child is ready (e.g. its sockets are listening). No-op elsewhere."""
    global _ready_conn
    if _ready_conn is not None:
        _ready_conn.send(("ready",))
        _ready_conn.close()
        _ready_conn = None


def _serve_child(conn, ns, fn, args, kwargs):
    global _ready_conn
    _ready_conn = conn
    try:
        _enter(ns)
        if not getattr(fn, "notifies_ready", False):
            notify_ready()
        fn(*args, **kwargs)
    except BaseException as e:  # noqa: BLE001
        if _ready_conn is None:
            raise  # failed after it was ready: let multiprocessing print the traceback
        _ready_conn.send(("err",) + _pack_exception(e))  # the parent re-raises it in start()
        sys.exit(1)


class NetnsProcess:
    """A long-running callable in a forked child inside a namespace (a server, a traffic generator).

    `start()` returns once the child is ready: at once after entering the namespace, or, for functions marked
    @notifies_ready, when they call notify_ready(); an error before that point is re-raised in the parent.
    `stop()` terminates (SIGTERM, then SIGKILL) and joins; safe to call twice. Usable as a context manager.
    """

    def __init__(self, ns, fn, *args, **kwargs):
        self.ns = ns
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.proc = None

    def start(self, timeout=10.0):
        if self.proc is not None:
            return self
        parent, child = _FORK.Pipe(duplex=False)
        self.proc = _FORK.Process(target=_serve_child, args=(child, self.ns, self.fn, self.args, self.kwargs),
                                  daemon=True)
        self.proc.start()
        child.close()
        try:
            if not parent.poll(timeout):
                self.stop()
                raise KernelError(f"{getattr(self.fn, '__name__', self.fn)} in netns {self.ns} "
                                  f"was not ready after {timeout}s")
            try:
                msg = parent.recv()
            except EOFError:
                self.stop()
                raise KernelError(f"{getattr(self.fn, '__name__', self.fn)} in netns {self.ns} exited "
                                  f"(code {self.proc.exitcode}) before it was ready") from None
        finally:
            parent.close()
        if msg[0] == "err":
            self.stop()
            raise _unpack_exception(msg[1], msg[2])
        return self

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def is_alive(self):
        return self.proc is not None and self.proc.is_alive()

    def stop(self, timeout=5.0):
        proc = self.proc
        if proc is None or proc.pid is None:
            return
        if proc.is_alive():
            proc.terminate()
            proc.join(timeout)
            if proc.is_alive():
                proc.kill()
        proc.join()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


# ---------------------------------------------------------------------------------------------------------
# Topology


def _sysctl_write(path, value):
    with open(os.path.join("/proc/sys", path.strip("/")), "w") as f:
        f.write(str(value))


def _sysctl_read(path):
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
        return run_in_netns(ns, _sysctl_read, path)

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


# ---------------------------------------------------------------------------------------------------------
# Name servers and clients: each real server answers with its own name


def _family(addr):
    return socket.AF_INET6 if ipaddress.ip_address(addr).version == 6 else socket.AF_INET


def _bound_socket(addr, port, kind):
    fam = _family(addr)
    s = socket.socket(fam, kind)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if fam == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
    else:
        s.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
    if kind == socket.SOCK_DGRAM:
        # Reply from the address the query was sent to (a wildcard socket would otherwise pick a source
        # by route, which is wrong for a VIP on lo in direct routing).
        if fam == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
        else:
            s.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
    s.bind((addr, port))
    if kind == socket.SOCK_STREAM:
        s.listen(128)
    s.setblocking(False)
    return s


def _udp_reply(sock, payload):
    try:
        _, anc, _, peer = sock.recvmsg(2048, socket.CMSG_SPACE(64))
    except BlockingIOError:
        return
    out = []
    for level, ctype, data in anc:
        if level == socket.IPPROTO_IP and ctype == IP_PKTINFO:
            # struct in_pktinfo { int ifindex; in_addr spec_dst; in_addr addr; }: reply from addr.
            out = [(level, ctype, struct.pack("i4s4s", 0, data[8:12], b"\0" * 4))]
        elif level == socket.IPPROTO_IPV6 and ctype == IPV6_PKTINFO:
            # struct in6_pktinfo { in6_addr addr; int ifindex; }
            out = [(level, IPV6_PKTINFO, struct.pack("16si", data[:16], 0))]
    try:
        sock.sendmsg([payload], out, 0, peer)
    except OSError:
        pass


@notifies_ready
def tcp_echo_name_server(name, addresses_ports):
    """Serve forever: on every (address, port), TCP answers `name\\n` and closes; UDP replies `name\\n`.

    Addresses may be wildcards ("0.0.0.0", "::") or addresses not (yet) configured, e.g. a VIP on lo
    (sockets use IP_FREEBIND). Run it with Topology.spawn() / NetnsProcess; stops on SIGTERM.
    """
    payload = f"{name}\n".encode()
    sel = selectors.DefaultSelector()
    for addr, port in addresses_ports:
        sel.register(_bound_socket(addr, port, socket.SOCK_STREAM), selectors.EVENT_READ, "tcp")
        sel.register(_bound_socket(addr, port, socket.SOCK_DGRAM), selectors.EVENT_READ, "udp")
    notify_ready()
    while True:
        for key, _ in sel.select():
            sock = key.fileobj
            if key.data == "udp":
                _udp_reply(sock, payload)
                continue
            try:
                conn, _ = sock.accept()
            except BlockingIOError:
                continue
            try:
                conn.settimeout(1.0)
                conn.sendall(payload)
                conn.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            finally:
                conn.close()


def tcp_ask(src, dst, port, timeout=3.0):
    """Connect from `src` (port 0; None: any) to dst:port, read to EOF, return the stripped text."""
    with socket.socket(_family(dst), socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        if src:
            s.bind((src, 0))
        s.connect((dst, port))
        chunks = []
        while True:
            data = s.recv(4096)
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks).decode().strip()


def udp_ask(src, dst, port, timeout=3.0, payload=b"?\n"):
    """Send one datagram from `src` to dst:port and return the stripped reply (only one from dst counts)."""
    with socket.socket(_family(dst), socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        if src:
            s.bind((src, 0))
        s.connect((dst, port))
        s.send(payload)
        return s.recv(4096).decode().strip()


@notifies_ready
def tcp_line_name_server(name, addresses_ports):
    """Serve forever: keep each TCP connection open and answer every line received with `name\\n`.

    For long-lived connection tests (reloads under live traffic). Same addressing rules as
    tcp_echo_name_server; stops on SIGTERM.
    """
    payload = f"{name}\n".encode()
    sel = selectors.DefaultSelector()
    for addr, port in addresses_ports:
        sel.register(_bound_socket(addr, port, socket.SOCK_STREAM), selectors.EVENT_READ, None)
    notify_ready()
    while True:
        for key, _ in sel.select():
            sock = key.fileobj
            if key.data is None:  # a listener
                try:
                    conn, _ = sock.accept()
                except BlockingIOError:
                    continue
                conn.setblocking(False)
                sel.register(conn, selectors.EVENT_READ, bytearray())
                continue
            buf = key.data
            try:
                data = sock.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                sel.unregister(sock)
                sock.close()
                continue
            buf += data
            while b"\n" in buf:
                del buf[: buf.index(b"\n") + 1]
                try:
                    sock.settimeout(1.0)
                    sock.sendall(payload)
                    sock.setblocking(False)
                except OSError:
                    pass


def _line_client(conn, ns, src, dst, port, timeout):
    try:
        _enter(ns)
        s = socket.socket(_family(dst), socket.SOCK_STREAM)
        s.settimeout(timeout)
        if src:
            s.bind((src, 0))
        s.connect((dst, port))
        f = s.makefile("rb")
        conn.send(("ok", None))
    except BaseException as e:  # noqa: BLE001
        conn.send(("err",) + _pack_exception(e))
        return
    while True:
        try:
            cmd = conn.recv()
        except EOFError:
            break
        if cmd is None:
            break
        try:
            s.sendall(cmd.encode() + b"\n")
            line = f.readline()
            if not line:
                raise ConnectionError("connection closed by the server")
            conn.send(("ok", line.decode().strip()))
        except BaseException as e:  # noqa: BLE001
            conn.send(("err",) + _pack_exception(e))
    s.close()


class LineConnection:
    """One long-lived TCP connection from `src` in namespace `ns` to dst:port, held by a forked child.

    `ask(text)` sends one line and returns the stripped reply line (raises on a dead connection).
    Pairs with tcp_line_name_server. Usable as a context manager; close() is idempotent.
    """

    def __init__(self, ns, src, dst, port, timeout=3.0):
        self._conn, child = _FORK.Pipe(duplex=True)
        self._proc = _FORK.Process(target=_line_client, args=(child, ns, src, dst, port, timeout), daemon=True)
        self._proc.start()
        child.close()
        self._result()

    def _result(self):
        if not self._conn.poll(30):
            self.close()
            raise KernelError("line client did not answer within 30s")
        try:
            msg = self._conn.recv()
        except EOFError:
            self.close()
            raise KernelError("line client died") from None
        if msg[0] == "ok":
            return msg[1]
        raise _unpack_exception(msg[1], msg[2])

    def ask(self, text="?"):
        self._conn.send(text)
        return self._result()

    def close(self):
        if self._proc is None:
            return
        try:
            self._conn.send(None)
        except OSError:
            pass
        self._proc.join(5)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()
        self._conn.close()
        self._proc = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
