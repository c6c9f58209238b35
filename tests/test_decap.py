"""`xlb decap` packet fixtures (STYLE 13): bpf/decap.c loaded by xlb/ops/decap.py, run through BPF_PROG_TEST_RUN on
each encapsulation the balancer produces, in every family combination, and on what it must leave alone. Each case:
a description, the input frame, the expected action, the exact output frame, the verdict reason counted."""
import ctypes as ct
import ipaddress
import struct
from dataclasses import dataclass

import pytest
from conftest import needs_root
from scapy.layers.inet import GRE, IP, TCP, UDP, IPOption_RR
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw

from xlb.dataplane import testrun
from xlb.ops.decap import ADDRS_PER_FAMILY, REASONS, check_addresses, check_ports
from xlb.errors import ConfigError

PASS, DROP = "XDP_PASS", "XDP_DROP"
SAME = object()  # expected output: the input, byte for byte

REAL_MAC, LB_MAC = "02:00:00:00:00:11", "02:00:00:00:00:02"
ME4, ME6 = "198.18.0.11", "2001:db8::11"              # the real's own addresses: outer destinations
LB4, LB6 = "198.18.0.2", "2001:db8::2"                # the balancer: outer sources
OTHER4 = "198.18.0.99"                                # another host
CLIENT4, CLIENT6 = "203.0.113.7", "2001:db8:77::7"
VIP4, VIP6 = "198.51.100.10", "2001:db8:100::10"
GUE_PORT, BARE_PORT = 5555, 6080


def eth(ethertype=None):
    e = Ether(dst=REAL_MAC, src=LB_MAC)
    if ethertype is not None:
        e.type = ethertype
    return e


def outer4(proto, dst=ME4, **kw):
    return IP(src=LB4, dst=dst, proto=proto, id=7, ttl=63, **kw)


def outer6(nh, dst=ME6):
    return IPv6(src=LB6, dst=dst, nh=nh, hlim=63)


def syn4(payload=b""):
    return IP(src=CLIENT4, dst=VIP4, id=1, ttl=63) / TCP(sport=40000, dport=80, flags="S", seq=1000,
                                                         window=8192) / payload


def syn6(payload=b""):
    return IPv6(src=CLIENT6, dst=VIP6, hlim=63) / TCP(sport=40000, dport=80, flags="S", seq=1000,
                                                      window=8192) / payload


def dgram4(payload=b"q"):
    return IP(src=CLIENT4, dst=VIP4, id=1, ttl=63) / UDP(sport=40000, dport=53) / payload


def dgram6(payload=b"q"):
    return IPv6(src=CLIENT6, dst=VIP6, hlim=63) / UDP(sport=40000, dport=53) / payload


def inner_of(family):
    return syn4() if family == 4 else syn6()


def decapped(inner):
    """What decapsulation must deliver: the frame's MACs, the inner family's type, the inner packet as it was."""
    return bytes(eth(0x0800 if inner.version == 4 else 0x86DD)) + bytes(inner)


def gue(proto, opts=b"", flags=0):
    """IPVS's GUE header: version 0, no control bit, hlen = len(opts) / 4, the inner protocol, flags."""
    return struct.pack("!BBH", len(opts) // 4, proto, flags) + opts


def udp_to(port, payload):
    return UDP(sport=33333, dport=port, chksum=0) / Raw(payload)


def ipip(outer_family, inner):
    proto = 4 if inner.version == 4 else 41
    outer = outer4(proto) if outer_family == 4 else outer6(proto)
    return eth() / outer / inner


def udp_encap(outer_family, port, payload):
    outer = outer4(17) if outer_family == 4 else outer6(17)
    return eth() / outer / udp_to(port, payload)


def gre_encap(outer_family, inner, **gre):
    outer = outer4(47) if outer_family == 4 else outer6(47)
    return eth() / outer / GRE(proto=0x0800 if inner.version == 4 else 0x86DD, **gre) / inner


@dataclass
class Case:
    desc: str
    pkt: object
    action: str
    out: object            # bytes, or SAME
    reason: str


def _families():
    return [(o, i) for o in (4, 6) for i in (4, 6)]


def _tunnel_cases():
    cases = []
    for o, i in _families():
        inner = inner_of(i)
        tag = f"{i}in{o}"
        cases.append(Case(f"IPIP {tag}", ipip(o, inner), PASS, decapped(inner), "ipip"))
        cases.append(Case(f"GUE (IPVS) {tag}", udp_encap(o, GUE_PORT, gue(4 if i == 4 else 41) + bytes(inner)),
                          PASS, decapped(inner), "gue"))
        cases.append(Case(f"header-less GUE (Katran) {tag}", udp_encap(o, BARE_PORT, bytes(inner)), PASS,
                          decapped(inner), "gue_bare"))
        cases.append(Case(f"GRE {tag}", gre_encap(o, inner), PASS, decapped(inner), "gre"))
        cases.append(Case(f"GRE with checksum {tag}", gre_encap(o, inner, chksum_present=1), PASS,
                          decapped(inner), "gre"))
    d4, d6 = dgram4(), dgram6()
    cases += [
        Case("IPIP UDP 4in4", ipip(4, d4), PASS, decapped(d4), "ipip"),
        Case("GUE UDP 6in6", udp_encap(6, GUE_PORT, gue(41) + bytes(d6)), PASS, decapped(d6), "gue"),
        Case("variant 1 on an IPVS GUE port (the kernel's fou takes both)", udp_encap(4, GUE_PORT, bytes(d4)),
             PASS, decapped(d4), "gue_bare"),
        Case("IPIP, outer IPv4 header with options", eth() / outer4(4, options=[IPOption_RR()]) / d4, PASS,
             decapped(d4), "ipip"),
        Case("GUE with an outer UDP checksum (IPVS `csum`: not ours to verify)",
             eth() / outer4(17) / UDP(sport=33333, dport=GUE_PORT) / Raw(gue(4) + bytes(d4)), PASS, decapped(d4),
             "gue"),
        Case("GUE with a private-flags word of zero", udp_encap(4, GUE_PORT, gue(4, bytes(4), 1) + bytes(d4)),
             PASS, decapped(d4), "gue"),
    ]
    return cases


def _left_alone_cases():
    syn = syn4()
    frag = eth() / outer4(4, flags="MF") / syn
    later = eth() / outer4(4, frag=8) / Raw(bytes(syn)[:32])
    frag6 = eth() / outer6(44) / IPv6ExtHdrFragment(nh=41, m=1, id=9) / syn6()
    return [
        Case("outer IPv4 first fragment (MF)", frag, PASS, SAME, "pass_fragment"),
        Case("outer IPv4 later fragment", later, PASS, SAME, "pass_fragment"),
        Case("outer IPv6 fragment", frag6, PASS, SAME, "pass_fragment"),
        Case("outer IPv6 with a destination-options header (the balancer adds none)",
             eth() / IPv6(src=LB6, dst=ME6) / IPv6ExtHdrDestOpt(nh=41) / syn6(), PASS, SAME, "pass_not_tunnel"),
        Case("IPIP to another host", eth() / outer4(4, dst=OTHER4) / syn, PASS, SAME, "pass_not_local"),
        Case("GUE to another host", eth() / outer4(17, dst=OTHER4) / udp_to(GUE_PORT, gue(4) + bytes(syn)),
             PASS, SAME, "pass_not_local"),
        Case("TCP to us, not encapsulated", eth() / IP(src=CLIENT4, dst=ME4) / TCP(dport=22, flags="S"), PASS,
             SAME, "pass_not_tunnel"),
        Case("UDP to us on another port", udp_encap(4, 53, b"hello"), PASS, SAME, "pass_not_tunnel"),
        Case("IPv6 TCP to us, not encapsulated", eth() / IPv6(src=CLIENT6, dst=ME6) / TCP(dport=22), PASS, SAME,
             "pass_not_tunnel"),
        Case("ARP", Ether(dst="ff:ff:ff:ff:ff:ff", src=LB_MAC) / ARP(pdst=ME4, psrc=LB4), PASS, SAME,
             "pass_not_ip"),
        Case("GRE with a key (a kernel GRE device's)", gre_encap(4, syn, key_present=1, key=5), PASS, SAME,
             "pass_gre_other"),
        Case("GRE carrying Ethernet (gretap)", eth() / outer4(47) / GRE(proto=0x6558) / eth() / syn, PASS, SAME,
             "pass_gre_other"),
        Case("outer IPv4 total length beyond the frame", bytes(ipip(4, syn))[:-10], PASS, SAME,
             "pass_bad_outer"),
        Case("outer UDP header truncated", eth() / outer4(17) / Raw(b"\x15\xb3\x15"), PASS, SAME,
             "pass_bad_outer"),
    ]


def _malformed_cases():
    syn = syn4()
    inner_short = eth() / outer4(4) / Raw(bytes(syn)[:12])
    longer = IP(bytes(syn))
    longer.len = len(syn) + 20
    bad = [
        Case("IPIP with a truncated inner header", inner_short, DROP, SAME, "drop_bad_inner"),
        Case("IPIP whose inner packet claims more than the outer holds", eth() / outer4(4) / Raw(bytes(longer)),
             DROP, SAME, "drop_bad_inner"),
        Case("IPIP (proto 4) carrying IPv6", eth() / outer4(4) / syn6(), DROP, SAME, "drop_bad_inner"),
        Case("6in6 with a truncated inner header", eth() / outer6(41) / Raw(bytes(syn6())[:30]), DROP, SAME,
             "drop_bad_inner"),
        Case("GUE header truncated", udp_encap(4, GUE_PORT, b"\x00\x04"), DROP, SAME, "drop_trunc_tunnel"),
        Case("GUE inner truncated", udp_encap(4, GUE_PORT, gue(4) + bytes(syn)[:16]), DROP, SAME,
             "drop_bad_inner"),
        Case("GUE control message", udp_encap(4, GUE_PORT, b"\x20\x00\x00\x00" + bytes(syn)), DROP, SAME,
             "drop_bad_gue"),
        Case("GUE version 2", udp_encap(4, GUE_PORT, b"\x80\x04\x00\x00" + bytes(syn)), DROP, SAME,
             "drop_bad_gue"),
        Case("GUE carrying UDP (not IP)", udp_encap(4, GUE_PORT, gue(17) + bytes(syn)), DROP, SAME,
             "drop_bad_gue"),
        Case("GUE unknown flag", udp_encap(4, GUE_PORT, gue(4, flags=0x8000) + bytes(syn)), DROP, SAME,
             "drop_bad_gue"),
        Case("GUE private flag without room for it", udp_encap(4, GUE_PORT, gue(4, flags=1) + bytes(syn)), DROP,
             SAME, "drop_bad_gue"),
        Case("GUE unknown private flag", udp_encap(4, GUE_PORT, gue(4, b"\x40\0\0\0", 1) + bytes(syn)), DROP,
             SAME, "drop_bad_gue"),
        Case("GUE variant 0 on a header-less port", udp_encap(4, BARE_PORT, gue(4) + bytes(syn)), DROP, SAME,
             "drop_bad_gue"),
        Case("header-less GUE, first nibble neither 4 nor 6", udp_encap(4, BARE_PORT, b"\x55" + bytes(syn)[1:]),
             DROP, SAME, "drop_bad_gue"),
        Case("GRE header truncated", eth() / outer4(47) / Raw(b"\x00\x00"), DROP, SAME, "drop_trunc_tunnel"),
        Case("GRE with checksum, inner truncated", eth() / outer4(47) / Raw(b"\x80\x00\x08\x00\0\0\0\0\x45"),
             DROP, SAME, "drop_bad_inner"),
    ]
    return bad


CASES = _tunnel_cases() + _left_alone_cases() + _malformed_cases()


@pytest.fixture(scope="module")
def decap():
    import os
    if os.geteuid() != 0:
        pytest.skip("needs root")
    from xlb.ops.decap import DecapProgram
    prog = DecapProgram(log=None)
    try:
        prog.set_addresses([ipaddress.ip_address(ME4), ipaddress.ip_address(ME6)])
        prog.set_ports([GUE_PORT], [BARE_PORT])
        yield prog
    finally:
        prog.close()


def run(prog, pkt):
    """(action, output, {reason: packets} counted by this one run)."""
    table = prog["decap_verdicts"]
    for i in range(len(REASONS)):
        table[ct.c_uint32(i)] = table.Leaf()
    res = testrun.test_run(prog.fd, bytes(pkt))
    return res.action_name, res.data, {k: pk for k, (pk, _b) in prog.counters().items() if pk}


def show(data):
    return Ether(data).show(dump=True) if len(data) >= 14 else data.hex()


@needs_root
@pytest.mark.parametrize("case", CASES, ids=[c.desc for c in CASES])
def test_fixture(decap, case):
    action, out, counted = run(decap, case.pkt)
    want = bytes(case.pkt) if case.out is SAME else case.out
    assert out == want, f"{case.desc}\n--- got:\n{show(out)}\n--- want:\n{show(want)}"
    assert action == case.action, case.desc
    assert counted == {case.reason: 1}, case.desc


def _partial(inner, l4_off, csum_off):
    """inner with its L4 checksum field holding only the pseudo-header sum, as a sender offloading it leaves it
    (CHECKSUM_PARTIAL): the complement of the pseudo-header's checksum."""
    raw = bytearray(bytes(inner))
    l4len = len(raw) - l4_off
    if inner.version == 4:
        pseudo = raw[12:20] + struct.pack("!BBH", 0, raw[9], l4len)
    else:
        pseudo = raw[8:40] + struct.pack("!IxxxB", l4len, raw[6])
    struct.pack_into("!H", raw, l4_off + csum_off, ~testrun.inet_checksum(bytes(pseudo)) & 0xFFFF)
    return bytes(raw)


# (description, outer family, inner, L4 offset in inner, checksum field offset in L4). Payload lengths exercise
# whole 256-byte blocks, every smaller power of two and 0-3 tail bytes.
REMCSUM = [
    ("TCP 4in4, 301-byte payload", 4, syn4(bytes(range(256)) + b"x" * 45), 20, 16),
    ("TCP 6in6, 1000-byte payload", 6, syn6(b"y" * 1000), 40, 16),
    ("UDP 4in6, 2-byte payload", 6, dgram4(b"ab"), 20, 6),
    ("UDP 6in4, 1451-byte payload", 4, dgram6(bytes(range(251)) * 5 + b"z" * 196), 40, 6),
]


@needs_root
@pytest.mark.parametrize("desc,ofam,inner,l4_off,csum_off", REMCSUM, ids=[r[0] for r in REMCSUM])
def test_gue_remote_checksum_is_completed(decap, desc, ofam, inner, l4_off, csum_off):
    """IPVS's GUE with `remcsum`: private flag REMCSUM, then (start, offset) relative to the inner packet; the
    decapsulated packet carries the whole, correct inner checksum, exactly as scapy computes it."""
    opts = struct.pack("!IHH", 0x80000000, l4_off, l4_off + csum_off)
    proto = 4 if inner.version == 4 else 41
    pkt = udp_encap(ofam, GUE_PORT, gue(proto, opts, flags=1) + _partial(inner, l4_off, csum_off))
    action, out, counted = run(decap, pkt)
    want = decapped(inner)
    assert out == want, f"{desc}\n--- got:\n{show(out)}\n--- want:\n{show(want)}"
    assert (action, counted) == (PASS, {"gue": 1})


@needs_root
def test_gue_remote_checksum_out_of_bounds_is_dropped(decap):
    syn = syn4()
    for start, offset in ((20, 20 + len(syn)), (300, 316), (20, 10)):
        opts = struct.pack("!IHH", 0x80000000, start, offset)
        pkt = udp_encap(4, GUE_PORT, gue(4, opts, flags=1) + bytes(syn))
        action, out, counted = run(decap, pkt)
        assert (action, out, counted) == (DROP, bytes(pkt), {"drop_bad_gue": 1}), (start, offset)


@needs_root
def test_ethernet_padding_after_the_outer_packet_is_kept(decap):
    """A short outer packet padded to 60 bytes: the inner packet and the padding are delivered; the stack trims
    the padding by the inner length, as it trims the outer's."""
    inner = IP(src=CLIENT4, dst=VIP4, id=1) / UDP(sport=1, dport=2)
    pkt = bytes(ipip(4, inner))
    padded = pkt + b"\0" * (60 - len(pkt))
    action, out, counted = run(decap, padded)
    assert out == decapped(inner) + b"\0" * (60 - len(pkt))
    assert (action, counted) == (PASS, {"ipip": 1})


def test_ports_are_checked_before_anything_is_loaded():
    check_ports([5555], [6080])
    with pytest.raises(ConfigError, match="--gue-port: 70000 is not a UDP port"):
        check_ports([70000], [])
    with pytest.raises(ConfigError, match="--katran-gue-port: port 6080 is also a --gue-port"):
        check_ports([6080], [6080])


def test_addresses_are_checked_before_anything_is_loaded():
    with pytest.raises(ConfigError, match="host addresses: no address outside lo"):
        check_addresses([], given=False)
    many = [ipaddress.ip_address("198.18.0.0") + i for i in range(ADDRS_PER_FAMILY + 1)]
    with pytest.raises(ConfigError, match=f"--address: {ADDRS_PER_FAMILY + 1} IPv4 addresses, at most "
                                          f"{ADDRS_PER_FAMILY}"):
        check_addresses(many, given=True)
    check_addresses(many[:-1] + [ipaddress.ip_address(ME6)], given=True)


@needs_root
def test_every_host_address_of_a_family_is_matched(decap):
    """The program scans decap_local up to its count: the last of a full set matches, and past the count nothing
    does."""
    # bcc's mirror of struct decap_local is the size the program uses (two counts, then 1 + 4 words an address).
    assert ct.sizeof(decap["decap_local"].Leaf) == 8 + 5 * 4 * ADDRS_PER_FAMILY
    addrs = [ipaddress.ip_address("198.18.5.0") + i for i in range(ADDRS_PER_FAMILY)]
    addrs6 = [ipaddress.ip_address("2001:db8:5::") + i for i in range(ADDRS_PER_FAMILY)]
    try:
        decap.set_addresses(addrs + addrs6)
        for dst, o in ((str(addrs[-1]), 4), (str(addrs6[-1]), 6)):
            pkt = eth() / (outer4(4, dst=dst) if o == 4 else IPv6(src=LB6, dst=dst, nh=4)) / syn4()
            assert run(decap, pkt)[2] == {"ipip": 1}, dst
        decap.set_addresses(addrs[:3])
        pkt = eth() / outer4(4, dst=str(addrs[3])) / syn4()
        assert run(decap, pkt)[2] == {"pass_not_local": 1}
    finally:
        decap.set_addresses([ipaddress.ip_address(ME4), ipaddress.ip_address(ME6)])


@needs_root
def test_bench_decap_quick_run_measures_the_named_paths():
    """bench/decap.py checks each case took the path it names (the verdict counters); no timing is asserted."""
    from bench import decap as bench_decap
    res = bench_decap.run(quick=True, log=lambda _msg: None)
    assert set(res["cases"]) >= {"xdp_pass", "floor_strip", "ipip_4in4", "gue_6in6", "gue_bare_4in4", "gre_4in4"}
    assert {r["action"] for r in res["cases"].values()} == {PASS}


def test_reasons_are_never_renumbered():
    """bpf/decap.h's enum is append-only: the numbers operators' scripts may have recorded stay."""
    assert list(REASONS.items())[:14] == [
        (0, "pass_not_ip"), (1, "pass_bad_outer"), (2, "pass_not_local"), (3, "pass_not_tunnel"),
        (4, "pass_fragment"), (5, "pass_gre_other"), (6, "ipip"), (7, "gue"), (8, "gue_bare"), (9, "gre"),
        (10, "drop_trunc_tunnel"), (11, "drop_bad_gue"), (12, "drop_bad_inner"), (13, "drop_adjust")]
