"""Packet fixtures (STYLE 13): each case is a description, a config, input packets, and for each the expected XDP
action, the exact output frame and the verdict reason. Run through BPF_PROG_TEST_RUN with the maps filled by the real
control plane (tests/harness.py). On a mismatch both frames are printed decoded (tests/cases.py runs them).

Further down: behaviour that needs several steps or map assertions (lookup order with counters, TCP states in the
conns map, schedulers, counters)."""
import ctypes as ct
import ipaddress
import os
from collections import Counter

import pytest
from scapy.layers.inet import ICMP, IP, TCP, IPOption_RR
from scapy.layers.inet6 import ICMPv6EchoReply, IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.packet import Raw

from cases import (CFG_BASIC, DROP, PASS, REDIRECT, SAME, TX, V4, V6, Step, case, fwd, fwm_svc, mark_rule,
                   run_case, run_step, same, vip_svc)
from harness import CLIENT_MAC, LB1_MAC, LB_MAC, lookup_conn, real_of, tcp4, tcp6, to_real, udp4, udp6
from xlb.tables import marks as markmod
from xlb.tables import sched as xsched
from xlb.dataplane import structs as S
from xlb.config.model import addr_bytes

# -- configs -------------------------------------------------------------------------------------------------------

# Lookup order: mark rule + fwmark service before vip:port; a mark without a service falls through; port zero last.
CFG_ORDER = "\n".join([
    vip_svc("198.51.100.70", 80, "tcp", ["198.18.0.11"]),
    mark_rule(7, "198.51.100.70/32", "tcp", [80]),
    fwm_svc(7, ["198.18.0.12"]),
    vip_svc("198.51.100.71", 80, "tcp", ["198.18.0.11"]),
    mark_rule(99, "198.51.100.71/32"),  # no fwmark 99 service
    vip_svc("198.51.100.72", 80, "tcp", ["198.18.0.11"]),
    vip_svc("198.51.100.72", 0, "tcp", ["198.18.0.13"], extra="persistence_timeout = 60\n"),
])

# Two marks, told apart by their reals: mark 1 -> .11, mark 2 -> .12.
MARKS_SVCS = fwm_svc(1, ["198.18.0.11"]) + "\n" + fwm_svc(2, ["198.18.0.12"])


def marks_cfg(*rules):
    return "\n".join([*rules, MARKS_SVCS])


# -- cases ---------------------------------------------------------------------------------------------------------

def ipv4_hdr_raw(**kw):
    return bytes(IP(src="203.0.113.7", dst=V4, id=1, **kw))


ETH4 = Ether(dst=LB_MAC, src=CLIENT_MAC, type=0x0800)
ETH6 = Ether(dst=LB_MAC, src=CLIENT_MAC, type=0x86DD)
TCP80 = bytes(TCP(sport=40000, dport=80, flags="S", seq=1000, window=8192))


def frag_v6(dst, offset=0, m=1):
    return (Ether(dst=LB_MAC, src=CLIENT_MAC) / IPv6(src="2001:db8:77::7", dst=dst)
            / IPv6ExtHdrFragment(offset=offset, m=m, id=7) / TCP(sport=40000, dport=80, flags="S"))


def _ihl4():
    b = bytearray(bytes(tcp4()))
    b[14] = 0x44  # version 4, IHL 4
    return bytes(b)


def _version6():
    b = bytearray(bytes(tcp4()))
    b[14] = 0x65  # version 6, IHL 5
    return bytes(b)


def _doff4():
    b = bytearray(bytes(tcp4()))
    b[14 + 20 + 12] = 0x40  # data offset 4
    return bytes(b)


CASES = [
    # services of every kind
    case("tcp4", "IPv4 TCP to vip:port goes to its real", CFG_BASIC, fwd(tcp4(), "198.18.0.11")),
    case("udp4", "IPv4 UDP to vip:port", CFG_BASIC, fwd(udp4(), "198.18.0.12")),
    case("tcp6", "IPv6 TCP to vip:port", CFG_BASIC, fwd(tcp6(), "2001:db8::11")),
    case("udp6", "IPv6 UDP to vip:port", CFG_BASIC, fwd(udp6(), "2001:db8::12")),
    case("portzero4", "port-zero service catches any port of its VIP", CFG_BASIC,
         fwd(tcp4(dst="198.51.100.20", dport=22), "198.18.0.13"),
         fwd(tcp4(dst="198.51.100.20", dport=8443, sport=40001), "198.18.0.13")),
    case("portzero4-proto", "a tcp port-zero service does not catch udp", CFG_BASIC,
         same(udp4(dst="198.51.100.20", dport=22), PASS, "pass_no_service")),
    case("portzero6", "IPv6 UDP port-zero service", CFG_BASIC, fwd(udp6(dst="2001:db8:100::20", dport=5000),
                                                                   "2001:db8::13")),
    case("fwmark4", "mark rule (tcp, port 443) + fwmark service", CFG_BASIC,
         fwd(tcp4(dst="198.51.100.30", dport=443), "198.18.0.12"),
         same(tcp4(dst="198.51.100.30", dport=80), PASS, "pass_no_service")),
    case("fwmark6", "IPv6 mark rule (udp, every port) + ipv6 fwmark service", CFG_BASIC,
         fwd(udp6(dst="2001:db8:100::30", dport=1234), "2001:db8::13"),
         same(tcp6(dst="2001:db8:100::30", dport=1234), PASS, "pass_no_service")),
    # lookup order
    case("order-mark-first", "mark rule + fwmark service beats an exact vip:port service", CFG_ORDER,
         fwd(tcp4(dst="198.51.100.70"), "198.18.0.12")),
    case("order-mark-no-svc", "a mark with no service falls through to vip:port", CFG_ORDER,
         fwd(tcp4(dst="198.51.100.71"), "198.18.0.11")),
    case("order-port-zero-last", "port zero only when no exact service", CFG_ORDER,
         fwd(tcp4(dst="198.51.100.72", dport=80), "198.18.0.11"),
         fwd(tcp4(dst="198.51.100.72", dport=81), "198.18.0.13")),
    case("order-mark-other-family", "a mark whose fwmark service is of the other family falls through to vip:port",
         "\n".join([mark_rule(8, "198.51.100.0/24", "tcp"), fwm_svc(8, ["2001:db8::11"], family="ipv6"),
                    vip_svc(V4, 80, "tcp", ["198.18.0.12"])]),
         fwd(tcp4(), "198.18.0.12")),
    # mark-rule precedence
    case("mark-port-beats-every-port", "a rule naming the port beats an every-port rule, even a longer prefix",
         marks_cfg(mark_rule(1, "198.51.100.80/32", "tcp"), mark_rule(2, "198.51.100.0/24", "tcp", [80])),
         fwd(tcp4(dst="198.51.100.80", dport=80), "198.18.0.12"),
         fwd(tcp4(dst="198.51.100.80", dport=81), "198.18.0.11"),
         fwd(tcp4(dst="198.51.100.81", dport=80, sport=40001), "198.18.0.12"),
         same(tcp4(dst="198.51.100.81", dport=81), PASS, "pass_no_service")),
    case("mark-longest-prefix", "longer prefix wins among rules for the same port",
         marks_cfg(mark_rule(1, "198.51.100.0/24", "tcp", [80]), mark_rule(2, "198.51.100.0/25", "tcp", [80])),
         fwd(tcp4(dst="198.51.100.10"), "198.18.0.12"),
         fwd(tcp4(dst="198.51.100.200"), "198.18.0.11")),
    case("mark-port-range", "a port range matches its ends and middle, not beyond",
         marks_cfg(mark_rule(1, "198.51.100.0/24", "tcp", ["1000-2000"])),
         fwd(tcp4(dport=1000), "198.18.0.11"), fwd(tcp4(dport=1500), "198.18.0.11"),
         fwd(tcp4(dport=2000), "198.18.0.11"),
         same(tcp4(dport=999), PASS, "pass_no_service"), same(tcp4(dport=2001), PASS, "pass_no_service")),
    case("mark-proto-tcp", "a tcp rule does not catch udp",
         marks_cfg(mark_rule(1, "198.51.100.0/24", "tcp")),
         fwd(tcp4(dport=53), "198.18.0.11"), same(udp4(dport=53), PASS, "pass_no_service")),
    case("mark-proto-any", "an any rule catches tcp and udp",
         marks_cfg(mark_rule(1, "198.51.100.0/24", "any")),
         fwd(tcp4(dport=53), "198.18.0.11"), fwd(udp4(dport=53), "198.18.0.11")),
    case("mark-proto-specific", "a specific-proto rule beats an any rule for the same prefix and port",
         marks_cfg(mark_rule(1, "198.51.100.0/24", "any", [53]), mark_rule(2, "198.51.100.0/24", "udp", [53])),
         fwd(tcp4(dport=53), "198.18.0.11"), fwd(udp4(dport=53), "198.18.0.12")),
    # not ours: untouched
    case("pass-non-vip4", "IPv4 TCP to no VIP passes unchanged", CFG_BASIC,
         same(tcp4(dst="192.0.2.1"), PASS, "pass_no_service"),
         same(tcp4(dport=81), PASS, "pass_no_service")),
    case("pass-non-vip6", "IPv6 UDP to no VIP passes unchanged", CFG_BASIC,
         same(udp6(dst="2001:db8:200::1"), PASS, "pass_no_service")),
    case("pass-arp", "ARP passes", CFG_BASIC,
         same(Ether(dst="ff:ff:ff:ff:ff:ff", src=CLIENT_MAC) / ARP(psrc="198.18.0.11", pdst=V4), PASS,
              "pass_not_ip")),
    case("pass-lldp", "a non-IP ethertype passes", CFG_BASIC,
         same(Ether(dst="01:80:c2:00:00:0e", src=CLIENT_MAC, type=0x88CC) / Raw(b"\0" * 46), PASS, "pass_not_ip")),
    # ICMP the balancer does not handle (echo and errors: tests/test_icmp_packets.py)
    case("pass-icmp", "ICMP timestamp request to a VIP passes", CFG_BASIC,
         same(Ether(dst=LB_MAC, src=CLIENT_MAC) / IP(src="203.0.113.7", dst=V4) / ICMP(type=13), PASS,
              "pass_other_proto")),
    case("pass-icmp6", "ICMPv6 echo reply to a VIP passes", CFG_BASIC,
         same(Ether(dst=LB_MAC, src=CLIENT_MAC) / IPv6(src="2001:db8:77::7", dst=V6) / ICMPv6EchoReply(), PASS,
              "pass_other_proto")),
    # malformed
    # Frames under 14 bytes (drop_trunc_eth) cannot be run: the kernel's BPF_PROG_TEST_RUN refuses them with
    # EINVAL, metadata or not (test_trunc_eth_refused_by_test_run). The 14-byte boundary is exercised instead.
    case("eth-only-ip4", "a bare Ethernet header saying IPv4", CFG_BASIC,
         same(bytes(tcp4())[:14], DROP, "drop_trunc_ip")),
    case("eth-only-other", "a bare Ethernet header of another type", CFG_BASIC,
         same(bytes(Ether(dst=LB_MAC, src=CLIENT_MAC, type=0x88B5)), PASS, "pass_not_ip")),
    case("eth-meta", "XDP metadata in front of a frame is not the frame", CFG_BASIC,
         Step(tcp4(), TX, to_real(tcp4(), "198.18.0.11"), "fwd_tx", meta=8)),
    case("trunc-ip4", "IPv4 header cut short", CFG_BASIC,
         same(bytes(ETH4) + ipv4_hdr_raw(proto=6)[:12], DROP, "drop_trunc_ip")),
    case("bad-ihl", "IPv4 IHL 4", CFG_BASIC, same(_ihl4(), DROP, "drop_bad_ip")),
    case("bad-version", "IP version 6 in an IPv4 header to a VIP", CFG_BASIC, same(_version6(), DROP, "drop_bad_ip")),
    # Where an IPv4 header's destination would be, an IPv6 header has part of its source: no VIP there.
    case("bad-version-other", "an IPv6 packet in an IPv4 frame: no VIP, passed", CFG_BASIC,
         same(bytes(ETH4) + bytes(IPv6(src="2001:db8:77::7", dst=V6) / TCP()), PASS, "pass_no_service")),
    case("trunc-ip4-len", "IPv4 total length beyond the frame", CFG_BASIC,
         same(Ether(dst=LB_MAC, src=CLIENT_MAC) / IP(src="203.0.113.7", dst=V4, len=200) / TCP(dport=80),
              DROP, "drop_trunc_ip")),
    case("trunc-tcp", "TCP header cut short", CFG_BASIC,
         same(Ether(dst=LB_MAC, src=CLIENT_MAC) / IP(src="203.0.113.7", dst=V4, proto=6) / Raw(TCP80[:12]),
              DROP, "drop_trunc_l4")),
    case("bad-doff", "TCP data offset 4", CFG_BASIC, same(_doff4(), DROP, "drop_bad_tcp")),
    case("trunc-udp", "UDP header cut short", CFG_BASIC,
         same(Ether(dst=LB_MAC, src=CLIENT_MAC) / IP(src="203.0.113.7", dst=V4, proto=17) / Raw(b"\x9c\x40\x00\x35"),
              DROP, "drop_trunc_l4")),
    # The IP length, not the frame, ends the packet: bytes past it (Ethernet padding) are no header.
    case("trunc-udp-padded", "UDP header cut short by the IPv4 total length, the frame padded to 60 bytes",
         CFG_BASIC, same(bytes(Ether(dst=LB_MAC, src=CLIENT_MAC) / IP(src="203.0.113.7", dst=V4, proto=17, len=24)
                               / Raw(b"\x9c\x40\x00\x35")) + bytes(14), DROP, "drop_trunc_l4")),
    case("trunc-tcp-iplen", "TCP header cut short by the IPv4 total length, the frame carrying the rest",
         CFG_BASIC, same(Ether(dst=LB_MAC, src=CLIENT_MAC) / IP(src="203.0.113.7", dst=V4, proto=6, len=32)
                         / Raw(TCP80), DROP, "drop_trunc_l4")),
    case("trunc-tcp6-plen", "IPv6 TCP header cut short by the payload length, the frame carrying the rest",
         CFG_BASIC, same(Ether(dst=LB_MAC, src=CLIENT_MAC) / IPv6(src="2001:db8:77::7", dst=V6, nh=6, plen=8)
                         / Raw(TCP80), DROP, "drop_trunc_l4")),
    case("ip4-options", "IPv4 with options (IHL 6) to a VIP is balanced, options kept", CFG_BASIC,
         fwd(Ether(dst=LB_MAC, src=CLIENT_MAC) / IP(src="203.0.113.7", dst=V4, id=1,
                                                    options=[IPOption_RR(routers=["0.0.0.0"])])
             / TCP(sport=40000, dport=80, flags="S", seq=1000, window=8192), "198.18.0.11")),
    case("trunc-tcp6", "IPv6 TCP header cut short", CFG_BASIC,
         same(Ether(dst=LB_MAC, src=CLIENT_MAC) / IPv6(src="2001:db8:77::7", dst=V6, nh=6) / Raw(TCP80[:8]),
              DROP, "drop_trunc_l4")),
    case("trunc-ip6", "IPv6 header cut short", CFG_BASIC,
         same(bytes(ETH6) + bytes(IPv6(src="2001:db8:77::7", dst=V6))[:30], DROP, "drop_trunc_ip")),
    case("trunc-ip6-plen", "IPv6 payload length beyond the frame", CFG_BASIC,
         same(Ether(dst=LB_MAC, src=CLIENT_MAC) / IPv6(src="2001:db8:77::7", dst=V6, plen=500) / TCP(dport=80),
              DROP, "drop_trunc_ip")),
    case("ipv6-too-many-ext", "more IPv6 extension headers than the parser walks", CFG_BASIC,
         same(Ether(dst=LB_MAC, src=CLIENT_MAC) / IPv6(src="2001:db8:77::7", dst=V6) / IPv6ExtHdrHopByHop()
              / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt()
              / TCP(dport=80), DROP, "drop_ipv6_ext")),
    # Malformed, to no VIP and no mark prefix: not ours to judge, passed unchanged (found by tests/fuzz.py).
    case("trunc-tcp-other", "TCP header cut short, to no VIP: passed", CFG_BASIC,
         same(Ether(dst=LB_MAC, src=CLIENT_MAC) / IP(src="203.0.113.7", dst="192.0.2.1", proto=6) / Raw(TCP80[:12]),
              PASS, "pass_no_service")),
    case("bad-ihl-other", "IPv4 IHL 4, to no VIP: passed", CFG_BASIC,
         same(bytes.fromhex("0200000000020200000000aa0800" "44000028000100004006" "0000cb007107c0000201"
                            "9c40005000000000000003e85002200000000000"), PASS, "pass_no_service")),
    case("trunc-ip4-other", "IPv4 total length beyond the frame, to no VIP: passed", CFG_BASIC,
         same(Ether(dst=LB_MAC, src=CLIENT_MAC) / IP(src="203.0.113.7", dst="198.51.100.99", len=400)
              / TCP(dport=80), PASS, "pass_no_service")),
    case("trunc-ip4-mark-dst", "IPv4 total length beyond the frame, to a mark rule's prefix: dropped", CFG_BASIC,
         same(Ether(dst=LB_MAC, src=CLIENT_MAC) / IP(src="203.0.113.7", dst="198.51.100.30", len=400)
              / TCP(dport=443), DROP, "drop_trunc_ip")),
    case("ipv6-too-many-ext-other", "more IPv6 extension headers than the parser walks, to no VIP: passed",
         CFG_BASIC,
         same(Ether(dst=LB_MAC, src=CLIENT_MAC) / IPv6(src="2001:db8:77::7", dst="2001:db8:200::1")
              / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt()
              / IPv6ExtHdrDestOpt() / TCP(dport=80), PASS, "pass_no_service")),
    case("bad-ip6-version-other", "IP version 4 in an IPv6 ethertype, to no VIP: passed", CFG_BASIC,
         same(bytes.fromhex("0200000000020200000000aa86dd" "40000000001406402001" "0db8007700000000000000000007"
                            "20010db8020000000000000000000001" "9c40005000000000000003e85002200000000000"),
              PASS, "pass_no_service")),
    # Longer than the MTU toward the real: a reason of its own, not "no route" (drop_fib; found by tests/fuzz.py).
    case("too-big", "a 1654-byte IPv4 frame to a VIP whose real is behind a 1500-byte MTU", CFG_BASIC,
         same(tcp4(payload=b"x" * 1600), DROP, "drop_too_big")),
    case("too-big6", "a 1694-byte IPv6 frame to a VIP whose real is behind a 1500-byte MTU", CFG_BASIC,
         same(tcp6(payload=b"x" * 1620), DROP, "drop_too_big")),
    # The next hop toward the other interface is cached by the first packet; a longer one later is still checked.
    case("too-big-cached", "a SYN redirected to lb1's real, then a 1654-byte frame of the flow: dropped", CFG_BASIC,
         fwd(tcp4(dst="198.51.100.40"), "198.18.1.11", REDIRECT, LB1_MAC),
         same(tcp4(dst="198.51.100.40", flags="A", payload=b"x" * 1600), DROP, "drop_too_big"),
         fwd(tcp4(dst="198.51.100.40", flags="A", payload=b"x" * 1400), "198.18.1.11", REDIRECT, LB1_MAC)),
    # VLANs: tagged frames are not balanced, whatever they carry (README, docs/design.md)
    case("vlan-8021q-vip", "802.1Q-tagged TCP SYN to a VIP: passed unchanged", CFG_BASIC,
         same(Ether(dst=LB_MAC, src=CLIENT_MAC) / Dot1Q(vlan=100) / IP(src="203.0.113.7", dst=V4, id=1)
              / TCP(sport=40000, dport=80, flags="S"), PASS, "pass_vlan")),
    case("vlan-qinq-vip6", "802.1ad + 802.1Q (QinQ) tagged IPv6 TCP SYN to a VIP: passed unchanged", CFG_BASIC,
         same(Ether(dst=LB_MAC, src=CLIENT_MAC) / Dot1AD(vlan=10) / Dot1Q(vlan=100)
              / IPv6(src="2001:db8:77::7", dst=V6) / TCP(sport=40000, dport=80, flags="S"), PASS, "pass_vlan")),
    case("vlan-8021q-exact", "802.1Q-tagged UDP to a VIP, exact bytes: passed unchanged", CFG_BASIC,
         same(bytes.fromhex("0200000000020200000000aa8100006408004500001d000100004011" "0000cb007107c6336" "40a"
                            "9c400035000900007100"), PASS, "pass_vlan")),
    # fragments
    # (fragments to VIPs: tests/test_frag_packets.py)
    case("frag4-other", "IPv4 fragment to no VIP passes unchanged", CFG_BASIC,
         same(Ether(dst=LB_MAC, src=CLIENT_MAC) / IP(src="203.0.113.7", dst="192.0.2.1", frag=10, id=9, proto=6)
              / Raw(b"x" * 16), PASS, "pass_fragment")),
    case("frag6-other", "IPv6 fragment to no VIP passes unchanged", CFG_BASIC,
         same(frag_v6("2001:db8:200::1", offset=3, m=0), PASS, "pass_fragment")),
    case("frag6-atomic", "IPv6 atomic fragment (offset 0, M 0) is a whole packet (RFC 6946): balanced", CFG_BASIC,
         fwd(frag_v6(V6, offset=0, m=0), "2001:db8::11")),
    # A later fragment's bytes after the Fragment header are payload, not headers: never walked as such.
    case("frag6-later-ext", "IPv6 later fragment whose fragmentable part starts with an extension header",
         CFG_BASIC, same(Ether(dst=LB_MAC, src=CLIENT_MAC) / IPv6(src="2001:db8:77::7", dst="2001:db8:200::1")
                         / IPv6ExtHdrFragment(nh=60, offset=100, m=1, id=7) / Raw(bytes([60, 255]) + bytes(62)),
                         PASS, "pass_other_proto")),
    case("ipv6-hbh", "IPv6 hop-by-hop header then TCP to a VIP is balanced", CFG_BASIC,
         fwd(Ether(dst=LB_MAC, src=CLIENT_MAC) / IPv6(src="2001:db8:77::7", dst=V6) / IPv6ExtHdrHopByHop()
             / TCP(sport=40000, dport=80, flags="S"), "2001:db8::11")),
    # forwarding outcomes
    case("redirect4", "real on lb1: XDP_REDIRECT, source MAC lb1's", CFG_BASIC,
         fwd(tcp4(dst="198.51.100.40"), "198.18.1.11", REDIRECT, LB1_MAC)),
    case("redirect6", "IPv6 real on lb1", CFG_BASIC,
         fwd(tcp6(dst="2001:db8:100::40"), "2001:db8:1::11", REDIRECT, LB1_MAC)),
    case("not-onlink4", "real behind a gateway: DR refuses", CFG_BASIC,
         same(tcp4(dst="198.51.100.50"), DROP, "drop_not_onlink")),
    case("not-onlink6", "IPv6 real behind a gateway", CFG_BASIC,
         same(tcp6(dst="2001:db8:100::50"), DROP, "drop_not_onlink")),
    case("no-reals", "service without reals", CFG_BASIC, same(tcp4(dst="198.51.100.60"), DROP, "drop_no_real")),
    case("all-quiescent", "service whose reals all weigh 0", CFG_BASIC,
         same(tcp4(dst="198.51.100.61"), DROP, "drop_no_real")),
    case("rst-unknown", "RST of an unknown flow", CFG_BASIC, same(tcp4(flags="R"), DROP, "drop_rst_no_conn"),
         same(tcp4(flags="RA"), DROP, "drop_rst_no_conn"),
         check=lambda b: lookup_conn(b.dp, tcp4()) is None),
    case("ack-unknown", "a mid-stream ACK of an unknown flow is scheduled and recorded established", CFG_BASIC,
         fwd(tcp4(flags="A", payload=b"x" * 10), "198.18.0.11"),
         check=lambda b: lookup_conn(b.dp, tcp4()).state == S.CONN_STATE["est"]),
]


def test_trunc_eth_refused_by_test_run(bench):
    """Why no fixture reaches drop_trunc_eth: a frame under 14 bytes never gets to the program in a test run."""
    bench.reset(CFG_BASIC)
    with pytest.raises(OSError) as e:
        run_step(bench, Step(bytes(tcp4())[:10], DROP, SAME, "drop_trunc_eth", meta=4))
    assert e.value.errno == 22
    assert bench.verdicts() == {}


@pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
def test_fixture(bench, c):
    run_case(bench, c)


# -- lookup order and mark rules: map contents -------------------------------------------------------------------

def rule_id(bench, index):
    return bench.dp.rule_ids.get(markmod.rule_identity(bench.dp.config.marks[index]))


def svc_id(bench, key):
    return bench.dp.services[key].id


def real_id(bench, key, addr):
    return bench.dp.real_ids.get((key, ipaddress.ip_address(addr), 0))


def counters(bench, name, idx):
    c = bench.dp.counters(name, idx)
    return (c.packets, c.bytes, c.conns)


def test_mark_stats_count_hits(bench):
    """Each packet counts once under the rule that matched it, services or not."""
    bench.reset(marks_cfg(mark_rule(1, "198.51.100.0/24", "any", [53]), mark_rule(2, "198.51.100.0/24", "udp", [53]),
                          mark_rule(3, "198.51.100.0/24", "tcp", ["1000-2000"])))
    p_tcp, p_udp, p_rng, p_miss = tcp4(dport=53), udp4(dport=53), tcp4(dport=1500), tcp4(dport=2001)
    assert bench.run(p_tcp)[0] == TX
    assert bench.run(p_udp)[0] == TX
    assert bench.run(udp4(dport=53, sport=40001))[0] == TX
    # classification is for new flows only: an established flow's packets do not hit the rules again
    assert bench.run(p_udp)[0] == TX
    assert bench.run(p_rng)[0] == PASS  # mark 3 has no service: falls through to no service
    assert bench.run(p_miss)[0] == PASS
    assert counters(bench, "mark_stats", rule_id(bench, 0)) == (1, len(p_tcp), 0)
    assert counters(bench, "mark_stats", rule_id(bench, 1)) == (2, 2 * len(p_udp), 0)
    assert counters(bench, "mark_stats", rule_id(bench, 2)) == (1, len(p_rng), 0)
    assert bench.verdicts() == {"fwd_tx": 4, "pass_no_service": 2}


def test_lookup_order_counters(bench):
    """The mark-rule service gets the packet and its counters; the vip:port service sees nothing."""
    bench.reset(CFG_ORDER)
    pkt = tcp4(dst="198.51.100.70")
    assert bench.run(pkt) == (TX, to_real(pkt, "198.18.0.12"))
    cfg = bench.dp.config
    fwm = next(s for s in cfg.services if s.fwmark == 7)
    vip = next(s for s in cfg.services if s.vip == ipaddress.ip_address("198.51.100.70"))
    assert counters(bench, "svc_stats", svc_id(bench, fwm.key)) == (1, len(pkt), 1)
    assert counters(bench, "svc_stats", svc_id(bench, vip.key)) == (0, 0, 0)
    assert counters(bench, "mark_stats", rule_id(bench, 0)) == (1, len(pkt), 0)
    # the mark without a service still counts its rule
    pkt = tcp4(dst="198.51.100.71")
    assert bench.run(pkt)[0] == TX
    assert counters(bench, "mark_stats", rule_id(bench, 1)) == (1, len(pkt), 0)
    # the conns entry names the service that placed it
    assert lookup_conn(bench.dp, tcp4(dst="198.51.100.70")).svc_id == svc_id(bench, fwm.key)


def test_mark_rules_map_contents(bench):
    """A port range is one trie entry per port, an "any" rule one per proto, minus what a specific rule claims."""
    bench.reset(marks_cfg(mark_rule(1, "198.51.100.0/24", "any", ["1000-1002"]),
                          mark_rule(2, "198.51.100.0/24", "udp", [1001])))
    ntohs = lambda p: (p & 0xff) << 8 | p >> 8  # noqa: E731
    got = {(k.family, k.proto, ntohs(k.port), k.prefixlen): (v.mark, v.rule_id)
           for k, v in bench.dp.m["mark_rules"].items()}
    r1, r2 = rule_id(bench, 0), rule_id(bench, 1)
    want = {(4, 6, p, 32 + 24): (1, r1) for p in (1000, 1001, 1002)}
    want |= {(4, 17, p, 32 + 24): (1, r1) for p in (1000, 1002)}
    want[(4, 17, 1001, 32 + 24)] = (2, r2)
    assert got == want


# -- connections ---------------------------------------------------------------------------------------------------

RR3 = vip_svc(V4, 80, "tcp", ["198.18.0.11", "198.18.0.12", "198.18.0.13"])
CS = S.CONN_STATE


def test_tcp_states(bench):
    bench.reset(RR3)
    syn = tcp4(flags="S")
    assert real_of(bench.run(syn)[1]) == "198.18.0.11"
    assert lookup_conn(bench.dp, syn).state == CS["syn"]
    bench.run(tcp4(flags="A"))
    assert lookup_conn(bench.dp, syn).state == CS["est"]
    bench.run(tcp4(flags="PA", payload=b"hello"))
    assert lookup_conn(bench.dp, syn).state == CS["est"]
    act, out = bench.run(tcp4(flags="FA"))
    assert (act, real_of(out)) == (TX, "198.18.0.11")
    assert lookup_conn(bench.dp, syn).state == CS["fin"]
    # a bare SYN reusing the tuple of a closing entry is a new connection: scheduled afresh (rr: the next real)
    act, out = bench.run(syn)
    assert (act, real_of(out)) == (TX, "198.18.0.12")
    c = lookup_conn(bench.dp, syn)
    assert (c.state, c.real_id) == (CS["syn"], real_id(bench, bench.dp.config.services[0].key, "198.18.0.12"))
    # RST of a known flow: forwarded, entry closes
    rst_flow = tcp4(sport=40001, flags="S")
    assert real_of(bench.run(rst_flow)[1]) == "198.18.0.13"
    act, out = bench.run(tcp4(sport=40001, flags="R"))
    assert (act, real_of(out)) == (TX, "198.18.0.13")
    assert lookup_conn(bench.dp, rst_flow).state == CS["fin"]
    assert bench.verdicts() == {"fwd_tx": 7}


def test_udp_state(bench):
    bench.reset(vip_svc(V4, 53, "udp", ["198.18.0.11"]))
    assert bench.run(udp4())[0] == TX
    assert lookup_conn(bench.dp, udp4()).state == CS["udp"]


def test_rst_unknown_not_inserted(bench):
    bench.reset(RR3)
    assert bench.run(tcp4(flags="R")) == (DROP, bytes(tcp4(flags="R")))
    assert lookup_conn(bench.dp, tcp4()) is None
    assert len(list(bench.dp.m["conns"].keys())) == 0
    assert bench.verdicts() == {"drop_rst_no_conn": 1}


def test_established_flow_keeps_real_across_reload(bench):
    cfg = vip_svc(V4, 80, "tcp", [("198.18.0.11", 1), ("198.18.0.12", 1)], sched="wrr")
    bench.reset(cfg)
    flow = tcp4(sport=41000)
    assert real_of(bench.run(flow)[1]) == "198.18.0.11"
    before = lookup_conn(bench.dp, flow)
    # .11 goes quiescent, .12 gets all new clients
    bench.dp.apply(bench.config(vip_svc(V4, 80, "tcp", [("198.18.0.11", 0), ("198.18.0.12", 5)], sched="wrr")))
    assert bench.run(tcp4(sport=41000, flags="A")) == (TX, to_real(tcp4(sport=41000, flags="A"), "198.18.0.11"))
    for sport in (41001, 41002, 41003):
        assert real_of(bench.run(tcp4(sport=sport))[1]) == "198.18.0.12"
    after = lookup_conn(bench.dp, flow)
    assert (after.real_id, after.real_gen, after.state) == (before.real_id, before.real_gen, CS["est"])
    # and with a reordered real list and new weights
    bench.dp.apply(bench.config(vip_svc(V4, 80, "tcp", [("198.18.0.12", 3), ("198.18.0.11", 1)], sched="wrr")))
    assert real_of(bench.run(tcp4(sport=41000, flags="A"))[1]) == "198.18.0.11"


def test_removed_real_flow_rescheduled(bench):
    bench.reset(vip_svc(V4, 80, "tcp", ["198.18.0.11", "198.18.0.12"]))
    flow = tcp4(sport=42000)
    assert real_of(bench.run(flow)[1]) == "198.18.0.11"
    bench.dp.apply(bench.config(vip_svc(V4, 80, "tcp", ["198.18.0.12"])))
    ack = tcp4(sport=42000, flags="A")
    assert bench.run(ack) == (TX, to_real(ack, "198.18.0.12"))
    c = lookup_conn(bench.dp, flow)
    assert (c.real_id, c.state) == (real_id(bench, bench.dp.config.services[0].key, "198.18.0.12"), CS["est"])


# -- schedulers ----------------------------------------------------------------------------------------------------

def test_rr_three_flows_three_reals(bench):
    bench.reset(RR3)
    got = [real_of(bench.run(tcp4(sport=43000 + i))[1]) for i in range(6)]
    assert got == ["198.18.0.11", "198.18.0.12", "198.18.0.13"] * 2


def test_wrr_3_to_1(bench):
    bench.reset(vip_svc(V4, 80, "tcp", [("198.18.0.11", 3), ("198.18.0.12", 1)], sched="wrr"))
    table = xsched.wrr_table([3, 1])
    names = ["198.18.0.11", "198.18.0.12"]
    got = [real_of(bench.run(tcp4(sport=44000 + i))[1]) for i in range(8)]
    assert got == [names[i] for i in table] * (8 // len(table))
    assert Counter(got) == {"198.18.0.11": 6, "198.18.0.12": 2}


def on_each_cpu(bench, packets):
    """Run each packet on the next of CPUs 0 and 1 in turn (a test run executes on the CPU that calls it); returns
    the reals they went to. The bench's CPU is restored after."""
    if os.cpu_count() < 2:
        pytest.skip("needs two CPUs")
    home = os.sched_getaffinity(0)
    try:
        got = []
        for i, pkt in enumerate(packets):
            os.sched_setaffinity(0, {i % 2})
            got.append(real_of(bench.run(pkt)[1]))
        return got
    finally:
        os.sched_setaffinity(0, home)


def test_rr_rotation_is_shared_by_cpus(bench):
    """IPVS's rr is one rotation per service: consecutive new connections take the next real whichever CPU
    places them (a position per CPU gave .11, .11, .12, .12, ...)."""
    bench.reset(RR3)
    got = on_each_cpu(bench, [tcp4(sport=43100 + i) for i in range(6)])
    assert got == ["198.18.0.11", "198.18.0.12", "198.18.0.13"] * 2


def test_wrr_sequence_is_shared_by_cpus(bench):
    bench.reset(vip_svc(V4, 80, "tcp", [("198.18.0.11", 3), ("198.18.0.12", 1)], sched="wrr"))
    names = ["198.18.0.11", "198.18.0.12"]
    got = on_each_cpu(bench, [tcp4(sport=44100 + i) for i in range(8)])
    assert got == [names[i] for i in xsched.wrr_table([3, 1])] * 2


def test_rr_skips_an_overloaded_real_and_moves_past_it(bench):
    """The position moves past the skipped slot too: .11, .13, .11, .13 (not .11, .13, .13, .11)."""
    bench.reset(RR3)
    rid = real_id(bench, bench.dp.config.services[0].key, "198.18.0.12")
    bench.dp.m["real_conns"][ct.c_uint32(rid)] = S.RealConns(flags=S.RC_F_OVERLOAD)
    got = on_each_cpu(bench, [tcp4(sport=43200 + i) for i in range(4)])
    assert got == ["198.18.0.11", "198.18.0.13"] * 2


def test_sh_same_client_same_real(bench):
    bench.reset(vip_svc(V4, 80, "tcp", ["198.18.0.11", "198.18.0.12", "198.18.0.13"], sched="sh"))
    seen = {}
    for c in range(30):
        src = f"203.0.113.{c + 1}"
        reals = {real_of(bench.run(tcp4(src=src, sport=45000 + p))[1]) for p in range(4)}
        assert len(reals) == 1, (src, reals)
        seen[src] = reals.pop()
    assert len(set(seen.values())) == 3  # 30 clients do spread


def test_dh_same_destination_same_real(bench):
    cfg = "\n".join(vip_svc(f"198.51.100.{10 + v}", 80, "tcp", ["198.18.0.11", "198.18.0.12", "198.18.0.13"],
                            sched="dh") for v in range(12))
    bench.reset(cfg)
    per_vip = {}
    for v in range(12):
        dst = f"198.51.100.{10 + v}"
        reals = {real_of(bench.run(tcp4(src=f"203.0.113.{c + 1}", dst=dst))[1]) for c in range(5)}
        assert len(reals) == 1, (dst, reals)
        per_vip[dst] = reals.pop()
    assert len(set(per_vip.values())) > 1


def hash_addr(addr):
    """bpf/sched.h hash_addr over a 16-byte address (words as the data plane loads them)."""
    w = [int.from_bytes(addr_bytes(addr)[i:i + 4], "little") for i in range(0, 16, 4)]
    m = 0xFFFFFFFF
    h = (w[0] ^ (w[1] * 0x9E3779B1) ^ (w[2] * 0x85EBCA77) ^ (w[3] * 0xC2B2AE3D)) & m
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & m
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & m
    return h ^ (h >> 16)


def mh_expect(reals, clients):
    table = xsched.maglev_table([(addr_bytes(r), 1) for r in reals], 4093)
    return {c: reals[table[hash_addr(c) % len(table)]] for c in clients}


def test_mh_consistent_and_minimal_disruption(bench):
    reals = ["198.18.0.11", "198.18.0.12", "198.18.0.13"]
    bench.reset(vip_svc(V4, 80, "tcp", reals, sched="mh"))
    clients = [f"203.0.{113 + c // 250}.{c % 250 + 1}" for c in range(200)]
    before = {}
    for c in clients:
        got = {real_of(bench.run(tcp4(src=c, sport=s))[1]) for s in (46000, 46001)}
        assert len(got) == 1, (c, got)
        before[c] = got.pop()
    assert before == mh_expect(reals, clients)  # the data plane indexes the control plane's Maglev table
    assert set(before.values()) == set(reals)
    survivors = ["198.18.0.11", "198.18.0.13"]
    bench.dp.apply(bench.config(vip_svc(V4, 80, "tcp", survivors, sched="mh")))
    after = {c: real_of(bench.run(tcp4(src=c, sport=46002))[1]) for c in clients}
    assert after == mh_expect(survivors, clients)
    gone = [c for c in clients if before[c] == "198.18.0.12"]
    assert gone and all(after[c] in survivors for c in gone)
    # Maglev is near-minimal, not exact: 0.15% of this table's slots change owner among survivors (6 of 4093);
    # of these 200 clients it is one. Everyone else stays.
    moved = [c for c in clients if before[c] != "198.18.0.12" and after[c] != before[c]]
    assert len(moved) <= 2, moved


# -- counters ------------------------------------------------------------------------------------------------------

def test_service_and_real_counters_exact(bench):
    bench.reset(vip_svc(V4, 80, "tcp", ["198.18.0.11", "198.18.0.12"]) + "\n" + vip_svc(V4, 53, "udp",
                                                                                         ["198.18.0.13"]))
    key_tcp, key_udp = bench.dp.config.services[0].key, bench.dp.config.services[1].key
    a = [tcp4(sport=47000, flags="S"), tcp4(sport=47000, flags="A", payload=b"x" * 100),
         tcp4(sport=47000, flags="FA")]
    b = [tcp4(sport=47001, flags="S"), tcp4(sport=47001, flags="PA", payload=b"y" * 33)]
    u = [udp4(payload=b"q" * 7), udp4(payload=b"q" * 9)]
    for p in a + b + u:
        assert bench.run(p)[0] == TX
    bench.run(tcp4(dst="192.0.2.1"))                # not ours: counted nowhere but the verdicts
    size = lambda ps: sum(len(p) for p in ps)       # noqa: E731
    assert counters(bench, "svc_stats", svc_id(bench, key_tcp)) == (5, size(a + b), 2)
    assert counters(bench, "svc_stats", svc_id(bench, key_udp)) == (2, size(u), 1)
    assert counters(bench, "real_stats", real_id(bench, key_tcp, "198.18.0.11")) == (3, size(a), 1)
    assert counters(bench, "real_stats", real_id(bench, key_tcp, "198.18.0.12")) == (2, size(b), 1)
    assert counters(bench, "real_stats", real_id(bench, key_udp, "198.18.0.13")) == (2, size(u), 1)
    v = bench.dp.verdict_counts()
    assert (v["fwd_tx"].packets, v["fwd_tx"].bytes) == (7, size(a + b + u))
    assert v["pass_no_service"].packets == 1
