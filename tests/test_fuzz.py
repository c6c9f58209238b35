"""Hostile packets (issue 18): the fuzzer of tests/fuzz.py in a quick profile. Every generated frame goes through
the loaded program (BPF_PROG_TEST_RUN) and is checked: to no service, unchanged with XDP_PASS; forwarded only to a
real of its service (never a health-failed one) as its method says (DR untouched, NAT rewritten with checksums
updated, TUN wrapped whole); a NAT reply rewritten back; ICMP errors and fragments to their connection's real
(a NAT connection's ICMP errors rewritten as IPVS does, both ways);
every verdict counted under a named reason; never XDP_ABORTED. `make fuzz` runs the million (docs/reliability.md).
"""
import os

import pytest
from hypothesis import given, settings, strategies as st

import fuzz

QUICK = int(os.environ.get("XLB_FUZZ_COUNT", "30000"))


def test_fuzz_quick_profile(bench):
    stats, rate = fuzz.fuzz(bench, QUICK, seed=18)
    kernel_ns, sent, synced = stats.pop("_kernel_ns"), stats.pop("_frames"), stats.pop("_sync_records")
    stats.pop("_lost_entry")
    print(f"fuzz: {sent} frames, {rate:.0f} frames/s, {kernel_ns / sent:.0f} ns each in the program: {stats}")
    # The generator reaches every path it is meant to: forwarding both ways, the VLAN and no-service passes,
    # fragments, and each kind of malformed header to a VIP.
    for reason in ("fwd_tx", "fwd_redirect", "pass_vlan", "pass_no_service", "pass_not_ip", "pass_other_proto",
                   "pass_fragment", "drop_frag_no_first", "icmp_echo_reply", "drop_icmp_mtu", "drop_icmp_trunc",
                   "drop_trunc_ip", "drop_bad_ip", "drop_trunc_l4", "drop_bad_tcp",
                   "drop_ipv6_ext", "drop_rst_no_conn",
                   # NAT both ways (the replies and the reals' side's ICMP errors are checked rewritten), tunnels
                   # and their too-big answers (DF or not; drop_tun_too_big needs a link MTU the bench has not), SIP
                   "fwd_reply_tx", "fwd_reply_redirect", "fwd_icmp_nat_out", "drop_ttl", "tun_ptb", "tun_ptb_no_df",
                   "drop_too_big", "drop_sip_no_callid",
                   # ICMP errors and later fragments that follow a connection to its real
                   "fwd_icmp_error", "fwd_fragment"):
        assert stats.get(reason), (reason, stats)
    assert synced > 0  # state sync's export ran for the new connections


def test_fuzz_hypothesis(bench):
    """Frames from hypothesis-driven randomness through the same rules (a failure shrinks to a small draw)."""
    fuzz.apply(bench)

    @settings(max_examples=300, deadline=None, database=None)
    @given(st.randoms(use_true_random=False))
    def frames_hold_the_rules(rnd):
        fuzz.run_batch(bench, [fuzz.frame(rnd) for _ in range(8)], rnd=rnd)

    frames_hold_the_rules()


def _tcp4(dst, dport):
    import struct
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 1, 0, 64, 6, 0, bytes([203, 0, 113, 7]),
                     bytes(int(x) for x in dst.split(".")))
    return fuzz.LB + bytes.fromhex("0200000000aa0800") + ip + struct.pack("!HHIIBBHHH", 40000, dport, 1, 0, 0x50, 2,
                                                                         8192, 0, 0)


def test_rules_are_not_vacuous():
    """The checker refuses what it must: a modified pass, a touched frame to no service, a wrong real, ABORTED."""
    to_svc, other = _tcp4("198.51.100.10", 80), _tcp4("192.0.2.1", 80)
    real_mac = {r: fuzz.MAC[fuzz.REAL_MAC[r]] for r in ("198.18.0.11", "198.18.0.13")}
    fuzz.check(to_svc, "XDP_TX", real_mac["198.18.0.11"] + fuzz.LB + to_svc[12:])
    fuzz.check(other, "XDP_PASS", other)
    bad = [(to_svc, "XDP_TX", real_mac["198.18.0.13"] + fuzz.LB + to_svc[12:]),   # not a real of tcp/80
           (to_svc, "XDP_PASS", to_svc[:-1] + b"\x01"),
           (other, "XDP_DROP", other),
           (other, "XDP_TX", real_mac["198.18.0.11"] + fuzz.LB + other[12:]),
           (to_svc, "XDP_ABORTED", to_svc)]
    echo = fuzz.LB + bytes.fromhex("0200000000aa0800") + bytes.fromhex(
        "4500001c00010000400100f7cb007107c633640a") + bytes.fromhex("0800f7ff00000000")
    reply = bytes.fromhex("0200000000aa") + fuzz.LB + bytes.fromhex("0800") + bytes.fromhex(
        "4500001c00010000400100f7c633640acb007107") + bytes.fromhex(
        "0000ffff00000000")
    fuzz.check(echo, "XDP_TX", reply)
    bad += [(echo, "XDP_TX", echo),                                          # sent back unchanged
            (echo, "XDP_TX", reply[:-1] + b"\x01"),                          # the message changed
            (echo, "XDP_TX", reply[:26] + reply[30:34] + reply[26:30] + reply[34:])]  # addresses not swapped
    for data, action, out in bad:
        with pytest.raises(fuzz.Violation):
            fuzz.check(data, action, out)


def _mac(addr):
    return fuzz.REAL_MAC[addr]


def test_rules_of_nat_tunnels_and_failed_reals_are_not_vacuous():
    """NAT: to the real's address and mapped port, one hop less, checksums updated, and the reply back from VIP:port
    to the gateway; TUN: the original packet whole inside an outer header to a real of the service; a failed real
    never."""
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.l2 import Ether
    from harness import CLIENT_MAC, GW_MAC, LB_MAC

    def b(p):
        return bytes(p)
    syn = Ether(dst=LB_MAC, src=CLIENT_MAC) / IP(src="203.0.113.7", dst="198.51.100.50", id=1) / TCP(
        sport=40000, dport=80, flags="S")
    nat = Ether(dst=_mac("198.18.0.11"), src=LB_MAC) / IP(src="203.0.113.7", dst="198.18.0.11", id=1, ttl=63) / TCP(
        sport=40000, dport=8080, flags="S")
    flow = fuzz.check(b(syn), "XDP_TX", b(nat))
    assert (str(flow["real"]), flow["rport"], flow["cport"], flow["vport"]) == ("198.18.0.11", 8080, 40000, 80)
    stale = b(nat)[:50] + b(syn)[50:52] + b(nat)[52:]   # the TCP checksum as it came
    bad = [(syn, "XDP_TX", Ether(dst=_mac("198.18.0.11"), src=LB_MAC) / IP(
               src="203.0.113.7", dst="198.18.0.11", id=1, ttl=63) / TCP(sport=40000, dport=80, flags="S")),  # port
           (syn, "XDP_TX", stale),
           (syn, "XDP_TX", Ether(dst=_mac("198.18.0.11"), src=LB_MAC) / IP(
               src="203.0.113.7", dst="198.18.0.11", id=1) / TCP(sport=40000, dport=8080, flags="S")),  # TTL kept
           (syn, "XDP_TX", Ether(dst=_mac("198.18.0.13"), src=LB_MAC) / IP(
               src="203.0.113.7", dst="198.18.0.13", id=1, ttl=63) / TCP(sport=40000, dport=80, flags="S"))]
    rep = Ether(dst=LB_MAC, src=_mac("198.18.0.11")) / IP(src="198.18.0.11", dst="203.0.113.7", id=7) / TCP(
        sport=8080, dport=40000, flags="SA")
    back = Ether(dst=GW_MAC, src=LB_MAC) / IP(src="198.51.100.50", dst="203.0.113.7", id=7, ttl=63) / TCP(
        sport=80, dport=40000, flags="SA")
    fuzz.check(b(rep), "XDP_TX", b(back), ("reply", flow))
    replies = [(rep, "XDP_PASS", rep), (rep, "XDP_DROP", rep),                              # not rewritten
               (rep, "XDP_TX", Ether(dst=GW_MAC, src=LB_MAC) / IP(src="198.51.100.50", dst="203.0.113.7", id=7,
                                                                 ttl=63) / TCP(sport=8080, dport=40000, flags="SA"))]
    tun_in = Ether(dst=LB_MAC, src=CLIENT_MAC) / IP(src="203.0.113.7", dst="198.51.100.60", id=1) / TCP(
        sport=40000, dport=80, flags="S")
    tun = Ether(dst=_mac("198.18.0.12"), src=LB_MAC) / IP(src="198.18.0.2", dst="198.18.0.12", proto=4) / tun_in[IP]
    fuzz.check(b(tun_in), "XDP_TX", b(tun))
    changed = tun_in[IP].copy()
    changed.ttl = 63
    bad += [(tun_in, "XDP_TX", Ether(dst=_mac("198.18.0.12"), src=LB_MAC) / IP(
                src="198.18.0.2", dst="198.18.0.12", proto=4) / changed),                      # the inner changed
            (tun_in, "XDP_TX", Ether(dst=_mac("198.18.0.13"), src=LB_MAC) / IP(
                src="198.18.0.2", dst="198.18.0.13", proto=4) / tun_in[IP]),                 # not a real of it
            (tun_in, "XDP_TX", b(tun)[:16] + b"\xff\xff" + b(tun)[18:]),                    # outer length wrong
            (tun_in, "XDP_TX", Ether(dst=_mac("198.18.0.12"), src=LB_MAC) / tun_in[IP])]      # not wrapped
    dns = Ether(dst=LB_MAC, src=CLIENT_MAC) / IP(src="203.0.113.7", dst="198.51.100.90") / UDP(sport=5, dport=53)
    fuzz.check(b(dns), "XDP_TX", fuzz.MAC[_mac("198.18.0.13")] + fuzz.LB + b(dns)[12:])
    bad.append((dns, "XDP_TX", fuzz.MAC[_mac("198.18.0.12")] + fuzz.LB + b(dns)[12:]))    # the failed real
    for data, action, out in bad:
        with pytest.raises(fuzz.Violation):
            fuzz.check(b(data), action, b(out))
    for data, action, out in replies:
        with pytest.raises(fuzz.Violation):
            fuzz.check(b(data), action, b(out), ("reply", flow))
    # A frame that belongs to a connection goes to the connection's real, not merely to a real of its service.
    dr_flow = fuzz.check(b(tun_in), "XDP_TX", b(tun))
    other = Ether(dst=_mac("198.18.0.11"), src=LB_MAC) / IP(src="198.18.0.2", dst="198.18.0.11", proto=4) / tun_in[IP]
    fuzz.check(b(tun_in), "XDP_TX", b(other))
    with pytest.raises(fuzz.Violation):
        fuzz.check(b(tun_in), "XDP_TX", b(other), ("same", dr_flow))


def test_a_lost_entry_excuses_only_a_connection_the_table_no_longer_holds(bench):
    """The one tolerance of the follow rules (fuzz.lost_entry): a passed ICMP error about a connection is excused
    only while the connection's entry is absent from conns; one from a NAT real's side, from nat_revs."""
    from scapy.layers.inet import ICMP, IP, UDP
    from scapy.layers.l2 import Ether
    from harness import CLIENT_MAC, GW_MAC, LB_MAC, conn_key

    fuzz.apply(bench)
    pkt = Ether(dst=LB_MAC, src=CLIENT_MAC) / IP(src="203.0.113.208", dst="198.51.100.10") / UDP(sport=0, dport=53)
    action, out = bench.run(pkt)
    flow = fuzz.check(bytes(pkt), action, out)
    quote = bytes(IP(src="198.51.100.10", dst="203.0.113.208") / UDP(sport=53, dport=0))
    err = bytes(Ether(dst=LB_MAC, src=GW_MAC) / IP(src="198.18.9.9", dst="198.51.100.10") / ICMP(type=11) / quote)
    assert not fuzz.lost_entry(bench, err, "XDP_PASS", err, ("same", flow))
    del bench.dp.m["conns"][conn_key(pkt)]
    assert fuzz.lost_entry(bench, err, "XDP_PASS", err, ("same", flow))
    assert not fuzz.lost_entry(bench, err, "XDP_DROP", err, ("same", flow))
    # An ICMP error from a NAT real's side: excused only while the connection's nat_revs entry is gone.
    syn = Ether(dst=LB_MAC, src=CLIENT_MAC) / IP(src="203.0.113.208", dst="198.51.100.50") / UDP(sport=7, dport=53)
    action, out = bench.run(syn)
    nat = fuzz.check(bytes(syn), action, out)
    rep = IP(src=str(nat["real"]), dst="203.0.113.208") / UDP(sport=nat["rport"], dport=7)
    err = bytes(Ether(dst=LB_MAC, src=fuzz.REAL_MAC[str(nat["real"])]) / IP(src=str(nat["real"]), dst="203.0.113.208")
                / ICMP(type=3, code=3) / bytes(IP(src="203.0.113.208", dst=str(nat["real"])) / UDP(
                    sport=7, dport=nat["rport"])))
    assert not fuzz.lost_entry(bench, err, "XDP_PASS", err, ("icmp_out", nat))
    del bench.dp.m["nat_revs"][conn_key(Ether() / rep)]
    assert fuzz.lost_entry(bench, err, "XDP_PASS", err, ("icmp_out", nat))
    assert not fuzz.lost_entry(bench, err, "XDP_PASS", err, ("same", nat))  # its conns entry is there


def test_rules_of_nat_icmp_errors_and_the_no_df_too_big_are_not_vacuous():
    """An ICMP error about a NAT connection, as IPVS rewrites it (scapy's frames, every checksum afresh): from the
    clients' side to the connection's real, the outer destination and the quoted source its address and port; from
    the reals' side toward the client, the outer source and the quoted destination VIP:vport; one hop less, nothing
    else changed. The frag-needed for an IPv4 packet without DF too big for its tunnel quotes the packet's first 68
    bytes with an MTU below its length. Each rule refuses a wrong answer."""
    from scapy.layers.inet import ICMP, IP, TCP
    from scapy.layers.inet6 import ICMPv6DestUnreach, IPv6
    from scapy.layers.l2 import Ether
    from harness import CLIENT_MAC, GW_MAC, LB_MAC
    import fuzz_rules
    from natframes import quote, requoted

    def b(p):
        return p if isinstance(p, bytes) else bytes(p)

    def patch(frame, off, new):
        frame = b(frame)
        return frame[:off] + new + frame[off + len(new):]

    rt4, rt6, c4, c6 = "198.18.9.9", "2001:db8:9::9", "203.0.113.7", "2001:db8:77::7"
    bad, out_bad = [], []
    for v4, vip, real, rport in ((True, "198.51.100.50", "198.18.0.11", 8080),
                                 (False, "2001:db8:100::50", "2001:db8::12", 8080)):
        client, rt = (c4, rt4) if v4 else (c6, rt6)
        L3 = IP if v4 else IPv6

        def err(mac_to, mac_from, src, dst, q, ttl=64):
            l3 = IP(src=src, dst=dst, id=3, ttl=ttl) if v4 else IPv6(src=src, dst=dst, hlim=ttl)
            return Ether(dst=mac_to, src=mac_from) / l3 / (ICMP(type=3, code=3) if v4 else ICMPv6DestUnreach()) / q
        rmac = _mac(real)
        syn = Ether(dst=LB_MAC, src=CLIENT_MAC) / L3(src=client, dst=vip) / TCP(sport=40000, dport=80, flags="S")
        got = Ether(dst=rmac, src=LB_MAC) / L3(src=client, dst=real) / TCP(sport=40000, dport=rport, flags="S")
        if v4:
            got[IP].ttl, got[IP].id = 63, syn[IP].id
        else:
            got[IPv6].hlim = 63
        flow = fuzz.check(b(syn), "XDP_TX", b(got))
        rep_q = quote(L3(src=vip, dst=client) / TCP(sport=80, dport=40000, flags="SA", chksum=0x1234), n=20)
        e_in = err(LB_MAC, GW_MAC, rt, vip, rep_q)
        want = err(rmac, LB_MAC, rt, real, requoted(rep_q, "src", real, rport), ttl=63)
        fuzz.check(b(e_in), "XDP_TX", b(want))
        fuzz.check(b(e_in), "XDP_TX", b(want), ("same", flow))
        icmp = 34 if v4 else 54
        q = icmp + 8
        bad += [(e_in, "XDP_PASS", e_in, ("same", flow)),                                     # passed
                (e_in, "XDP_TX", patch(want, icmp + 2, b(e_in)[icmp + 2:icmp + 4]), None),       # ICMP checksum stale
                (e_in, "XDP_TX", err(rmac, LB_MAC, rt, real, requoted(rep_q, "src", real, 80), ttl=63), None),  # port
                (e_in, "XDP_TX", err(rmac, LB_MAC, rt, real, rep_q, ttl=63), None),            # quote unchanged
                (e_in, "XDP_TX", err(rmac, LB_MAC, rt, real, requoted(rep_q, "src", real, rport)), None),  # TTL
                (e_in, "XDP_TX", err(rmac, LB_MAC, rt, "198.18.0.12" if v4 else "2001:db8:1::11",
                                     requoted(rep_q, "src", real, rport), ttl=63), None),       # another address
                (e_in, "XDP_TX", err(rmac, LB_MAC, rt, real, patch(requoted(rep_q, "src", real, rport), 36 if v4
                                                                   else 56, b"\x43\x21"), ttl=63), None)]  # its TCP sum
        if v4:  # the quoted IPv4 header's checksum as it came (the ICMP checksum right for it)
            bad.append((e_in, "XDP_TX", err(rmac, LB_MAC, rt, real, patch(requoted(rep_q, "src", real, rport), 10,
                                                                          rep_q[10:12]), ttl=63), None))
        # the reals' side: the real's error about the client's packet as the real got it, back toward the client
        e_out = err(LB_MAC, rmac, real, client, quote(got))
        back = err(GW_MAC, LB_MAC, vip, client, requoted(quote(got), "dst", vip, 80), ttl=63)
        fuzz.check(b(e_out), "XDP_TX", b(back), ("icmp_out", flow))
        last = err(LB_MAC, rmac, real, client, quote(got), ttl=1)   # no hop left: dropped (drop_ttl)
        fuzz.check(b(last), "XDP_DROP", b(last), ("icmp_out", flow))
        out_bad += [(e_out, "XDP_PASS", e_out, flow),                                            # passed as it came
                    (e_out, "XDP_TX", patch(back, icmp + 2, b(e_out)[icmp + 2:icmp + 4]), flow),  # checksum stale
                    (e_out, "XDP_TX", err(GW_MAC, LB_MAC, vip, client, requoted(quote(got), "dst", vip, rport),
                                          ttl=63), flow),                                         # quoted port kept
                    (e_out, "XDP_TX", err(GW_MAC, LB_MAC, real, client, requoted(quote(got), "dst", vip, 80),
                                          ttl=63), flow),                                         # outer source kept
                    (e_out, "XDP_TX", err(rmac, LB_MAC, vip, client, requoted(quote(got), "dst", vip, 80),
                                          ttl=63), flow),                                         # to the real
                    (last, "XDP_TX", err(GW_MAC, LB_MAC, vip, client, requoted(quote(got), "dst", vip, 80),
                                         ttl=0), flow)]                                           # its last hop
    # IPv4 without DF, too big for the IPIP tunnel (20 bytes more than the 1,500 MTU): frag-needed with MTU 1,480
    big = Ether(dst=LB_MAC, src=CLIENT_MAC) / IP(src=c4, dst="198.51.100.60", flags=0) / TCP(
        sport=40000, dport=80, flags="A") / (b"x" * 1460)
    ptb = Ether(dst=CLIENT_MAC, src=LB_MAC) / IP(src="198.51.100.60", dst=c4, id=0, ttl=64) / ICMP(
        type=3, code=4, nexthopmtu=1480) / b(big[IP])[:68]
    fuzz.check(b(big), "XDP_TX", b(ptb))

    def frag_needed(mtu=1480, q=b(big[IP])[:68]):
        return Ether(dst=CLIENT_MAC, src=LB_MAC) / IP(src="198.51.100.60", dst=c4, id=0, ttl=64) / ICMP(
            type=3, code=4, nexthopmtu=mtu) / q
    bad += [(big, "XDP_TX", patch(ptb, 36, b"\0\0"), None),                                     # ICMP checksum
            (big, "XDP_TX", frag_needed(q=b(big[IP])[:60]), None),                             # quote cut short
            (big, "XDP_TX", frag_needed(q=b(big[IP])[:67] + b"\x01"), None),                   # not the packet's
            (big, "XDP_TX", frag_needed(mtu=1500), None),                                      # MTU not below it
            (big, "XDP_TX", frag_needed(mtu=60), None)]                                        # below the minimum
    assert fuzz_rules.too_big_ok(b(big), b(ptb))
    assert not any(fuzz_rules.too_big_ok(b(big), b(out)) for data, _a, out, _e in bad if data is big)
    for data, action, out, expect in bad:
        with pytest.raises(fuzz.Violation):
            fuzz.check(b(data), action, b(out), expect)
    for data, action, out, flow in out_bad:
        with pytest.raises(fuzz.Violation):
            fuzz.check(b(data), action, b(out), ("icmp_out", flow))
