"""ICMP and ICMPv6 to VIPs (bpf/icmp.h), exact bytes through BPF_PROG_TEST_RUN: echo requests answered by the
balancer (addresses and MACs swapped, TTL reset, checksums right), errors about a VIP flow sent to that flow's real
(found by the embedded packet reversed), Packet Too Big below the minimum MTU and truncated quotes dropped and
counted, everything else passed."""
import pytest
from scapy.layers.inet import ICMP, IP
from scapy.layers.inet6 import (ICMPv6DestUnreach, ICMPv6EchoReply, ICMPv6EchoRequest, ICMPv6PacketTooBig,
                                ICMPv6TimeExceeded, IPv6)
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from harness import CLIENT_MAC, LB_MAC, lookup_conn, tcp4, tcp6, to_real, udp4, udp6
from cases import C4, C6, CFG_BASIC, DROP, PASS, RT4, TX, V4, V6, Step, case, err4, err6, fwd, run_case, same

NO_ECHO = CFG_BASIC + "\n[icmp]\necho_reply = false\n"


def echo4(dst=V4, **kw):
    return (Ether(dst=LB_MAC, src=CLIENT_MAC) / IP(src=C4, dst=dst, id=5, ttl=57, flags="DF")
            / ICMP(type=8, id=0x1234, seq=7, **kw) / Raw(b"ping-payload"))


def echo6(dst=V6):
    return (Ether(dst=LB_MAC, src=CLIENT_MAC) / IPv6(src=C6, dst=dst, hlim=50)
            / ICMPv6EchoRequest(id=0x1234, seq=7, data=b"ping-payload"))


def reply4(src=V4):
    """What the balancer sends back: built afresh by scapy, so its checksums are computed, not carried over."""
    return bytes(Ether(dst=CLIENT_MAC, src=LB_MAC) / IP(src=src, dst=C4, id=5, ttl=64, flags="DF")
                 / ICMP(type=0, id=0x1234, seq=7) / Raw(b"ping-payload"))


def reply6():
    return bytes(Ether(dst=CLIENT_MAC, src=LB_MAC) / IPv6(src=V6, dst=C6, hlim=64)
                 / ICMPv6EchoReply(id=0x1234, seq=7, data=b"ping-payload"))


def to_flow_real(pkt, real):
    """An ICMP error forwarded to the flow's real (DR: the packet as is, toward the real's MAC)."""
    return Step(pkt, TX, to_real(pkt, real), "fwd_icmp_error")


# Two flows per family on two services with different reals: an error must reach its own flow's real.
T4, U4 = tcp4(), udp4(sport=40001)
T6, U6 = tcp6(), udp6(sport=40001)
FLOWS = [fwd(T4, "198.18.0.11"), fwd(U4, "198.18.0.12"), fwd(T6, "2001:db8::11"), fwd(U6, "2001:db8::12")]

CASES = [
    # echo
    case("echo4", "ICMP echo request to a VIP: answered by the balancer", CFG_BASIC,
         Step(echo4(), TX, reply4(), "icmp_echo_reply")),
    case("echo6", "ICMPv6 echo request to a VIP: answered by the balancer", CFG_BASIC,
         Step(echo6(), TX, reply6(), "icmp_echo_reply")),
    case("echo-mark-prefix", "echo request to an address of a mark rule's prefix: answered", CFG_BASIC,
         Step(echo4(dst="198.51.100.30"), TX, reply4(src="198.51.100.30"), "icmp_echo_reply")),
    case("echo-off", "[icmp] echo_reply = false: echo requests pass to the kernel", NO_ECHO,
         same(echo4(), PASS, "pass_other_proto"), same(echo6(), PASS, "pass_other_proto")),
    case("echo-not-vip", "echo request to no VIP passes", CFG_BASIC,
         same(echo4(dst="192.0.2.50"), PASS, "pass_other_proto"),
         same(echo6(dst="2001:db8:200::1"), PASS, "pass_other_proto")),
    case("echo-code", "an echo request with a non-zero code is not one: passes", CFG_BASIC,
         same(echo4(code=1), PASS, "pass_other_proto")),
    case("echo-short", "an ICMP header cut short to a VIP is counted and dropped", CFG_BASIC,
         same(Ether(dst=LB_MAC, src=CLIENT_MAC) / IP(src=C4, dst=V4, proto=1) / Raw(b"\x08\x00\xf7\xff"), DROP,
              "drop_icmp_trunc")),
    # errors, each kind, to the flow's real
    case("err4-kinds", "port unreachable, frag-needed, time exceeded about each flow go to its real", CFG_BASIC,
         *FLOWS[:2],
         to_flow_real(err4(T4, type=3, code=3), "198.18.0.11"),
         to_flow_real(err4(U4, type=3, code=3), "198.18.0.12"),
         to_flow_real(err4(T4, type=3, code=4, nexthopmtu=1400), "198.18.0.11"),
         to_flow_real(err4(U4, type=3, code=4, nexthopmtu=68), "198.18.0.12"),
         to_flow_real(err4(T4, type=11, code=0), "198.18.0.11"),
         to_flow_real(err4(U4, type=11, code=1), "198.18.0.12")),
    case("err6-kinds", "ICMPv6 unreachable, Packet Too Big, time exceeded about each flow go to its real", CFG_BASIC,
         *FLOWS[2:],
         to_flow_real(err6(T6, ICMPv6DestUnreach(code=4)), "2001:db8::11"),
         to_flow_real(err6(U6, ICMPv6DestUnreach(code=1)), "2001:db8::12"),
         to_flow_real(err6(T6, ICMPv6PacketTooBig(mtu=1280)), "2001:db8::11"),
         to_flow_real(err6(U6, ICMPv6PacketTooBig(mtu=1400)), "2001:db8::12"),
         to_flow_real(err6(T6, ICMPv6TimeExceeded(code=0)), "2001:db8::11")),
    case("err-no-flow", "an error about no known flow passes", CFG_BASIC,
         same(err4(T4, type=3, code=3), PASS, "pass_other_proto"),
         same(err6(T6, ICMPv6DestUnreach(code=4)), PASS, "pass_other_proto")),
    case("err-not-vip", "an error to no VIP passes", CFG_BASIC, FLOWS[0],
         same(err4(T4, vip="192.0.2.50", type=3, code=3), PASS, "pass_other_proto")),
    case("err-other-type", "other ICMP (a redirect) about a VIP flow passes", CFG_BASIC, FLOWS[0],
         same(err4(T4, type=5, code=1), PASS, "pass_other_proto")),
    case("err-quotes-icmp", "an error quoting an ICMP packet (the balancer's echo reply) passes", CFG_BASIC,
         same(Ether(dst=LB_MAC, src=CLIENT_MAC) / IP(src=RT4, dst=V4) / ICMP(type=11)
              / Raw(bytes(IP(src=V4, dst=C4) / ICMP(type=0))[:28]), PASS, "pass_other_proto")),
    # PTB below the minimum MTU, truncated quotes
    case("ptb-too-small", "frag-needed below 68 / Packet Too Big below 1280: counted and dropped", CFG_BASIC,
         *FLOWS[::2],
         same(err4(T4, type=3, code=4, nexthopmtu=67), DROP, "drop_icmp_mtu"),
         same(err4(T4, type=3, code=4, nexthopmtu=0), DROP, "drop_icmp_mtu"),
         same(err6(T6, ICMPv6PacketTooBig(mtu=1279)), DROP, "drop_icmp_mtu")),
    case("err-trunc", "a quote too short for the ports: counted and dropped", CFG_BASIC,
         *FLOWS[::2],
         same(err4(T4, n=2, type=3, code=3), DROP, "drop_icmp_trunc"),
         same(err4(T4, n=-8, type=3, code=3), DROP, "drop_icmp_trunc"),
         same(err6(T6, ICMPv6DestUnreach(code=4), n=3), DROP, "drop_icmp_trunc"),
         same(err6(T6, ICMPv6TimeExceeded(), n=-20), DROP, "drop_icmp_trunc")),
]


@pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
def test_fixture(bench, c):
    run_case(bench, c)


def test_error_counts_for_the_flow_and_leaves_its_entry(bench):
    """A forwarded error counts for its flow's service and real, and neither creates nor changes a connection."""
    bench.reset(CFG_BASIC)
    run_case(bench, case("flow", "", CFG_BASIC, FLOWS[0]))
    before = bytes(lookup_conn(bench.dp, T4))
    err = err4(T4, type=3, code=3)
    assert bench.run(err) == (TX, to_real(err, "198.18.0.11"))
    assert bytes(lookup_conn(bench.dp, T4)) == before
    assert len(bench.dp.m["conns"]) == 1
    sid = bench.dp.services[("tcp", __import__("ipaddress").ip_address(V4), 80)].id
    c = bench.dp.counters("svc_stats", sid)
    assert (c.packets, c.bytes, c.conns) == (2, len(T4) + len(err), 1)
