"""The sockets of an IPVS sync master and backup, set up as the kernel's sync threads set up theirs
(ip_vs_sync.c make_send_sock, make_receive_sock), so xlb and IPVS directors can sync with each other.

- `SyncSender` (master): UDP to 224.0.0.81:8848 out of the sync interface (IP_MULTICAST_IF), multicast TTL 1,
  no loopback of its own messages, no path-MTU discovery (a message may be fragmented if the MTU shrinks),
  bound to the interface's first IPv4 address. Entries are packed into messages of at most 1472 bytes; a message
  is sent when full, on `flush()`, or by `flush_if_older()` once its first entry is 2 s old (the kernel's
  IPVS_SYNC_FLUSH_TIME).
- The group, port, TTL and message length are the sync daemon's options (ipvsadm --mcast-group, --mcast-port,
  --mcast-ttl, --sync-maxlen). An IPv6 group (there is no default one: IPVS uses IPv6 only when given an IPv6
  group) makes IPv6 sockets: the interface by IPV6_MULTICAST_IF, hops for TTL, no bind to an address (the
  kernel binds none either: the source is the interface's), IPV6_JOIN_GROUP on the backup, and the message
  length less the 48 bytes of the IPv6 and UDP headers.
- `SyncReceiver` (backup): bound to the group and port on the sync interface only (SO_BINDTODEVICE), joined to
  the group there (IP_ADD_MEMBERSHIP), with a receive buffer for bursts (RCVBUF); every datagram goes through
  `wire.decode` with its syncid filter (0 takes all). Nothing raises on what arrives: messages, entries,
  refusals and skips are counted in `counts`.

Both sockets are non-blocking: `fileno()` serves a selector, `attach()` an asyncio loop. Sending never blocks
either: a message the socket cannot take now is dropped and counted (`send_dropped`), as a full kernel sync
queue drops; the entries are sent again at their next state change.
"""

import socket
import struct
import time
from collections import Counter

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from xlb.errors import XlbError
from xlb.sync import wire

IP_MTU_DISCOVER, IP_PMTUDISC_DONT = 10, 0
IPV6_MTU_DISCOVER, IPV6_PMTUDISC_DONT = 23, 0
IP_MULTICAST_ALL = 49  # 0: deliver only the groups this socket joined
IPV6_MULTICAST_ALL = 29
FLUSH_TIME = 2.0  # seconds an entry may wait in a message that is not full (IPVS_SYNC_FLUSH_TIME)
RECEIVE_BATCH = 256  # datagrams read per receive() call, so a flood cannot hold the event loop
# The backup socket's receive buffer: a master opening connections fast sends messages back to back, and the
# default (~200 KB, ~90 datagrams of 1472 bytes) dropped more than half of a 200-message burst while the reading
# thread was busy; the kernel sizes its own sync socket too (sync_sock_size). 8 MB holds ~3,000 messages.
RCVBUF = 8 << 20
SO_RCVBUFFORCE = 33  # past net.core.rmem_max (needs CAP_NET_ADMIN; else SO_RCVBUF, capped there)


class SyncSocketError(XlbError):
    """The sync interface or its socket could not be set up; names the interface."""


def interface(ifname):
    """(ifindex, first universe-scope IPv4 address or None, MTU) of `ifname` in the current namespace."""
    try:
        with IPRoute() as ipr:
            found = ipr.link_lookup(ifname=ifname)
            if not found:
                raise SyncSocketError(f"sync interface {ifname}: no such interface")
            link = ipr.get_links(found[0])[0]
            addrs = [a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(family=socket.AF_INET, index=found[0])
                     if a["scope"] == 0]
    except NetlinkError as e:
        raise SyncSocketError(f"sync interface {ifname}: {e}") from e
    return found[0], (addrs[0] if addrs else None), link.get_attr("IFLA_MTU")


def _mreqn(group, ifindex):
    """struct ip_mreqn: group, local address (any), interface index."""
    return struct.pack("=4s4si", socket.inet_aton(group), bytes(4), ifindex)


def _mreq6(group, ifindex):
    """struct ipv6_mreq: group, interface index."""
    return struct.pack("=16si", socket.inet_pton(socket.AF_INET6, group), ifindex)


def _socket(ifname, what, setup, family=socket.AF_INET):
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        setup(sock)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        raise SyncSocketError(f"sync interface {ifname}: cannot {what}: {e.strerror or e}") from e
    return sock


def shown(group, port):
    """224.0.0.81:8848, [ff02::8848]:8848: a group and port as logs show them."""
    return f"[{group}]:{port}" if ":" in group else f"{group}:{port}"


class _Endpoint:
    sock = None

    def fileno(self):
        return self.sock.fileno()

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class SyncSender(_Endpoint):
    """A sync master on `ifname`: `add()` entries, `flush()` (or `flush_if_older()` periodically)."""

    def __init__(self, ifname, syncid, group=wire.SYNC_GROUP, port=wire.SYNC_PORT, ttl=1, maxlen=0,
                 clock=time.monotonic):
        ifindex, address, _ = interface(ifname)
        v6 = wire.group_family(group) == 6
        if address is None and not v6:
            raise SyncSocketError(f"sync interface {ifname} has no IPv4 address to send sync messages from")
        self.packer = wire.Packer(syncid, maxlen or wire.default_maxlen(group))
        self.counts = Counter()
        self._clock = clock
        self._since = None  # when the first entry of the open message was added

        def setup(sock):
            if v6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, ifindex)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, ttl)
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, IPV6_PMTUDISC_DONT)
                sock.connect((group, port, 0, ifindex))
                return
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, _mreqn("0.0.0.0", ifindex))
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, ttl)
            sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DONT)
            sock.bind((address, 0))
            sock.connect((group, port))
        self.sock = _socket(ifname, f"send to {shown(group, port)}", setup,
                            socket.AF_INET6 if v6 else socket.AF_INET)

    def add(self, conn):
        """Queue one entry (wire.WireError if it cannot be encoded); sends the message it closes."""
        full = self.packer.add(conn)
        if full is not None:
            self._send(full)
            self._since = None
        if self._since is None:
            self._since = self._clock()

    def send(self, conns):
        """Queue entries and send everything now."""
        for conn in conns:
            self.add(conn)
        self.flush()

    def flush(self):
        message = self.packer.flush()
        self._since = None
        if message is not None:
            self._send(message)

    def flush_if_older(self, seconds=FLUSH_TIME):
        if self._since is not None and self._clock() - self._since >= seconds:
            self.flush()

    def _send(self, message):
        try:
            self.sock.send(message)
        except BlockingIOError:
            self.counts["send_dropped"] += 1
            return
        except OSError:
            self.counts["send_errors"] += 1  # the interface went down, no route: the next message tries again
            return
        self.counts["messages"] += 1
        self.counts["conns"] += message[4]


class SyncReceiver(_Endpoint):
    """A sync backup on `ifname` for `syncid` (0: every syncid): `receive()` returns the entries that arrived."""

    def __init__(self, ifname, syncid, group=wire.SYNC_GROUP, port=wire.SYNC_PORT, maxlen=0):
        if not 0 <= syncid <= 255:
            raise SyncSocketError(f"syncid {syncid} is not within 0..255")
        ifindex, _, mtu = interface(ifname)
        v6 = wire.group_family(group) == 6
        self.syncid = syncid
        self.counts = Counter()
        # The kernel's backup buffer: the interface MTU (at least 1500) less the IP and UDP headers, or the
        # configured length (at least 1024); a longer datagram is cut there and then refused for its size, as the
        # kernel does.
        hlen = wire.HEADERS_V6 if v6 else wire.HEADERS_V4
        self.maxlen = min(max(maxlen, 1024), 65535 - hlen) if maxlen else min(max(mtu or 1500, 1500), 65535) - hlen

        def setup(sock):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
            except PermissionError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
            if v6:
                sock.bind((group, port, 0, ifindex))
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, _mreq6(group, ifindex))
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MULTICAST_ALL, 0)
                return
            sock.bind((group, port))
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, _mreqn(group, ifindex))
            sock.setsockopt(socket.IPPROTO_IP, IP_MULTICAST_ALL, 0)
        self.sock = _socket(ifname, f"join {shown(group, port)}", setup, socket.AF_INET6 if v6 else socket.AF_INET)

    def receive(self):
        """Read the datagrams waiting (at most RECEIVE_BATCH) and return their entries, in order."""
        conns = []
        for _ in range(RECEIVE_BATCH):
            try:
                data = self.sock.recv(self.maxlen)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.counts["receive_errors"] += 1
                break
            got = wire.decode(data, self.syncid)
            if got.refused:
                self.counts[got.refused] += 1
                continue
            self.counts["messages"] += 1
            self.counts["conns"] += len(got.conns)
            self.counts.update(got.skipped)
            conns.extend(got.conns)
        return conns

    def attach(self, loop, handler):
        """Call `handler(conns)` from asyncio `loop` whenever entries arrive; detach with `detach(loop)`."""
        def ready():
            conns = self.receive()
            if conns:
                handler(conns)
        loop.add_reader(self.sock.fileno(), ready)

    def detach(self, loop):
        loop.remove_reader(self.sock.fileno())
