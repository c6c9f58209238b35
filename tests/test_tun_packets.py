"""Tunnel forwarding (method = "tun", bpf/tun.h) through BPF_PROG_TEST_RUN: the exact frame for each encapsulation
(IPIP in the four family combinations, GUE with IPVS's header and Katran's none, GRE), each checksum option, the
outer source (configured, per flow from a prefix, learned from the route), TOS/TTL/DF as IPVS copies them, and the
ICMP frag-needed / Packet Too Big answer to a packet the tunnel cannot carry. The expected frames are built by
scapy, which computes every length and checksum itself."""
import ctypes as ct
import ipaddress
import struct

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import ICMPv6PacketTooBig, IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from scapy.utils import checksum

from harness import (CLIENT_MAC, GW_MAC, LB_MAC, describe, flow_cached, in_netns, lookup_conn, tcp4, tcp6,
                     udp4)
from tunframes import LB4, LB6, MTU, R4, R6, V4, V6, flow_hash, gre, gue, ipip, svc
from xlb.dataplane import structs as S


def check(bench, pkt, want, action="XDP_TX", reason="fwd_tx"):
    got_action, got = bench.run(pkt)
    if (got_action, got) != (action, want):
        pytest.fail(f"got {got_action}, want {action}\n--- got:\n{describe(got)}\n--- want:\n{describe(want)}")
    assert bench.verdicts().get(reason), bench.verdicts()


# -- IPIP -----------------------------------------------------------------------------------------------------------

def test_ipip_4in4_copies_tos_ttl_df_and_id(bench):
    bench.reset(svc(V4, R4))
    pkt = tcp4()
    pkt[IP].tos, pkt[IP].ttl, pkt[IP].flags, pkt[IP].id = 0xB8, 37, "DF", 4242
    check(bench, pkt, ipip(pkt, R4))


def test_ipip_6in6(bench):
    bench.reset(svc(V6, R6))
    pkt = tcp6()
    pkt[IPv6].tc, pkt[IPv6].hlim = 0x28, 9
    check(bench, pkt, ipip(pkt, R6))


def test_ipip_4in6_and_6in4_real_of_the_other_family(bench):
    bench.reset(svc(V4, R6) + svc(V6, R4))
    p4, p6 = tcp4(), tcp6()
    p4[IP].flags = "DF"  # DF has no place in an IPv6 outer header
    check(bench, p4, ipip(p4, R6))
    check(bench, p6, ipip(p6, R4))  # IPv6 inside IPv4: no DF, id 0 (IPVS)


def test_ecn_ce_is_not_copied_outward(bench):
    bench.reset(svc(V4, R4))
    pkt = tcp4()
    pkt[IP].tos = 0x03  # CE
    want = ipip(pkt, R4)
    assert IP(want[14:]).tos == 0x02
    check(bench, pkt, want)


def test_udp_and_established_flows_through_the_flow_cache(bench):
    """A handshake's packets, then the established flow's (the flow cache's path): each encapsulated."""
    bench.reset(svc(V4, R4) + svc(V4, R4, port=53, proto="udp"))
    for flags in ("S", "A", "PA", "A"):
        pkt = tcp4(flags=flags, payload=b"x" * (5 if flags == "PA" else 0))
        check(bench, pkt, ipip(pkt, R4))
        if flags == "A":  # established: the next packets come through the flow cache
            entry = flow_cached(bench.dp, pkt)
            assert entry is not None and entry.method == S.METHOD["tun"]
    for _ in range(3):
        pkt = udp4()
        check(bench, pkt, ipip(pkt, R4))
    assert lookup_conn(bench.dp, tcp4()) is not None
    assert bench.verdicts() == {"fwd_tx": 7}


def test_real_behind_a_gateway_is_reached_through_it(bench):
    """Unlike DR, a tunnel's real need not be on-link: the outer packet goes to the gateway's MAC."""
    bench.reset(svc(V4, "198.18.9.9"))
    pkt = tcp4()
    check(bench, pkt, ipip(pkt, "198.18.9.9", mac=GW_MAC))


# -- GUE ------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("csum", ["nocsum", "csum", "remcsum"])
@pytest.mark.parametrize("fam", ["4in4", "6in6", "4in6"])
def test_gue_with_ipvs_header(bench, csum, fam):
    """IPVS's 4-byte GUE header; csum and remcsum both set the UDP checksum (IPVS puts the remote-checksum option
    only on locally made CHECKSUM_PARTIAL packets, never on a forwarded one)."""
    vip, real, mk = {"4in4": (V4, R4, tcp4), "6in6": (V6, R6, tcp6), "4in6": (V4, R6, tcp4)}[fam]
    bench.reset(svc(vip, real, extra=f'tunnel_type = "gue"\ntunnel_port = 5555\ntunnel_csum = "{csum}"\n'
                                     'tunnel_source = ["198.18.0.2", "2001:db8::2"]\n'))
    pkt = mk(flags="PA", payload=b"hello, real")
    check(bench, pkt, gue(pkt, real, 5555, csum=csum != "nocsum"))


def test_gue_checksum_of_udp_inner_packets(bench):
    """UDP inside: its checksum gives the inner sum; an IPv4 datagram without one leaves the outer checksum off."""
    extra = 'tunnel_type = "gue"\ntunnel_port = 5555\ntunnel_csum = "csum"\ntunnel_source = "198.18.0.2"\n'
    bench.reset(svc(V4, R4, port=53, proto="udp", extra=extra))
    pkt = udp4(payload=b"query?")
    check(bench, pkt, gue(pkt, R4, 5555, csum=True))
    nocs = udp4(sport=40001, payload=b"query?")
    nocs[UDP].chksum = 0
    nocs = Ether(bytes(nocs))
    check(bench, nocs, gue(nocs, R4, 5555, csum=False))


def test_gue_without_header_katran(bench):
    bench.reset(svc(V6, R6, extra='tunnel_type = "gue"\ntunnel_gue_header = false\n'
                                  'tunnel_source = "2001:db8::2"\n') + svc(V4, R4, extra='tunnel_type = "gue"\n'
                                  'tunnel_gue_header = false\ntunnel_port = 9999\ntunnel_source = "198.18.0.2"\n'))
    p6, p4 = tcp6(), tcp4()
    check(bench, p6, gue(p6, R6, 6080, header=False))
    check(bench, p4, gue(p4, R4, 9999, header=False))


def test_gue_source_port_is_a_hash_of_the_flow(bench):
    bench.reset(svc(V4, R4, extra='tunnel_type = "gue"\ntunnel_port = 5555\ntunnel_source = "198.18.0.2"\n'))
    ports = set()
    for sport in range(40000, 40016):
        pkt = tcp4(sport=sport)
        _, out = bench.run(pkt)
        ports.add(UDP(out[34:42]).sport)
        assert out == gue(pkt, R4, 5555)
    assert len(ports) >= 12 and all(49152 <= p <= 65535 for p in ports)


# -- GRE ------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("csum", ["nocsum", "csum"])
@pytest.mark.parametrize("fam", ["4in4", "6in6", "6in4"])
def test_gre_as_ipvs_sends_it(bench, csum, fam):
    vip, real, mk = {"4in4": (V4, R4, tcp4), "6in6": (V6, R6, tcp6), "6in4": (V6, R4, tcp6)}[fam]
    bench.reset(svc(vip, real, extra=f'tunnel_type = "gre"\ntunnel_csum = "{csum}"\n'
                                     'tunnel_source = ["198.18.0.2", "2001:db8::2"]\n'))
    pkt = mk(flags="PA", payload=b"some bytes to sum")
    check(bench, pkt, gre(pkt, real, csum=csum == "csum"))


def test_gre_checksum_needs_the_inner_sum(bench):
    """An IPv4 UDP datagram without checksum: the GRE header goes without its checksum word."""
    bench.reset(svc(V4, R4, port=53, proto="udp", extra='tunnel_type = "gre"\ntunnel_csum = "csum"\n'
                                                        'tunnel_source = "198.18.0.2"\n'))
    pkt = udp4()
    check(bench, pkt, gre(pkt, R4, csum=True))
    nocs = udp4(sport=40001)
    nocs[UDP].chksum = 0
    nocs = Ether(bytes(nocs))
    check(bench, nocs, gre(nocs, R4, csum=False))


# -- outer source -----------------------------------------------------------------------------------------------------

def test_per_flow_sources_from_a_prefix(bench):
    """tunnel_source a prefix: the host bits come from the flow's hash (spread at the reals' RSS and ECMP)."""
    bench.reset(svc(V4, R4, extra='tunnel_source = ["198.18.5.0/24", "2001:db8:5::/64"]\n')
                + svc(V6, R6, extra='tunnel_source = ["198.18.5.0/24", "2001:db8:5::/64"]\n'))
    srcs = set()
    for sport in range(40000, 40008):
        pkt = tcp4(sport=sport)
        h = flow_hash(pkt)
        src = f"198.18.5.{h >> 24}"  # the host byte is the word's last in memory: h's top byte (little-endian)
        check(bench, pkt, ipip(pkt, R4, src=src))
        srcs.add(src)
    assert len(srcs) >= 6
    pkt = tcp6()
    h = flow_hash(pkt)
    host = struct.pack("<2I", h, h)  # words 2 and 3 of the address, each or-ed with the hash
    src = str(ipaddress.IPv6Address(ipaddress.IPv6Address("2001:db8:5::").packed[:8] + host))
    check(bench, pkt, ipip(pkt, R6, src=src))


def test_learned_source_is_the_route_s(bench):
    """Without tunnel_source, the outer source is the balancer's own address toward the real, from its route."""
    bench.reset(svc(V4, R4))
    with in_netns(bench.ns):
        bench.dp.apply(bench.config(svc(V4, R4, extra="") + svc(V6, R6, extra="")))
    p4, p6 = tcp4(), tcp6()
    check(bench, p4, ipip(p4, R4, src=LB4))
    check(bench, p6, ipip(p6, R6, src=LB6))


def test_unlearnable_source_is_a_config_error_that_changes_nothing(bench):
    from xlb.errors import ConfigError
    bench.reset(svc(V4, R4))
    bench.dp.route_source = lambda addr: None
    with pytest.raises(ConfigError, match=r"service\[0\].real\[0\].*no route to tunnelled real 198.18.0.11"):
        bench.dp.apply(bench.config(svc(V4, R4, extra="")))
    pkt = tcp4()
    check(bench, pkt, ipip(pkt, R4))


# -- too big for the tunnel -------------------------------------------------------------------------------------------

def ptb4(pkt, mtu):
    quote = bytes(pkt[IP])[:68]
    icmp = bytearray(struct.pack("!BBHHH", 3, 4, 0, 0, mtu) + quote)
    icmp[2:4] = struct.pack("!H", checksum(bytes(icmp)))
    return bytes(Ether(dst=CLIENT_MAC, src=LB_MAC) / IP(src=V4, dst=pkt[IP].src, ttl=64, id=0, proto=1)
                 / Raw(bytes(icmp)))


def ptb6(pkt, mtu):
    quote = bytes(pkt[IPv6])[:1232]
    return bytes(Ether(dst=CLIENT_MAC, src=LB_MAC) / IPv6(src=V6, dst=pkt[IPv6].src, hlim=64)
                 / ICMPv6PacketTooBig(mtu=mtu) / Raw(quote))


@pytest.mark.parametrize("ttype,over", [("ipip", 20), ("gue", 32), ("gre", 24)])
def test_too_big_with_df_is_answered_with_frag_needed(bench, ttype, over):
    port = 'tunnel_port = 5555\n' if ttype == "gue" else ""
    bench.reset(svc(V4, R4, extra=f'tunnel_type = "{ttype}"\n{port}tunnel_source = "198.18.0.2"\n'))
    fits = tcp4(flags="A", payload=b"y" * (MTU - over - 40))
    fits[IP].flags = "DF"
    assert len(fits[IP]) + over == MTU
    act, out = bench.run(fits)
    assert act == "XDP_TX" and len(out) == 14 + MTU
    big = tcp4(flags="A", payload=b"y" * (MTU - over - 39))
    big[IP].flags = "DF"
    check(bench, big, ptb4(big, MTU - over), reason="tun_ptb")
    assert bench.verdicts() == {"fwd_tx": 1, "tun_ptb": 1}


def test_too_big_ipv6_is_answered_with_packet_too_big(bench):
    bench.reset(svc(V6, R6) + svc(V4, R6, port=81))
    big = tcp6(flags="A", payload=b"z" * (MTU - 40 - 40 - 19))
    check(bench, big, ptb6(big, MTU - 40), reason="tun_ptb")
    # IPv4 inside IPv6 with DF: frag-needed with the MTU left by the 40-byte outer header.
    big4 = tcp4(dport=81, flags="A", payload=b"z" * (MTU - 40 - 40 + 1))
    big4[IP].flags = "DF"
    check(bench, big4, ptb4(big4, MTU - 40), reason="tun_ptb")
    assert bench.verdicts() == {"tun_ptb": 2}


def test_too_big_without_df_is_answered_with_frag_needed_all_the_same(bench):
    """xlb cannot fragment: IPv4 without DF that the tunnel cannot carry is answered like DF (the sender lowers its
    path MTU and fragments what follows), counted apart; a client's first fragment (never DF) alike."""
    bench.reset(svc(V4, R4) + svc(V4, R4, port=53, proto="udp"))
    big = tcp4(flags="A", payload=b"y" * (MTU - 20 - 39))
    check(bench, big, ptb4(big, MTU - 20), reason="tun_ptb_no_df")
    first = Ether(dst=LB_MAC, src=CLIENT_MAC) / IP(src="203.0.113.7", dst=V4, id=9, flags="MF") / UDP(
        sport=40000, dport=53, len=3008, chksum=0x1234) / Raw(b"d" * (MTU - 28))
    check(bench, first, ptb4(first, MTU - 20), reason="tun_ptb_no_df")
    assert bench.verdicts() == {"tun_ptb_no_df": 2}


def test_method_and_tunnel_in_the_maps(bench):
    dp = bench.reset(svc(V4, R4, extra='tunnel_type = "gue"\ntunnel_port = 5555\ntunnel_csum = "csum"\n'
                                       'tunnel_source = "198.18.5.0/24"\n'))
    meta = next(iter(dp.m["services"].values()))
    assert meta.method == S.METHOD["tun"]
    rid = next(iter(dp.real_ids.ids.values()))
    real = dp.m["reals"][ct.c_uint32(rid)]
    assert (real.flags, real.method) == (S.REAL_F_LIVE, S.METHOD["tun"])
    t = dp.m["tunnels"][ct.c_uint32(rid)]
    assert (t.type, t.flags, t.family) == (S.TUN_TYPE["gue"], S.TUN_F_CSUM, 4)
    assert bytes(t.src)[:4] == bytes([198, 18, 5, 0]) and bytes(t.src_host)[:4] == bytes([0, 0, 0, 255])


def test_a_tunnelled_real_behind_a_gateway_is_not_warned_about(bench):
    """The daemon's neighbour pass warns that DR cannot reach a real behind a gateway; a tunnel can: no warning."""
    from xlb.dataplane.neigh import ensure_neighbours
    behind = ipaddress.ip_address("198.18.9.10")
    logged = []
    with in_netns(bench.ns):
        assert ensure_neighbours([behind], log=logged.append, tunnelled={behind}) == {behind: "via-gateway"}
        assert logged == []
        ensure_neighbours([behind], log=logged.append)
    assert len(logged) == 1 and "direct routing needs it on-link" in logged[0]
