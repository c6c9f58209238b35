"""Fragments to VIPs (bpf/frag.h) and one-packet scheduling, exact bytes through BPF_PROG_TEST_RUN.

Fragments: the first is placed by its ports (connection entry, else the scheduler) and recorded in `frags` under
(src, dst, id, proto); later fragments follow it to the same real. A later fragment with no record is dropped and
counted (drop_frag_no_first); one whose first fragment matched no service passes with it.
ops: each UDP datagram is scheduled alone and makes no connection entry; persistence still holds."""
import ipaddress

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from harness import CLIENT_MAC, LB_MAC, lookup_conn, real_of, to_real, udp4, udp6
from cases import (C4, C6, CFG_BASIC, DROP, PASS, TX, V4, V6, Step, case, frags4, frags6, fwd, run_case, same,
                   vip_svc)



def later(pkt, real):
    """A later fragment forwarded to its first's real (DR: the packet as is)."""
    return Step(pkt, TX, to_real(pkt, real), "fwd_fragment")


F4, F6 = frags4(), frags6()
A4 = frags4(sport=40001, ident=78)  # another datagram, another flow
TWO = vip_svc(V4, 53, "udp", ["198.18.0.11", "198.18.0.12"])
OPS = "ops = true\n"

CASES = [
    case("frag4-in-order", "IPv4: first fragment placed, later ones follow it", CFG_BASIC,
         fwd(F4[0], "198.18.0.12"), later(F4[1], "198.18.0.12"), later(F4[2], "198.18.0.12")),
    case("frag6-in-order", "IPv6: first fragment placed, later ones follow it", CFG_BASIC,
         fwd(F6[0], "2001:db8::12"), later(F6[1], "2001:db8::12"), later(F6[2], "2001:db8::12")),
    case("frag4-out-of-order", "a later fragment before its first is dropped; after it, the rest follow", CFG_BASIC,
         same(F4[2], DROP, "drop_frag_no_first"), fwd(F4[0], "198.18.0.12"), later(F4[1], "198.18.0.12")),
    case("frag6-out-of-order", "IPv6: a later fragment before its first is dropped", CFG_BASIC,
         same(F6[1], DROP, "drop_frag_no_first"), fwd(F6[0], "2001:db8::12"), later(F6[2], "2001:db8::12")),
    case("frag-interleaved", "two datagrams (rr over two reals), fragments interleaved: each follows its first", TWO,
         fwd(F4[0], "198.18.0.11"), fwd(A4[0], "198.18.0.12"), later(A4[1], "198.18.0.12"),
         later(F4[1], "198.18.0.11"), later(A4[2], "198.18.0.12"), later(F4[2], "198.18.0.11")),
    case("frag-tcp-flow", "a TCP first fragment follows its flow's connection entry", CFG_BASIC,
         fwd(Ether(dst=LB_MAC, src=CLIENT_MAC) / IP(src=C4, dst=V4, id=1) / TCP(sport=40000, dport=80, flags="S"),
             "198.18.0.11"),
         *[fwd(f, "198.18.0.11") if i == 0 else later(f, "198.18.0.11")
           for i, f in enumerate(frags4(dport=80, l4=TCP, ident=5))]),
    case("frag-mark-prefix", "fragments to a mark rule's prefix go to the fwmark service's real", CFG_BASIC,
         *[fwd(f, "198.18.0.12") if i == 0 else later(f, "198.18.0.12")
           for i, f in enumerate(frags4(dst="198.51.100.30", dport=443, l4=TCP))]),
    case("frag-no-service", "a first fragment matching no service passes; its later fragments pass with it",
         CFG_BASIC, same(frags4(dport=54)[0], PASS, "pass_no_service"),
         same(frags4(dport=54)[1], PASS, "pass_fragment")),
    case("frag-no-real", "a service with no real drops the first fragment; later ones have no record", CFG_BASIC,
         same(frags4(dst="198.51.100.60", dport=80, l4=TCP)[0], DROP, "drop_no_real"),
         same(frags4(dst="198.51.100.60", dport=80, l4=TCP)[1], DROP, "drop_frag_no_first")),
    case("frag-other-dst", "fragments to no VIP pass untouched", CFG_BASIC,
         same(frags4(dst="192.0.2.1")[0], PASS, "pass_fragment"), same(frags4(dst="192.0.2.1")[1], PASS,
                                                                       "pass_fragment")),
    # one-packet scheduling
    case("ops-rr", "ops: datagrams of one flow alternate between the reals under rr", TWO.replace("[[service.real]]",
                                                                                                OPS + "[[service.real]]", 1),
         fwd(udp4(), "198.18.0.11"), fwd(udp4(), "198.18.0.12"), fwd(udp4(), "198.18.0.11"),
         fwd(udp4(), "198.18.0.12"), check=lambda b: len(b.dp.m["conns"]) == 0),
    case("ops-fragments", "ops: a fragmented datagram's fragments stay together", TWO.replace(
        "[[service.real]]", OPS + "[[service.real]]", 1),
         fwd(F4[0], "198.18.0.11"), later(F4[1], "198.18.0.11"), fwd(udp4(), "198.18.0.12"),
         later(F4[2], "198.18.0.11"), check=lambda b: len(b.dp.m["conns"]) == 0),
]


@pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
def test_fixture(bench, c):
    run_case(bench, c)


def test_first_fragment_recorded(bench):
    """frags holds (src, dst, id, proto) -> the real's id and generation and the service, for each family."""
    dp = bench.reset(CFG_BASIC)
    assert bench.run(F4[0])[0] == TX and bench.run(F6[0])[0] == TX
    got = {(bytes(k.src), bytes(k.dst), k.id, k.proto, k.family): (v.real_id, v.real_gen, v.svc_id)
           for k, v in bench.prog["frags"].items()}
    want = {}
    for vip, real, client, ident, fam in ((V4, "198.18.0.12", C4, (77).to_bytes(2, "big") + b"\0\0", 4),
                                          (V6, "2001:db8::12", C6, (0x1234).to_bytes(4, "big"), 6)):
        key = ("udp", ipaddress.ip_address(vip), 53)
        rid = dp.real_ids.get((key, ipaddress.ip_address(real), 0))
        k = (ipaddress.ip_address(client).packed.ljust(16, b"\0"), ipaddress.ip_address(vip).packed.ljust(16, b"\0"),
             int.from_bytes(ident, "little"), 17, fam)
        want[k] = (rid, dp.m["reals"][rid].gen, dp.services[key].id)
    assert got == want


def test_ops_no_conn_each_datagram_counted(bench):
    """ops: no connection entry; each datagram counts as a new connection of its service (as IPVS's)."""
    cfg = vip_svc(V6, 53, "udp", ["2001:db8::11", "2001:db8::12"], extra=OPS)
    dp = bench.reset(cfg)
    reals = [real_of(bench.run(udp6())[1]) for _ in range(4)]
    assert reals == ["2001:db8::11", "2001:db8::12"] * 2
    assert lookup_conn(dp, udp6()) is None and len(dp.m["conns"]) == 0
    c = dp.counters("svc_stats", dp.services[("udp", ipaddress.ip_address(V6), 53)].id)
    assert (c.packets, c.conns) == (4, 4)


def test_ops_persistence_still_applies(bench):
    """ops with persistence: one client stays on one real (the template), still without connection entries."""
    cfg = vip_svc(V4, 53, "udp", ["198.18.0.11", "198.18.0.12"], extra=OPS + "persistence_timeout = 60\n")
    dp = bench.reset(cfg)
    reals = {real_of(bench.run(udp4(sport=40000 + i))[1]) for i in range(4)}
    assert len(reals) == 1
    assert len(dp.m["conns"]) == 0 and len(dp.m["persist"]) == 1


def test_ops_applies_to_udp_only(bench):
    """A fwmark service with ops (IPVS: UDP only) still makes connection entries for TCP."""
    cfg = ('[[mark]]\nmark = 3\ndst = "198.51.100.90/32"\n'
           '[[service]]\nfwmark = 3\nscheduler = "rr"\nops = true\n'
           '  [[service.real]]\n  address = "198.18.0.11"\n  [[service.real]]\n  address = "198.18.0.12"\n')
    dp = bench.reset(cfg)
    syn = Ether(dst=LB_MAC, src=CLIENT_MAC) / IP(src=C4, dst="198.51.100.90", id=1) / TCP(sport=1, dport=80)
    assert bench.run(syn)[0] == TX and bench.run(udp4(dst="198.51.100.90"))[0] == TX
    assert lookup_conn(dp, syn) is not None and len(dp.m["conns"]) == 1
