"""NAT (method = "nat") frames for packet fixtures, shared by test_nat_packets.py, test_method_paths.py and
test_fuzz.py: the service config builder, the inbound and reply rewrites and the ICMP quotes' as scapy computes them
(every checksum afresh, so a byte-exact match checks the data plane's incremental checksums), and run() for steps
of (packet, ingress, action, frame, reason). Topology: tests/harness.py (clients are routed via the gateway on lb0)."""
from collections import Counter

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from harness import GW_MAC, LB1_MAC, LB_MAC, REAL_MAC, describe

R4, R6 = "198.18.1.11", "2001:db8:1::11"      # on lb1: inbound redirected, replies come in on lb1
L4, L6 = "198.18.0.11", "2001:db8::11"        # on lb0: everything XDP_TX
GW4 = "198.18.9.9"                             # behind the gateway on lb0: NAT routes, DR refuses


def svc(vip, port, proto, reals, method="nat", extra=""):
    out = f'[[service]]\nvip = "{vip}"\nport = {port}\nproto = "{proto}"\nscheduler = "rr"\nmethod = "{method}"\n{extra}'
    for addr, rport in reals:
        out += f'  [[service.real]]\n  address = "{addr}"\n' + (f"  port = {rport}\n" if rport else "")
    return out


def rewritten(pkt, side, addr, port, src_mac, dst_mac):
    """pkt with one side's address (and port, if given) replaced, one hop less, checksums computed afresh."""
    out = pkt.copy()
    out[Ether].src, out[Ether].dst = src_mac, dst_mac
    ip = out[IP] if IP in out else out[IPv6]
    setattr(ip, side, addr)
    if IP in out:
        ip.ttl -= 1
        del ip.chksum
    else:
        ip.hlim -= 1
    l4 = out[TCP] if TCP in out else out[UDP]
    if port:
        setattr(l4, "dport" if side == "dst" else "sport", port)
    if l4.chksum != 0 or IPv6 in out:
        del l4.chksum
    return bytes(out)


def nat_in(pkt, real, port, src_mac, dst_mac):
    """What NAT makes of a client's packet: to the real's address and port."""
    return rewritten(pkt, "dst", real, port, src_mac, dst_mac)


def reply(pkt, real, port, mac_to=LB1_MAC, flags="SA", payload=b"r"):
    """The real's reply to a client's packet (as the real sends it: to the client, from its own address)."""
    ip = pkt[IP] if IP in pkt else pkt[IPv6]
    l3 = IP(src=real, dst=ip.src, id=7) if IP in pkt else IPv6(src=real, dst=ip.src)
    if TCP in pkt:
        l4 = TCP(sport=port, dport=pkt[TCP].sport, flags=flags, seq=5000, ack=1001, window=4096)
    else:
        l4 = UDP(sport=port, dport=pkt[UDP].sport)
    return Ether(dst=mac_to, src=REAL_MAC[real]) / l3 / l4 / payload


def nat_out(rep, vip, vport, src_mac=LB_MAC, dst_mac=GW_MAC):
    """What NAT makes of a real's reply: from VIP:port, to the client's next hop."""
    return rewritten(rep, "src", vip, vport, src_mac, dst_mac)


def run(bench, steps):
    """steps: (packet, ingress ifindex or None, action, expected bytes or None: unchanged, reason)."""
    for i, (pkt, ifindex, action, want, reason) in enumerate(steps):
        want = bytes(pkt) if want is None else want
        got_action, out = bench.run(pkt, ifindex)
        if (got_action, out) != (action, want):
            pytest.fail(f"packet {i}: got {got_action}, want {action}\n--- got:\n{describe(out)}\n"
                        f"--- want:\n{describe(want)}")
    assert bench.verdicts() == dict(Counter(s[4] for s in steps))


def quote(pkt, n=8):
    """An IP packet (a frame, or its bytes) as an ICMP error quotes it: its IP header and the first n bytes after it."""
    pkt = Ether(pkt) if isinstance(pkt, bytes) else pkt
    ip = pkt[IP] if IP in pkt else pkt[IPv6]
    return bytes(ip)[:(20 if IP in pkt else 40) + n]


def requoted(q, side, addr, port):
    """Quote q with one side's address and port replaced (the IPv4 header's checksum computed afresh, the TCP/UDP
    checksum left as quoted, as IPVS leaves it)."""
    from scapy.utils import checksum, inet_pton
    import socket
    q = bytearray(q)
    if q[0] >> 4 == 4:
        q[12 + 4 * (side == "dst"):16 + 4 * (side == "dst")] = inet_pton(socket.AF_INET, addr)
        q[10:12] = b"\0\0"
        q[10:12] = checksum(bytes(q[:20])).to_bytes(2, "big")
        at = 20
    else:
        q[8 + 16 * (side == "dst"):24 + 16 * (side == "dst")] = inet_pton(socket.AF_INET6, addr)
        at = 40
    at += 2 * (side == "dst")
    q[at:at + 2] = port.to_bytes(2, "big")
    return bytes(q)
