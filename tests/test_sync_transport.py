"""The sync master and backup sockets (xlb.sync.transport) between two network namespaces over a veth: what one
sends the other receives and decodes; other syncids are ignored and counted. Needs root."""

import asyncio
import os
import selectors
import socket
import time
from ipaddress import ip_address as ip

import pytest

pytest.importorskip("pyroute2")

from xlb.lab.netns import Topology  # noqa: E402
from xlb.lab.process import in_netns  # noqa: E402
from xlb.sync import wire  # noqa: E402
from xlb.sync.transport import SyncReceiver, SyncSender, SyncSocketError  # noqa: E402
from xlb.sync.wire import SyncConn  # noqa: E402

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

WAIT = 10.0  # seconds before a test gives up waiting for datagrams (a bound, not a measured time)


@pytest.fixture
def pair():
    """(topology, master namespace, backup namespace), linked by a veth eth0 <-> eth0."""
    with Topology(prefix="xsy") as topo:
        master, backup = topo.netns("m"), topo.netns("b")
        topo.veth(master, "eth0", backup, "eth0")
        topo.addr(master, "eth0", "198.18.0.1/24")
        topo.addr(backup, "eth0", "198.18.0.2/24")
        yield topo, master, backup


def receiver(ns, syncid):
    with in_netns(ns):
        return SyncReceiver("eth0", syncid)


def sender(ns, syncid, **kw):
    with in_netns(ns):
        return SyncSender("eth0", syncid, **kw)


def receive_until(rx, done):
    """Entries received until done(entries) holds, or WAIT seconds."""
    got = []
    deadline = time.monotonic() + WAIT
    with selectors.DefaultSelector() as sel:
        sel.register(rx, selectors.EVENT_READ)
        while not done(got) and time.monotonic() < deadline:
            if sel.select(timeout=0.2):
                got.extend(rx.receive())
    return got


def conns(n, syncid_tag=0):
    out = [SyncConn(6, ip(f"203.0.113.{i % 250}"), 20000 + i, ip("198.51.100.10"), 80, ip("198.18.1.2"), 80,
                    wire.CONN_F_DROUTE, wire.TCP_S_ESTABLISHED, syncid_tag, 900) for i in range(n)]
    out.append(wire.template(ip("203.0.113.0"), ip("198.51.100.10"), 80, ip("198.18.1.2"), 80, 6, 300))
    out.append(wire.fwmark_template(1, ip("2001:db8:c::"), ip("2001:db8:1::2"), 300))
    return out


def test_entries_sent_by_the_master_are_received_by_the_backup(pair):
    _, master, backup = pair
    with receiver(backup, 7) as rx, sender(master, 7) as tx:
        sent = conns(100)  # three messages of at most 1472 bytes
        tx.send(sent)
        got = receive_until(rx, lambda g: len(g) >= len(sent))
        assert got == sent
        assert tx.counts == {"messages": 3, "conns": 102}
        assert rx.counts == {"messages": 3, "conns": 102}


def test_other_syncids_are_ignored_and_counted(pair):
    _, master, backup = pair
    with receiver(backup, 7) as rx, sender(master, 8) as wrong, sender(master, 7) as right:
        wrong.send(conns(3, syncid_tag=8))
        right.send(conns(2, syncid_tag=7))  # sent after: once it is in, the wrong one has been read
        got = receive_until(rx, lambda g: len(g) >= 4)
        assert [c.fwmark for c in got if not c.is_template] == [7, 7]
        assert rx.counts["wrong_syncid"] == 1
        assert rx.counts["messages"] == 1


def test_a_backup_with_syncid_0_takes_every_syncid(pair):
    _, master, backup = pair
    with receiver(backup, 0) as rx, sender(master, 8) as a, sender(master, 9) as b:
        a.send(conns(1))
        b.send(conns(1))
        got = receive_until(rx, lambda g: len(g) >= 6)
        assert len(got) == 6 and rx.counts["messages"] == 2


def test_malformed_datagrams_are_counted_not_raised(pair):
    _, master, backup = pair
    with receiver(backup, 7) as rx, sender(master, 7) as tx:
        with in_netns(master):
            raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with raw:
            raw.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("198.18.0.1"))
            raw.sendto(b"\x00\x07\x00\x63garbage", (wire.SYNC_GROUP, wire.SYNC_PORT))
        tx.send(conns(1))
        got = receive_until(rx, lambda g: len(g) >= 3)
        assert len(got) == 3 and rx.counts["bad_size"] == 1


def test_the_backup_serves_an_asyncio_loop(pair):
    _, master, backup = pair

    async def run(rx, tx):
        loop = asyncio.get_running_loop()
        arrived = asyncio.Queue()
        rx.attach(loop, arrived.put_nowait)
        try:
            tx.send(conns(5))
            return await asyncio.wait_for(arrived.get(), WAIT)
        finally:
            rx.detach(loop)

    with receiver(backup, 7) as rx, sender(master, 7) as tx:
        assert asyncio.run(run(rx, tx)) == conns(5)


def test_a_message_waits_until_full_or_two_seconds_old(pair):
    _, master, backup = pair
    now = [100.0]
    with receiver(backup, 7) as rx, sender(master, 7, clock=lambda: now[0]) as tx:
        for c in conns(45)[:45]:
            tx.add(c)  # 40 fill the first message, which goes at once
        assert tx.counts["messages"] == 1
        now[0] += 1.9
        tx.flush_if_older()
        assert tx.counts["messages"] == 1
        now[0] += 0.1
        tx.flush_if_older()
        assert tx.counts == {"messages": 2, "conns": 45}
        assert len(receive_until(rx, lambda g: len(g) >= 45)) == 45


def test_master_socket_options_are_the_kernels(pair):
    _, master, _ = pair
    with sender(master, 7) as tx:
        s = tx.sock
        assert s.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL) == 1
        assert s.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP) == 0
        assert s.getsockname()[0] == "198.18.0.1"
        assert s.getpeername() == (wire.SYNC_GROUP, wire.SYNC_PORT)


def test_a_missing_interface_or_address_is_a_clear_error(pair):
    topo, master, _ = pair
    with pytest.raises(SyncSocketError, match="nosuch0: no such interface"):
        with in_netns(master):
            SyncReceiver("nosuch0", 7)
    bare = topo.netns("bare")  # its lo has only 127.0.0.1, of host scope
    with pytest.raises(SyncSocketError, match="lo has no IPv4 address"):
        with in_netns(bare):
            SyncSender("lo", 7)


def test_a_burst_waits_in_the_backups_socket_while_it_is_busy(pair):
    """A master that opens connections fast sends messages back to back; the backup's thread may be busy (a map
    write, a ring-buffer poll) for a while: the socket must hold the burst, as the kernel sizes its sync socket's
    buffer (sync_sock_size), rather than drop what the default buffer (~200 KB, ~90 datagrams) cannot hold."""
    _, master, backup = pair
    with receiver(backup, 7) as rx, sender(master, 7) as tx:
        sent = conns(8000)  # 200 messages, ~300 KB of payload
        tx.send(sent)
        time.sleep(0.5)  # the backup reads nothing meanwhile
        got = receive_until(rx, lambda g: len(g) >= len(sent))
        assert tx.counts["messages"] == 201 and "send_dropped" not in tx.counts
        assert len(got) == len(sent)


GROUP6 = "ff02::8848"   # a link-scope group: IPVS has no IPv6 default, the operator names one (--mcast-group)


def test_an_ipv6_group_port_and_ttl_carry_sync_between_the_namespaces(pair):
    """The daemon's options as the kernel's sync daemon takes them (mcast_group, mcast_port, mcast_ttl,
    sync_maxlen): IPv6 sockets for an IPv6 group, the given port and hops, messages of at most `maxlen` bytes."""
    topo, master, backup = pair
    for ns, host in ((master, 1), (backup, 2)):
        topo.sysctl(ns, "net/ipv6/conf/eth0/accept_dad", "0")
        topo.addr(ns, "eth0", f"2001:db8:5::{host}/64")
    with in_netns(backup):
        rx = SyncReceiver("eth0", 7, group=GROUP6, port=9000)
    with in_netns(master):
        tx = SyncSender("eth0", 7, group=GROUP6, port=9000, ttl=3, maxlen=600)
    with rx, tx:
        assert tx.sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS) == 3
        assert tx.sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP) == 0
        assert tx.sock.getpeername()[:2] == (GROUP6, 9000)
        assert rx.maxlen == 1500 - 48   # the backup's buffer: the MTU less the IPv6 and UDP headers
        sent = conns(30)
        tx.send(sent)
        got = receive_until(rx, lambda g: len(g) >= len(sent))
        assert got == sent
        assert tx.counts["messages"] == 3   # 600 bytes hold 16 IPv4 entries (8 + 16 x 36)
        assert rx.counts == {"messages": 3, "conns": 32}
