"""The VIP filter (bpf/classify.h may_be_vip, xlb/tables/vipfilter.py): the map holds exactly the bits the config needs,
every VIP and mark prefix gets through it (so the Python hashes are the data plane's), and a packet for anything
else passes before the connection table is read."""
import ctypes as ct
import ipaddress

import pytest

from scapy.layers.inet6 import IPv6

from harness import conn_key, real_of, tcp4, tcp6, to_real
from xlb.tables import marks as markmod
from xlb.dataplane import structs as S
from xlb.tables import vipfilter as vf
from xlb.config.model import addr_bytes
from xlb.dataplane.apply import DataPlane
from xlb.dataplane.mapkeys import now_ns

TX, PASS = "XDP_TX", "XDP_PASS"
REALS = '  [[service.real]]\n  address = "198.18.0.11"\n'
REALS6 = '  [[service.real]]\n  address = "2001:db8::11"\n'


def vip_svc(vip, port=80, reals=REALS):
    return f'[[service]]\nvip = "{vip}"\nport = {port}\nproto = "tcp"\nscheduler = "rr"\n{reals}'


def mark(n, dst, reals=REALS, family="ipv4"):
    return (f'[[mark]]\nmark = {n}\nproto = "tcp"\ndst = "{dst}"\n'
            f'[[service]]\nfwmark = {n}\nfamily = "{family}"\nscheduler = "rr"\n{reals}')


CONFIG = (vip_svc("198.51.100.10") + vip_svc("2001:db8:100::10", reals=REALS6)
          + mark(1, "192.0.2.64/28") + mark(2, "198.19.0.0/20") + mark(3, "198.51.100.128/25")
          + mark(4, "2001:db8:200::/64", REALS6, "ipv6") + mark(5, "2001:db8:300::/56", REALS6, "ipv6")
          + mark(6, "2001:db8:400::ff00/120", REALS6, "ipv6"))
INSIDE = ["198.51.100.10", "192.0.2.64", "192.0.2.79", "198.19.0.1", "198.19.15.254", "198.51.100.200",
          "2001:db8:100::10", "2001:db8:200::1", "2001:db8:200::ffff:1", "2001:db8:300:ff::1", "2001:db8:400::ffff"]
OUTSIDE = ["198.51.100.11", "192.0.2.80", "198.19.16.1", "198.18.200.1", "2001:db8:100::11", "2001:db8:201::1",
           "2001:db8:301::1", "2001:db8:400::fe00"]


def flags(bench):
    return bench.dp.m["settings"][ct.c_uint32(0)].flags


def map_words(bench):
    m = bench.dp.m["vip_filter"]
    return [m[ct.c_uint32(i)].value for i in range(m.max_entries)]


def syn(dst):
    return tcp6(dst=dst, src="2001:db8:77::7") if ":" in dst else tcp4(dst=dst)


def test_map_holds_exactly_the_configs_bits(bench):
    bench.reset(CONFIG)
    assert flags(bench) & S.SET_F_VIP_FILTER
    want = vf.bits(markmod.vip_prefixes(bench.dp.config))
    assert map_words(bench) == vf.words(want)
    # 2 VIPs + 16 addresses (/28) + 16 networks (/20) + 128 addresses (/25) + 1 (/64) + 256 (/56) + 256 (/120)
    assert len(want) <= 2 + 16 + 16 + 128 + 1 + 256 + 256
    assert len(want) > 600                      # a few collisions at most in 65536 bits


@pytest.mark.parametrize("dst", INSIDE)
def test_every_vip_and_mark_address_gets_through(bench, dst):
    bench.reset(CONFIG)
    action, out = bench.run(syn(dst))
    assert action == TX, (dst, bench.verdicts())
    assert real_of(out) in ("198.18.0.11", "2001:db8::11")


def _stale_conn(bench, ack):
    """A connection entry for ack's flow (to no VIP) on a live real: only a connection-table read can follow it."""
    v6 = IPv6 in ack
    svc, addr = bench.dp.config.services[1 if v6 else 0], "2001:db8::11" if v6 else "198.18.0.11"
    real = bench.dp.real_ids.get((svc.key, ipaddress.ip_address(addr), 0))
    r = bench.dp.m["reals"][ct.c_uint32(real)]
    c = bench.dp.m["conns"].Leaf()
    c.real_id, c.real_gen, c.svc_id, c.state, c.seen_ns = real, r.gen, r.svc_id, S.CONN_STATE["est"], now_ns()
    bench.dp.m["conns"][conn_key(ack)] = c
    return addr


@pytest.mark.parametrize("dst", OUTSIDE)
def test_others_pass_before_the_connection_table(bench, dst):
    bench.reset(CONFIG)
    b, a = vf.bits(markmod.vip_prefixes(bench.dp.config)), ipaddress.ip_address(dst)
    assert not {vf.full_bit(addr_bytes(a)), vf.net_bit(addr_bytes(a), a.version)} & b  # no collision in the data
    ack = tcp6(dst=dst, src="2001:db8:77::7", flags="A") if a.version == 6 else tcp4(dst=dst, flags="A")
    _stale_conn(bench, ack)
    assert bench.run(ack) == (PASS, bytes(ack))
    assert bench.verdicts() == {"pass_no_service": 1}


def test_a_prefix_too_large_turns_the_filter_off(bench):
    dst = "198.51.100.11"
    bench.reset(CONFIG + mark(7, "10.0.0.0/8"))
    assert not flags(bench) & S.SET_F_VIP_FILTER
    ack = tcp4(dst=dst, flags="A")
    _stale_conn(bench, ack)
    assert bench.run(ack) == (TX, to_real(ack, "198.18.0.11"))   # followed the connection entry: no filter
    bench.dp.apply(bench.config(CONFIG))
    assert flags(bench) & S.SET_F_VIP_FILTER
    assert bench.run(ack) == (PASS, bytes(ack))


def test_removed_vip_loses_its_bit(bench):
    bench.reset(CONFIG)
    bench.dp.apply(bench.config(vip_svc("198.51.100.10")))
    assert map_words(bench) == vf.words({vf.full_bit(addr_bytes(ipaddress.ip_address("198.51.100.10")))})
    assert bench.run(tcp4(dst="192.0.2.64"))[0] == PASS


@pytest.mark.parametrize("prefix, count", [
    ("198.51.100.7/32", 1), ("198.51.100.0/25", 128), ("198.51.100.0/24", 1), ("198.18.0.0/20", 16),
    ("10.0.0.0/12", 4096), ("10.0.0.0/11", None), ("2001:db8::/128", 1), ("2001:db8::/121", 128),
    ("2001:db8::/120", 256), ("2001:db8::/119", 1), ("2001:db8::/64", 1), ("2001:db8::/56", 256), ("2001:db8::/52", 4096),
    ("2001:db8::/51", None)])
def test_prefix_bits(prefix, count):
    got = vf.prefix_bits(ipaddress.ip_network(prefix))
    if count is None:
        assert got is None
    else:
        assert 0.96 * count <= len(got) <= count   # a few hash collisions


FWM1 = f'[[service]]\nfwmark = 1\nscheduler = "rr"\n{REALS}'


def fwm1_at(dst):
    return f'[[mark]]\nmark = 1\nproto = "tcp"\ndst = "{dst}"\n{FWM1}'


def test_a_moved_mark_prefix_keeps_its_established_flows(bench):
    """A reload moves fwmark 1's rule to another prefix; the service stays, so its established flows to the old
    prefix keep their real, as the full path (connection table first) decides: the filter must not pass them."""
    bench.reset(fwm1_at("192.0.2.64/28"))
    assert bench.run(tcp4(dst="192.0.2.70", flags="S"))[0] == TX
    bench.dp.apply(bench.config(fwm1_at("198.51.100.128/25")))
    assert flags(bench) & S.SET_F_VIP_FILTER
    ack = tcp4(dst="192.0.2.70", flags="A")
    assert bench.run(ack) == (TX, to_real(ack, "198.18.0.11"))
    assert bench.run(tcp4(dst="192.0.2.70", sport=40001))[0] == PASS     # new flows: no rule marks them now
    # The service goes: so do its flows, and the filter forgets the prefix.
    bench.dp.apply(bench.config(vip_svc("198.51.100.10")))
    assert map_words(bench) == vf.words({vf.full_bit(addr_bytes(ipaddress.ip_address("198.51.100.10")))})
    assert bench.run(ack) == (PASS, bytes(ack))


def test_a_restarted_daemon_keeps_the_prefixes_it_adopts(bench):
    bench.reset(fwm1_at("192.0.2.64/28"))
    assert bench.run(tcp4(dst="192.0.2.70", flags="S"))[0] == TX
    again = DataPlane(bench.prog, bench.dp.tables)
    again.adopt()
    again.apply(bench.config(fwm1_at("198.51.100.128/25")))
    bench.dp = again
    ack = tcp4(dst="192.0.2.70", flags="A")
    assert bench.run(ack) == (TX, to_real(ack, "198.18.0.11"))
