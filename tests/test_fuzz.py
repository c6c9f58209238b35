"""Hostile packets (issue 18): the fuzzer of tests/fuzz.py in a quick profile. Every generated frame goes through
the loaded program (BPF_PROG_TEST_RUN) and is checked: to no service, unchanged with XDP_PASS; forwarded only to a
real of its service; every verdict counted under a named reason; never XDP_ABORTED. `make fuzz` runs the million.
"""
import os

import pytest
from hypothesis import given, settings, strategies as st

import fuzz

QUICK = int(os.environ.get("XLB_FUZZ_COUNT", "30000"))


def test_fuzz_quick_profile(bench):
    stats, rate = fuzz.fuzz(bench, QUICK, seed=18)
    kernel_ns = stats.pop("_kernel_ns")
    print(f"fuzz: {QUICK} frames, {rate:.0f} frames/s, {kernel_ns / QUICK:.0f} ns each in the program: {stats}")
    # The generator reaches every path it is meant to: forwarding both ways, the VLAN and no-service passes,
    # fragments, and each kind of malformed header to a VIP.
    for reason in ("fwd_tx", "fwd_redirect", "pass_vlan", "pass_no_service", "pass_not_ip", "pass_other_proto",
                   "pass_fragment", "drop_frag_no_first", "icmp_echo_reply", "drop_icmp_mtu", "drop_icmp_trunc",
                   "drop_trunc_ip", "drop_bad_ip", "drop_trunc_l4", "drop_bad_tcp",
                   "drop_ipv6_ext", "drop_rst_no_conn"):
        assert stats.get(reason), (reason, stats)


def test_fuzz_hypothesis(bench):
    """Frames from hypothesis-driven randomness through the same rules (a failure shrinks to a small draw)."""
    bench.reset(fuzz.CONFIG)

    @settings(max_examples=300, deadline=None, database=None)
    @given(st.randoms(use_true_random=False))
    def frames_hold_the_rules(rnd):
        fuzz.run_batch(bench, [fuzz.frame(rnd) for _ in range(8)])

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
