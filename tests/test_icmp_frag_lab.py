"""End to end in the DR lab (xlb.lab.demo.DrLab, `xlb run` in generic XDP mode): pings to the VIPs answered by the
balancer, and a 3000-byte UDP datagram, fragmented by the client's kernel, reaching a real whole (the real's
kernel reassembles what xlb forwarded fragment by fragment)."""
import hashlib
import selectors
import signal
import socket
import struct

from conftest import needs_root

from clients import family_of
from harness import DrLab, wait_for
from xlb.lab.demo import CLIENTS4, CLIENTS6, REALS4, REALS6, VIP4, VIP6
from xlb.lab.process import notifies_ready, notify_ready, run_in_netns

PORT = 5353
BIG = bytes(i * 7 % 251 for i in range(3000))


def udp_services(*extra):
    out = []
    for vip, reals in ((VIP4, REALS4), (VIP6, REALS6)):
        out.append(f'[[service]]\nvip = "{vip}"\nport = {PORT}\nproto = "udp"\nscheduler = "rr"\n'
                   + "".join(f'  [[service.real]]\n  address = "{r}"\n' for r in reals))
    return "\n".join(out + list(extra))


@notifies_ready
def udp_digest_server(name):
    """On VIP:PORT (both families): answer each datagram with `name length sha256-prefix` of what arrived."""
    sel = selectors.DefaultSelector()
    for vip in (VIP4, VIP6):
        s = socket.socket(family_of(vip), socket.SOCK_DGRAM)
        s.bind((vip, PORT))
        sel.register(s, selectors.EVENT_READ)
    notify_ready()
    while True:
        for key, _ in sel.select():
            data, peer = key.fileobj.recvfrom(65535)
            key.fileobj.sendto(f"{name} {len(data)} {hashlib.sha256(data).hexdigest()[:16]}".encode(), peer)


def udp_big(src, dst):
    with socket.socket(family_of(dst), socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.bind((src, 0))
        s.connect((dst, PORT))
        s.send(BIG)
        return s.recv(200).decode()


def _csum(data):
    data += b"\0" * (len(data) % 2)
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ping(src, dst, ident=0x4242, payload=b"xlb-lab-ping"):
    """One echo request from src to dst over a raw socket; returns (reply source, payload) or None on timeout."""
    v6 = family_of(dst) == socket.AF_INET6
    proto = socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP
    with socket.socket(family_of(dst), socket.SOCK_RAW, proto) as s:
        s.settimeout(2)
        s.bind((src, 0))
        head = struct.pack("!BBHHH", 128 if v6 else 8, 0, 0, ident, 1)
        msg = head if v6 else head[:2] + struct.pack("!H", _csum(head + payload)) + head[4:]
        s.sendto(msg + payload, (dst, 0))  # the kernel sums ICMPv6 itself
        try:
            while True:
                data, peer = s.recvfrom(2048)
                icmp = data if v6 else data[(data[0] & 15) * 4:]
                if icmp[0] == (129 if v6 else 0) and struct.unpack("!H", icmp[4:6])[0] == ident:
                    return peer[0], icmp[8:]
        except socket.timeout:
            return None


@needs_root
def test_pings_answered_and_a_fragmented_datagram_arrives_whole():
    with DrLab(prefix="xicf") as lab:
        for i, ns in enumerate(lab.rs):
            lab.topo.spawn(ns, udp_digest_server, f"rs{i + 1}")
        lab.start_xlb(udp_services())
        assert run_in_netns(lab.cl, ping, CLIENTS4[0], VIP4) == (VIP4, b"xlb-lab-ping")
        assert run_in_netns(lab.cl, ping, CLIENTS6[0], VIP6) == (VIP6, b"xlb-lab-ping")
        digest = hashlib.sha256(BIG).hexdigest()[:16]
        # rr: successive datagrams go to the reals in turn, each reassembled whole there.
        names = set()
        for src in (CLIENTS4[0], CLIENTS4[1], CLIENTS6[0], CLIENTS6[1]):
            name, length, got = run_in_netns(lab.cl, udp_big, src, VIP4 if ":" not in src else VIP6).split()
            assert (int(length), got) == (3000, digest), src
            names.add(name)
        assert len(names) == 2 and names <= {"rs1", "rs2", "rs3"}
        # [icmp] echo_reply = false, reloaded: echo requests go to the LB's kernel, which has no VIP here.
        lab.rewrite_config(udp_services("[icmp]\necho_reply = false\n"))
        lab.signal_xlb(signal.SIGHUP)
        wait_for(lambda: run_in_netns(lab.cl, ping, CLIENTS4[0], VIP4) is None, what="echo replies off")
