"""NAT (method = "nat") packet fixtures through BPF_PROG_TEST_RUN: exact output frames for the inbound rewrite
(destination to the real's address and port) and the replies' (source back to VIP:port), IPv4 and IPv6, TCP and UDP.
Expected frames are built by scapy with every checksum computed afresh, so a byte-exact match checks the data
plane's incremental checksums. Topology: tests/harness.py (clients are routed via the gateway on lb0)."""
import time

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from harness import GW_MAC, LB1_MAC, LB_MAC, REAL_MAC, conn_key, flow_cached, tcp4, tcp6, udp4, udp6
from xlb.dataplane import structs as S
from xlb.dataplane.mapkeys import htons
from xlb.config.model import addr_bytes

from cases import C4, C6, DROP, PASS, REDIRECT, TX, V4, V6
from natframes import GW4, L4, R4, R6, nat_in, nat_out, quote, reply, requoted, rewritten, run, svc

CFG = "\n".join([
    svc(V4, 80, "tcp", [(R4, 8080)]),
    svc(V4, 53, "udp", [(R4, 5353)]),
    svc(V6, 80, "tcp", [(R6, 8080)]),
    svc(V6, 53, "udp", [(R6, 5353)]),
    svc("198.51.100.11", 80, "tcp", [(L4, None)]),
    svc("198.51.100.12", 80, "tcp", [(GW4, 8080)]),
    svc("198.51.100.13", 0, "tcp", [(L4, None)], extra="persistence_timeout = 60\n"),
    svc("198.51.100.14", 80, "tcp", [(L4, None)], method="dr"),
])


def in_out_case(mk, vip, vport, real, rport, proto_payload=b"hello"):
    """A new connection, an established packet (the connection table), another (the flow cache), then the real's
    replies: every inbound frame rewritten to real:rport, every reply back to vip:vport."""
    def steps(bench):
        first = mk(flags="S") if mk in (tcp4, tcp6) else mk(payload=proto_payload)
        more = (mk(flags="A", payload=proto_payload) if mk in (tcp4, tcp6) else mk(payload=proto_payload * 3))
        rep = reply(first, real, rport)
        out = [(first, None, REDIRECT, nat_in(first, real, rport, LB1_MAC, REAL_MAC[real]), "fwd_redirect"),
               (rep, bench.ifindex1, REDIRECT, nat_out(rep, vip, vport), "fwd_reply_redirect")]
        for _ in range(2):
            out.append((more, None, REDIRECT, nat_in(more, real, rport, LB1_MAC, REAL_MAC[real]), "fwd_redirect"))
        rep2 = reply(first, real, rport, flags="A", payload=b"x" * 300)
        out.append((rep2, bench.ifindex1, REDIRECT, nat_out(rep2, vip, vport), "fwd_reply_redirect"))
        return out
    return steps


CASES = {
    "tcp4 80->8080": in_out_case(tcp4, V4, 80, R4, 8080),
    "udp4 53->5353": in_out_case(udp4, V4, 53, R4, 5353),
    "tcp6 80->8080": in_out_case(tcp6, V6, 80, R6, 8080),
    "udp6 53->5353": in_out_case(udp6, V6, 53, R6, 5353),
}


@pytest.mark.parametrize("name", list(CASES))
def test_nat_in_and_out(bench, name):
    bench.reset(CFG)
    steps = CASES[name](bench)
    run(bench, steps)
    assert flow_cached(bench.dp, steps[2][0]) is not None  # the last inbound packet took the flow cache


def test_udp4_without_checksum_stays_without(bench):
    """UDP over IPv4 with checksum 0 (none computed): the rewrite leaves it 0, both ways."""
    bench.reset(CFG)
    q = udp4(payload=b"q")
    q[UDP].chksum = 0
    q = Ether(bytes(q))
    rep = reply(q, R4, 5353)
    rep[UDP].chksum = 0
    rep = Ether(bytes(rep))
    run(bench, [(q, None, REDIRECT, nat_in(q, R4, 5353, LB1_MAC, REAL_MAC[R4]), "fwd_redirect"),
                (rep, bench.ifindex1, REDIRECT, nat_out(rep, V4, 53), "fwd_reply_redirect")])
    assert bench.run(rep, bench.ifindex1)[1][14 + 20 + 6:14 + 20 + 8] == b"\0\0"


def test_same_interface_gateway_port_zero_and_dr_beside_nat(bench):
    """Real and replies on the ingress interface: XDP_TX both ways. A NAT real behind a gateway is fine (DR would
    refuse it). A port-zero NAT service keeps the client's port. A DR service on the same balancer is untouched."""
    bench.reset(CFG)
    a = tcp4(dst="198.51.100.11")
    ra = reply(a, L4, 80, mac_to=LB_MAC)
    g = tcp4(dst="198.51.100.12")
    z = tcp4(dst="198.51.100.13", dport=4433)
    rz = reply(z, L4, 4433, mac_to=LB_MAC)
    d = tcp4(dst="198.51.100.14")
    dr_out = d.copy()
    dr_out[Ether].src, dr_out[Ether].dst = LB_MAC, REAL_MAC[L4]
    run(bench, [
        (a, None, TX, nat_in(a, L4, None, LB_MAC, REAL_MAC[L4]), "fwd_tx"),
        (ra, None, TX, nat_out(ra, "198.51.100.11", 80), "fwd_reply_tx"),
        (g, None, TX, nat_in(g, GW4, 8080, LB_MAC, GW_MAC), "fwd_tx"),
        (z, None, TX, nat_in(z, L4, None, LB_MAC, REAL_MAC[L4]), "fwd_tx"),
        (rz, None, TX, nat_out(rz, "198.51.100.13", 4433), "fwd_reply_tx"),
        (d, None, TX, bytes(dr_out), "fwd_tx"),
    ])


def test_unmatched_replies_pass_and_ttl_one_drops(bench):
    """A real's packet that matches no NAT connection (wrong port, a DR real's reply) passes untouched; a packet
    whose TTL would reach 0 in xlb's hop is dropped, inbound and reply."""
    bench.reset(CFG)
    s = tcp4()
    rep = reply(s, R4, 8080)
    wrong = reply(s, R4, 8081)
    low = tcp4(sport=40001)
    low[IP].ttl = 1
    low_rep = reply(tcp4(sport=40002), R4, 8080)
    low_rep[IP].ttl = 1
    run(bench, [
        (rep, bench.ifindex1, PASS, None, "pass_no_service"),       # no connection yet
        (s, None, REDIRECT, nat_in(s, R4, 8080, LB1_MAC, REAL_MAC[R4]), "fwd_redirect"),
        (wrong, bench.ifindex1, PASS, None, "pass_no_service"),
        (low, None, DROP, bytes(low), "drop_ttl"),
        (tcp4(sport=40002), None, REDIRECT, nat_in(tcp4(sport=40002), R4, 8080, LB1_MAC, REAL_MAC[R4]),
         "fwd_redirect"),
        (low_rep, bench.ifindex1, DROP, bytes(low_rep), "drop_ttl"),
    ])


def test_reverse_entry_and_out_counters(bench):
    """The new connection writes its reverse entry (the reply's tuple -> VIP:port, its real and service); replies
    count as the service's and the real's OutPkts/OutBytes."""
    bench.reset(CFG)
    s = tcp6()
    bench.run(s)
    rep = reply(s, R6, 8080, payload=b"y" * 100)
    for _ in range(3):
        bench.run(rep, bench.ifindex1)
    key = S.ConnKey(src=S.addr_words(addr_bytes(R6)), dst=S.addr_words(addr_bytes(C6)), sport=htons(8080),
                    dport=htons(40000), proto=6, family=6)
    rev = bench.dp.m["nat_revs"][key]
    svc_key = ("tcp", __import__("ipaddress").ip_address(V6), 80)
    sid = bench.dp.services[svc_key].id
    rid = bench.dp.real_ids.get((svc_key, __import__("ipaddress").ip_address(R6), 8080))
    assert (S.words_bytes(rev.vip), rev.vport, rev.svc_id, rev.real_id) == (addr_bytes(V6), htons(80), sid, rid)
    # the next hop toward the client, kept for the next replies: via the gateway on lb0
    assert (rev.ifindex, bytes(rev.dmac), bytes(rev.smac)) == (
        bench.ifindex, bytes.fromhex(GW_MAC.replace(":", "")), bytes.fromhex(LB_MAC.replace(":", "")))
    assert rev.hop_stamp and rev.mtu == 1500
    conn = bench.dp.m["conns"][conn_key(s)]
    assert conn.real_id == rid
    out = bench.dp.counters("svc_out_stats", sid)
    assert (out.packets, out.bytes) == (3, 3 * len(rep))
    out = bench.dp.counters("real_out_stats", rid)
    assert (out.packets, out.bytes) == (3, 3 * len(rep))


def test_sweep_removes_reverse_entries_with_their_connections(bench):
    """The sweep keeps a live connection's reverse entry and deletes it once the connection entry expires (or is
    gone): a reply then passes untouched."""
    from xlb.dataplane.mapkeys import NS, now_ns
    bench.reset(CFG)
    a, b = tcp4(sport=41000), udp4(sport=41001)
    bench.run(a)
    bench.run(b)
    del bench.dp.m["conns"][conn_key(b)]          # as the LRU would evict it
    born = now_ns()
    while now_ns() == born:  # entries written in the sweep's own clock tick are spared: let the tick pass
        time.sleep(0.001)
    res = bench.dp.sweep()
    assert (res.nat_seen, res.nat_expired) == (2, 1)
    assert len(bench.dp.m["nat_revs"]) == 1
    res = bench.dp.sweep(now=now_ns() + 10**6 * NS)  # everything expired
    assert (res.nat_seen, res.nat_expired) == (1, 1) and len(bench.dp.m["nat_revs"]) == 0
    rep = reply(a, R4, 8080)
    assert bench.run(rep, bench.ifindex1) == (PASS, bytes(rep))


def test_listing_and_metrics_show_nat_replies(bench):
    """OutPkts/OutBytes: the `list` snapshot (ipvsadm --stats) and the metrics count the replies of a NAT service
    and its real; the real is listed with its own port."""
    from xlb.observe.metrics import XlbCollector
    from xlb.ops.listings import listing
    bench.reset(CFG)
    s = udp4()
    bench.run(s)
    rep = reply(s, R4, 5353)
    bench.run(rep, bench.ifindex1)
    bench.run(rep, bench.ifindex1)
    svc = next(x for x in listing(bench.dp)["services"] if x["name"] == f"udp/{V4}:53")
    assert svc["method"] == "nat"
    assert (svc["stats"]["inpkts"], svc["stats"]["outpkts"], svc["stats"]["outbytes"]) == (1, 2, 2 * len(rep))
    assert [(r["port"], r["stats"]["outpkts"]) for r in svc["reals"]] == [(5353, 2)]
    text = XlbCollector(bench.dp).exposition().decode()
    assert f'xlb_service_out_packets_total{{service="udp/{V4}:53"}} 2\n' in text
    assert f'xlb_real_out_bytes_total{{real="{R4}",service="udp/{V4}:53"}} {2 * len(rep)}\n' in text


def test_reply_to_an_unresolved_next_hop_goes_to_the_kernel_rewritten(bench):
    """A reply whose next hop toward the client has no neighbour entry (nothing but the kernel's own traffic
    resolves it) is rewritten to VIP:port, its TTL left to the kernel, and passed: the kernel forwards it and
    resolves the neighbour. (The client 198.18.0.77 is on lb0's link and has no neighbour entry.)"""
    bench.reset(CFG)
    s = tcp4(src="198.18.0.77")
    rep = reply(s, R4, 8080)
    out = rewritten(rep, "src", V4, 80, rep[Ether].src, rep[Ether].dst)
    out = Ether(out)
    out[IP].ttl += 1  # not decremented: the kernel's hop
    del out[IP].chksum
    run(bench, [(s, None, REDIRECT, nat_in(s, R4, 8080, LB1_MAC, REAL_MAC[R4]), "fwd_redirect"),
                (rep, bench.ifindex1, PASS, bytes(out), "pass_reply_neigh")])


# -- ICMP errors about NAT connections (bpf/icmp.h, bpf/nat.h's nat_icmp_rewrite) ---------------------------------------

RT4, RT6 = "192.0.2.1", "2001:db8:ffff::1"    # a router on either side of the balancer


def kinds(v4):
    """Every error kind relayed: port unreachable, frag-needed with its MTU, time exceeded (ICMPv6: Packet Too
    Big). Each a function of the quote, built by scapy (so its checksum is computed afresh)."""
    from scapy.layers.inet import ICMP
    from scapy.layers.inet6 import ICMPv6DestUnreach, ICMPv6PacketTooBig, ICMPv6TimeExceeded
    from scapy.packet import Raw
    if v4:
        return [lambda q: ICMP(type=3, code=3) / Raw(q), lambda q: ICMP(type=3, code=4, nexthopmtu=1400) / Raw(q),
                lambda q: ICMP(type=11, code=0) / Raw(q)]
    return [lambda q: ICMPv6DestUnreach(code=4) / Raw(q), lambda q: ICMPv6PacketTooBig(mtu=1280) / Raw(q),
            lambda q: ICMPv6TimeExceeded(code=0) / Raw(q)]


def icmp_err(mac_to, mac_from, src, dst, kind, q, ttl=64):
    l3 = IP(src=src, dst=dst, id=3, ttl=ttl) if ":" not in src else IPv6(src=src, dst=dst, hlim=ttl)
    return Ether(dst=mac_to, src=mac_from) / l3 / kind(q)


NAT_FLOWS = {"tcp4": (tcp4, V4, 80, R4, 8080), "udp4": (udp4, V4, 53, R4, 5353),
             "tcp6": (tcp6, V6, 80, R6, 8080), "udp6": (udp6, V6, 53, R6, 5353)}


@pytest.mark.parametrize("name", list(NAT_FLOWS))
def test_icmp_errors_about_a_nat_connection_both_ways(bench, name):
    """As IPVS does (ip_vs_nat_icmp), byte for byte, every checksum (outer IPv4, embedded IPv4, ICMP; ICMPv6 with its
    pseudo-header) computed afresh by scapy for the expected frame. From the clients' side (a router toward the
    client, quoting the reply VIP:vport -> client): the outer destination and the quoted source become the real's
    address and port, one hop less, to the real. From the reals' side (the real's own error and a router's between
    it and the balancer, quoting client -> real:rport): the outer source and the quoted destination become
    VIP:vport, one hop less, toward the client."""
    mk, vip, vport, real, rport = NAT_FLOWS[name]
    v4 = IP in mk()
    rt = RT4 if v4 else RT6
    client = C4 if v4 else C6
    bench.reset(CFG)
    first = mk(flags="S") if "tcp" in name else mk()
    rep = reply(first, real, rport)
    steps = [(first, None, REDIRECT, nat_in(first, real, rport, LB1_MAC, REAL_MAC[real]), "fwd_redirect")]
    q_in = quote(nat_out(rep, vip, vport))                  # the reply as the client's side saw it
    q_out = quote((nat_in(first, real, rport, LB1_MAC, REAL_MAC[real])))  # the client's packet as the real got it
    for kind in kinds(v4):
        e = icmp_err(LB_MAC, GW_MAC, rt, vip, kind, q_in)
        want = icmp_err(REAL_MAC[real], LB1_MAC, rt, real, kind, requoted(q_in, "src", real, rport), ttl=63)
        steps.append((e, None, REDIRECT, bytes(want), "fwd_icmp_error"))
        for src in (real, rt):
            e = icmp_err(LB1_MAC, REAL_MAC[real], src, client, kind, q_out)
            want = icmp_err(GW_MAC, LB_MAC, vip, client, kind, requoted(q_out, "dst", vip, vport), ttl=63)
            steps.append((e, bench.ifindex1, REDIRECT, bytes(want), "fwd_icmp_nat_out"))
    run(bench, steps)


def test_icmp_errors_not_about_a_nat_connection_pass_and_ttl_one_drops(bench):
    """An error from the reals' side quoting no NAT connection (another port, before the connection) passes
    untouched, as does one quoting a truncated header (not ours to judge: to no VIP); an error whose TTL would
    reach 0 in xlb's hop is dropped, both ways."""
    bench.reset(CFG)
    s = tcp4()
    got = Ether(nat_in(s, R4, 8080, LB1_MAC, REAL_MAC[R4]))
    unreach = kinds(True)[0]
    out = icmp_err(LB1_MAC, REAL_MAC[R4], R4, C4, unreach, quote(got))
    wrong = icmp_err(LB1_MAC, REAL_MAC[R4], R4, C4, unreach, requoted(quote(got), "dst", R4, 8081))
    short = icmp_err(LB1_MAC, REAL_MAC[R4], R4, C4, unreach, quote(got)[:22])
    low_out = icmp_err(LB1_MAC, REAL_MAC[R4], R4, C4, unreach, quote(got), ttl=1)
    low_in = icmp_err(LB_MAC, GW_MAC, RT4, V4, unreach, quote(nat_out(reply(s, R4, 8080), V4, 80)), ttl=1)
    run(bench, [
        (out, bench.ifindex1, PASS, None, "pass_other_proto"),   # no connection yet
        (s, None, REDIRECT, bytes(got), "fwd_redirect"),
        (wrong, bench.ifindex1, PASS, None, "pass_other_proto"),
        (short, bench.ifindex1, PASS, None, "pass_other_proto"),
        (low_out, bench.ifindex1, DROP, bytes(low_out), "drop_ttl"),
        (low_in, None, DROP, bytes(low_in), "drop_ttl"),
    ])


def test_icmp_errors_about_a_port_zero_nat_connection_on_the_ingress_side(bench):
    """A port-zero NAT service (the real gets the client's port) with its real on the ingress interface: the error
    to the VIP goes to the real with the quoted port as it was, the real's error goes back from VIP:port; both out
    of the interface they came in on (XDP_TX)."""
    bench.reset(CFG)
    vip, real = "198.51.100.13", L4
    z = tcp4(dst=vip, dport=4433)
    got = nat_in(z, real, None, LB_MAC, REAL_MAC[real])
    unreach, toobig, _ = kinds(True)
    q_in = quote(nat_out(reply(z, real, 4433, mac_to=LB_MAC), vip, 4433))
    e_in = icmp_err(LB_MAC, GW_MAC, RT4, vip, toobig, q_in)
    e_out = icmp_err(LB_MAC, REAL_MAC[real], real, C4, unreach, quote(got))
    run(bench, [
        (z, None, TX, got, "fwd_tx"),
        (e_in, None, TX, bytes(icmp_err(REAL_MAC[real], LB_MAC, RT4, real, toobig,
                                        requoted(q_in, "src", real, 4433), ttl=63)), "fwd_icmp_error"),
        (e_out, None, TX, bytes(icmp_err(GW_MAC, LB_MAC, vip, C4, unreach, requoted(quote(got), "dst", vip, 4433),
                                         ttl=63)), "fwd_icmp_nat_out"),
    ])
