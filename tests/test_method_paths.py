"""The forwarding methods (bpf/fwd.h send_real: DR, NAT, TUN) on the paths that are not a flow's ordinary packets,
exact bytes through BPF_PROG_TEST_RUN: ICMP errors about a tunnelled flow (encapsulated, no outer checksum from an
inner ICMP packet), fragments to a tunnelled real (first and later, each encapsulated) and fragments to a NAT real
(the first's address, port and datagram checksum rewritten, the later ones' address only). The single-feature
fixtures are in test_icmp_packets.py, test_frag_packets.py, test_nat_packets.py (ICMP errors about a NAT flow too)
and test_tun_packets.py; the builders they share (tests/cases.py, natframes.py, tunframes.py) are reused here."""
import pytest
from scapy.layers.inet import IP, UDP, defragment, fragment
from scapy.layers.inet6 import ICMPv6PacketTooBig, IPv6, IPv6ExtHdrFragment, defragment6, fragment6
from scapy.layers.l2 import Ether
from scapy.utils import checksum

from harness import CLIENT_MAC, LB_MAC, REAL_MAC, tcp4, tcp6
from cases import TX, err4, err6, frags4, frags6
from natframes import L4, L6, run
from natframes import svc as nat_svc
from tunframes import R4, R6, V4, V6, gre, gue, ipip
from tunframes import svc as tun_svc

SRC = 'tunnel_source = ["198.18.0.2", "2001:db8::2"]\n'
GUE_CSUM = f'tunnel_type = "gue"\ntunnel_port = 5555\ntunnel_csum = "csum"\n{SRC}'
GRE_CSUM = f'tunnel_type = "gre"\ntunnel_csum = "csum"\n{SRC}'


def tun_cfg(extra=SRC):
    return "".join(tun_svc(vip, real, port=port, proto=proto, extra=extra)
                   for vip, real in ((V4, R4), (V6, R6)) for port, proto in ((80, "tcp"), (53, "udp")))


# tunnel type -> (config, the expected frame of pkt to real; csum: is the outer checksum there)
ENC = {"ipip": (SRC, lambda p, r, csum=False: ipip(p, r)),
       "gue-csum": (GUE_CSUM, lambda p, r, csum=False: gue(p, r, 5555, csum=csum)),
       "gre-csum": (GRE_CSUM, lambda p, r, csum=False: gre(p, r, csum=csum))}


# -- ICMP errors about a tunnelled flow --------------------------------------------------------------------------------

@pytest.mark.parametrize("tun", ["ipip", "gue-csum", "gre-csum"])
def test_icmp_error_about_a_tunnelled_flow_goes_encapsulated(bench, tun):
    """Frag-needed and Packet Too Big about an established flow: to its real, in the tunnel. The inner packet is
    ICMP, whose sum the headers do not give: GUE goes with UDP checksum 0 and GRE without its checksum word even
    with tunnel_csum = "csum"."""
    extra, enc = ENC[tun]
    bench.reset(tun_cfg(extra))
    t4, t6 = tcp4(), tcp6()
    e4 = err4(t4, type=3, code=4, nexthopmtu=1400)
    e4[IP].flags = "DF"
    e6 = err6(t6, ICMPv6PacketTooBig(mtu=1280))
    run(bench, [(t4, None, TX, enc(t4, R4, True), "fwd_tx"), (t6, None, TX, enc(t6, R6, True), "fwd_tx"),
                (e4, None, TX, enc(e4, R4), "fwd_icmp_error"), (e6, None, TX, enc(e6, R6), "fwd_icmp_error")])


# -- fragments to a tunnelled real -------------------------------------------------------------------------------------

@pytest.mark.parametrize("tun", ["ipip", "gue-csum", "gre-csum"])
def test_fragments_to_a_tunnelled_real_each_encapsulated(bench, tun):
    """A UDP datagram's fragments, IPv4 and IPv6: the first (placed by its ports) and the later ones (following
    it, no L4 header) each go in the tunnel to the same real; a fragment's checksum covers the datagram, not the
    fragment: no outer checksum from it."""
    extra, enc = ENC[tun]
    bench.reset(tun_cfg(extra))
    f4, f6 = frags4(), frags6()
    assert len(f4) == 3 and len(f6) == 3
    run(bench, [(f4[0], None, TX, enc(f4[0], R4), "fwd_tx"),
                *[(f, None, TX, enc(f, R4), "fwd_fragment") for f in f4[1:]],
                (f6[0], None, TX, enc(f6[0], R6), "fwd_tx"),
                *[(f, None, TX, enc(f, R6), "fwd_fragment") for f in f6[1:]]])


# -- fragments to a NAT real -------------------------------------------------------------------------------------------

NAT_CFG = nat_svc(V4, 53, "udp", [(L4, 5353)]) + nat_svc(V6, 53, "udp", [(L6, 5353)])


def nat_fragments(frags, real, port):
    """What NAT makes of a fragmented datagram: the datagram to real:port (its UDP checksum computed afresh over
    the whole of it), cut where the client cut it, each fragment one hop less, toward the real."""
    v4 = IP in frags[0]
    if v4:
        whole = defragment([IP(bytes(f[IP])) for f in frags])[0]
    else:
        whole = defragment6([IPv6(bytes(f[IPv6])) for f in frags])
    whole = whole.__class__(bytes(whole))
    whole.dst = real
    whole[UDP].dport = port
    del whole[UDP].chksum
    if v4:
        whole.ttl -= 1
        del whole.chksum
        cut = fragment(IP(bytes(whole)), fragsize=len(frags[0][IP].payload))
    else:
        whole.hlim -= 1
        whole = whole.__class__(bytes(whole))  # the UDP checksum, before the fragment header goes in
        udp = whole.payload.copy()
        whole.remove_payload()
        whole.nh = 44
        cut = fragment6(whole / IPv6ExtHdrFragment(id=frags[0][IPv6ExtHdrFragment].id, nh=17) / udp,
                        len(frags[0][IPv6]))
    return [bytes(Ether(dst=REAL_MAC[real], src=LB_MAC) / f) for f in cut]


def reassembled_udp_ok(outs):
    """The real's view: reassemble the rewritten fragments; the datagram's UDP checksum must verify."""
    ips = [Ether(o).payload for o in outs]
    if IP in ips[0]:
        whole = IP(bytes(defragment(ips)[0]))
        pseudo = bytes(IP(src=whole.src, dst=whole.dst))[12:20] + bytes([0, 17]) + len(whole[UDP]).to_bytes(2, "big")
    else:
        whole = IPv6(bytes(defragment6(ips)))
        pseudo = (bytes(whole)[8:40] + len(whole[UDP]).to_bytes(4, "big") + bytes([0, 0, 0, 17]))
    return whole[UDP].dport, checksum(pseudo + bytes(whole[UDP])) == 0


@pytest.mark.parametrize("fam", ["ipv4", "ipv6"])
def test_fragments_to_a_nat_real(bench, fam):
    """The first fragment: address and port rewritten, the datagram's UDP checksum updated incrementally; later
    fragments: the address only (IPv4 header checksum right); all one hop less. Reassembled at the real, the
    datagram's checksum verifies."""
    bench.reset(NAT_CFG)
    frags, real = (frags4(), L4) if fam == "ipv4" else (frags6(), L6)
    want = nat_fragments(frags, real, 5353)
    run(bench, [(f, None, TX, w, "fwd_tx" if i == 0 else "fwd_fragment") for i, (f, w) in enumerate(zip(frags, want))])
    outs = [bench.run(f)[1] for f in frags]  # the datagram again: its first fragment by the connection entry
    assert outs == want
    assert reassembled_udp_ok(outs) == (5353, True)


def test_first_nat_fragment_keeps_an_absent_ipv4_checksum(bench):
    """A fragmented IPv4 UDP datagram sent without checksum (0): the first fragment's stays 0."""
    bench.reset(NAT_CFG)
    whole = IP(src="203.0.113.7", dst=V4, id=9) / UDP(sport=40000, dport=53, chksum=0) / bytes(range(100))
    frags = [Ether(dst=LB_MAC, src=CLIENT_MAC) / f for f in fragment(whole, fragsize=48)]
    _, out = bench.run(frags[0])
    assert out[14 + 20 + 2:14 + 20 + 8] == (5353).to_bytes(2, "big") + (108).to_bytes(2, "big") + b"\0\0"
