"""Tunnel (method = "tun") frames for packet fixtures, shared by test_tun_packets.py and test_method_paths.py: the
service config builder and the exact frame IPVS puts on the wire for each encapsulation (IPIP, GUE with IPVS's
header or Katran's none, GRE), with the outer header copied as IPVS copies it and the GUE source port from the
data plane's flow hash. scapy computes every length and checksum itself."""
import ipaddress
import struct

from scapy.layers.inet import GRE, IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from harness import LB_MAC, REAL_MAC
from xlb.tables.vipfilter import hash_addr, mix32

V4, V6 = "198.51.100.10", "2001:db8:100::10"
LB4, LB6 = "198.18.0.2", "2001:db8::2"  # lb0's addresses: the outer source the route gives
R4, R6 = "198.18.0.11", "2001:db8::11"
MTU = 1500  # lb0's
M32 = 0xFFFFFFFF


def svc(vip, real, port=80, proto="tcp", extra='tunnel_source = ["198.18.0.2", "2001:db8::2"]\n'):
    return (f'[[service]]\nvip = "{vip}"\nport = {port}\nproto = "{proto}"\nscheduler = "rr"\nmethod = "tun"\n'
            f'{extra}  [[service.real]]\n  address = "{real}"\n')


def ports_of(pkt):
    """(sport, dport, proto) as bpf/parse.h reads them: ports 0 where the packet has none (ICMP, a later fragment;
    scapy's fragments carry their L4 header as raw bytes, so it is read from the bytes)."""
    b = bytes(inner(pkt))
    if b[0] >> 4 == 4:
        off, proto, later = (b[0] & 15) * 4, b[9], int.from_bytes(b[6:8], "big") & 0x1FFF
    else:
        off, proto, later = 40, b[6], 0
        if proto == 44:  # a fragment header
            off, proto, later = 48, b[40], int.from_bytes(b[42:44], "big") >> 3
    if proto not in (6, 17) or later:
        return 0, 0, proto
    return int.from_bytes(b[off:off + 2], "big"), int.from_bytes(b[off + 2:off + 4], "big"), proto


def flow_hash(pkt):
    """bpf/tun.h tun_flow_hash (the data plane reads the ports as little-endian 16-bit words)."""
    b16 = ipaddress.ip_address(inner(pkt).src).packed.ljust(16, b"\0")
    sport, dport, proto = ports_of(pkt)
    sp = struct.unpack("<H", struct.pack("!H", sport))[0]
    dp = struct.unpack("<H", struct.pack("!H", dport))[0]
    return mix32(hash_addr(b16) ^ ((((sp << 16) | dp) * 0x85EBCA77) & M32) ^ proto)


def gue_sport(pkt):
    return 0xC000 | (flow_hash(pkt) & 0x3FFF)


def inner(pkt):
    return pkt[IP] if IP in pkt else pkt[IPv6]


def outer(pkt, real, src=None, proto=None, mac=None):
    """The outer Ether/IP toward `real` that IPVS would put on pkt: TOS/traffic class (ECN CE -> ECT(0)), TTL
    copied; DF and id from an IPv4 inner packet."""
    ip = inner(pkt)
    dsf = ip.tos if IP in pkt else ip.tc
    if dsf & 3 == 3:
        dsf = (dsf & ~3) | 2
    ttl = ip.ttl if IP in pkt else ip.hlim
    eth = Ether(dst=mac or REAL_MAC[real], src=LB_MAC)
    if ":" in real:
        o = IPv6(src=src or LB6, dst=real, tc=dsf, hlim=ttl, fl=0)
        if proto is not None:
            o.nh = proto
    else:
        kw = dict(id=ip.id, flags=ip.flags & 2) if IP in pkt else dict(id=0, flags=0)
        o = IP(src=src or LB4, dst=real, tos=dsf, ttl=ttl, **kw)
        if proto is not None:
            o.proto = proto
    return eth / o


def ipip(pkt, real, **kw):
    return bytes(outer(pkt, real, proto=4 if IP in pkt else 41, **kw) / inner(pkt).copy())


def gue(pkt, real, port, csum=False, header=True):
    u = UDP(sport=gue_sport(pkt), dport=port, chksum=None if csum else 0)
    hdr = Raw(bytes([0, 4 if IP in pkt else 41, 0, 0])) if header else Raw(b"")
    return bytes(outer(pkt, real, proto=17) / u / hdr / inner(pkt).copy())


def gre(pkt, real, csum=False):
    g = GRE(proto=0x0800 if IP in pkt else 0x86DD, chksum_present=1 if csum else 0)
    return bytes(outer(pkt, real, proto=47) / g / inner(pkt).copy())
