"""`xlb decap` with real traffic: namespaces "lb" and "real" over a veth. The real runs `xlb decap` (a real process)
with the VIPs on its lo and the ARP and rp_filter settings of a tunnel real; the lb side sends scapy-crafted
encapsulated TCP SYNs and UDP datagrams for the VIPs out of its veth. The real's server socket answers each one: the
SYN-ACK / the UDP reply (the server's name) is captured on the lb side, on its way back to the client."""
import os
import signal
import socket
import time

import pytest
from conftest import needs_root
from harness import read_until, start_decap, stop_proc
from scapy.layers.inet import GRE, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from xlb.dataplane.links import attached_prog
from xlb.lab.netns import Topology
from xlb.lab.process import run_in_netns
from xlb.lab.servers import tcp_echo_name_server

LB_MAC, REAL_MAC = "02:00:00:00:00:02", "02:00:00:00:00:11"
LB4, LB6, REAL4, REAL6 = "198.18.0.2", "2001:db8::2", "198.18.0.11", "2001:db8::11"
VIP4, VIP6 = "198.51.100.10", "2001:db8:100::10"
CLIENT4, CLIENT6 = "203.0.113.7", "2001:db8:77::7"
GUE_PORT = 5555
ETH_P_ALL = 0x0003
START_TIMEOUT = 120.0  # compiling the program on a loaded 2-core machine


@pytest.fixture(scope="module", params=["native", "generic"])
def lab(request):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    topo = Topology(prefix="xdc")
    proc = None
    try:
        lb, real = topo.netns("lb"), topo.netns("real")
        topo.veth(lb, "lb0", real, "r0")
        topo.mac(lb, "lb0", LB_MAC)
        topo.mac(real, "r0", REAL_MAC)
        for ns, cidrs in ((lb, (f"{LB4}/24", f"{LB6}/64")), (real, (f"{REAL4}/24", f"{REAL6}/64"))):
            for cidr in cidrs:
                topo.addr(ns, "lb0" if ns == lb else "r0", cidr)
        topo.neigh(real, "r0", LB4, LB_MAC)
        topo.neigh(real, "r0", LB6, LB_MAC)
        # A tunnel real as tools/xlb-dr-real prepares a DR one: the VIPs on lo, never answered in ARP; replies to
        # clients go straight back (here via the lb namespace, where the capture sees them).
        topo.lo_addr(real, VIP4)
        topo.lo_addr(real, VIP6)
        for iface in ("all", "lo", "r0"):
            topo.sysctl(real, f"net/ipv4/conf/{iface}/arp_ignore", "1")
            topo.sysctl(real, f"net/ipv4/conf/{iface}/arp_announce", "2")
            # The inner source (a client) arrives on r0: strict reverse-path filtering must not judge it by the
            # outer packet's interface alone. Loose mode, as for a kernel tunnel device.
            topo.sysctl(real, f"net/ipv4/conf/{iface}/rp_filter", "2")
        topo.route(real, "203.0.113.0/24", gateway=LB4)
        topo.route(real, "2001:db8:77::/64", gateway=LB6)
        topo.spawn(real, tcp_echo_name_server, "real1", [(VIP4, 80), (VIP4, 53), (VIP6, 80), (VIP6, 53)])
        proc = start_decap(real, "--iface", "r0", "--gue-port", str(GUE_PORT), "--xdp-mode", request.param)
        started = read_until(proc, "xlb decap: on r0", START_TIMEOUT)
        assert started, f"xlb decap did not start: {stop_proc(proc)}"
        yield {"topo": topo, "lb": lb, "real": real, "proc": proc, "mode": request.param}
    finally:
        try:
            if proc is not None:
                stop_proc(proc)
        finally:
            topo.close()


def _exchange(frame, want, timeout=5.0):
    """In the lb namespace: send frame out of lb0, then capture until a frame matching want (family, proto, src,
    sport, dst, dport) comes back; returns its L4 layer's summary and payload, or None."""
    cap = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    cap.bind(("lb0", 0))
    cap.settimeout(0.5)
    try:
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as tx:
            tx.bind(("lb0", 0))
            tx.send(frame)
        deadline = time.monotonic() + timeout
        family, proto, src, sport, dst, dport = want
        while time.monotonic() < deadline:
            try:
                data, addr = cap.recvfrom(65535)
            except socket.timeout:
                continue
            if addr[2] == socket.PACKET_OUTGOING:
                continue
            pkt = Ether(data)
            ip = pkt.getlayer(IP if family == 4 else IPv6)
            l4 = pkt.getlayer(proto)
            if ip is None or l4 is None or (ip.src, ip.dst) != (src, dst) or (l4.sport, l4.dport) != (sport, dport):
                continue
            flags = str(l4.flags) if proto is TCP else ""
            return flags, bytes(l4.payload)
        return None
    finally:
        cap.close()


def _outer(family, proto):
    if family == 4:
        return IP(src=LB4, dst=REAL4, proto=proto, ttl=64)
    return IPv6(src=LB6, dst=REAL6, nh=proto, hlim=64)


def _inner(family, proto, sport):
    ip = IP(src=CLIENT4, dst=VIP4) if family == 4 else IPv6(src=CLIENT6, dst=VIP6)
    if proto is TCP:
        return ip / TCP(sport=sport, dport=80, flags="S", seq=12345)
    return ip / UDP(sport=sport, dport=53) / b"?\n"


def _encap(kind, ofam, inner):
    ipproto = 4 if inner.version == 4 else 41
    if kind == "ipip":
        body = _outer(ofam, ipproto) / inner
    elif kind == "gre":
        body = _outer(ofam, 47) / GRE(proto=0x0800 if inner.version == 4 else 0x86DD) / inner
    elif kind == "gue":
        hdr = bytes([0, ipproto, 0, 0])
        body = _outer(ofam, 17) / UDP(sport=40123, dport=GUE_PORT, chksum=0) / (hdr + bytes(inner))
    else:  # Katran's header-less GUE, on 6080 by default
        body = _outer(ofam, 17) / UDP(sport=40123, dport=6080, chksum=0) / bytes(inner)
    return bytes(Ether(src=LB_MAC, dst=REAL_MAC) / body)


CASES = [  # (encapsulation, outer family, inner family, inner protocol)
    ("ipip", 4, 4, UDP), ("ipip", 6, 6, TCP), ("ipip", 6, 4, UDP), ("ipip", 4, 6, TCP),
    ("gue", 4, 4, TCP), ("gue", 6, 6, UDP), ("gue", 4, 6, UDP), ("gue", 6, 4, TCP),
    ("katran", 4, 4, UDP), ("katran", 6, 6, TCP),
    ("gre", 4, 4, TCP), ("gre", 6, 6, UDP), ("gre", 4, 6, TCP),
]


@needs_root
@pytest.mark.parametrize("kind,ofam,ifam,proto", CASES,
                         ids=[f"{k}-{i}in{o}-{p.__name__.lower()}" for k, o, i, p in CASES])
def test_encapsulated_traffic_reaches_the_real_server_socket(lab, kind, ofam, ifam, proto):
    sport = 41000 + CASES.index((kind, ofam, ifam, proto))
    frame = _encap(kind, ofam, _inner(ifam, proto, sport))
    vip, client = (VIP4, CLIENT4) if ifam == 4 else (VIP6, CLIENT6)
    want = (ifam, proto, vip, 80 if proto is TCP else 53, client, sport)
    got = run_in_netns(lab["lb"], _exchange, frame, want)
    if proto is TCP:
        assert got is not None and got[0] == "SA", f"no SYN-ACK from {vip}:80 to {client}:{sport}: {got}"
    else:
        assert got == ("", b"real1\n"), f"no reply from the real's UDP socket: {got}"


@needs_root
def test_another_program_on_the_interface_is_refused_without_force(lab):
    second = start_decap(lab["real"], "--iface", "r0", "--xdp-mode", lab["mode"])
    out = second.communicate(timeout=START_TIMEOUT)[0].decode()
    assert second.returncode == 1, out
    assert "r0 already has an XDP program attached; use --force to replace it" in out
    assert attached_prog("r0", lab["real"])[0] is not None  # the first one's program is still there


@needs_root
def test_usr1_prints_counters_and_sigterm_detaches(lab):
    proc = lab["proc"]
    proc.send_signal(signal.SIGUSR1)
    shown = read_until(proc, " gre ", 30)
    assert "xlb decap verdicts:" in shown and " ipip " in shown, shown
    out = stop_proc(proc)
    assert proc.returncode == 0, out
    assert out.count("xlb decap verdicts:") == 2, out  # on SIGUSR1, and at exit
    assert attached_prog("r0", lab["real"]) == (None, None)
