"""The flow cache (bpf/flowcache.h): established flows skip the connection table for a TTL, and never do anything
the connection table would not. Each test shows the cache in use by a difference only the cache can explain (a
packet forwarded although its connection entry is gone, or a last-seen time left alone), then the way out of it
(a control-plane change, a state change, the TTL)."""
import ctypes as ct
import dataclasses
import time

import pytest

from harness import conn_key, flow_cached, lookup_conn, real_of, tcp4, tcp6, to_real, udp4
from xlb.dataplane import clock
from xlb.dataplane import structs as S
from xlb.dataplane.apply import DataPlane
from xlb.dataplane.mapkeys import NS
from xlb.errors import KernelError

TX = "XDP_TX"
BPF_F_MMAPABLE = 1 << 10  # include/uapi/linux/bpf.h
V4, V6 = "198.51.100.10", "2001:db8:100::10"
REALS = ("198.18.0.11", "198.18.0.12", "198.18.0.13")
CS = S.CONN_STATE


def svc(vip=V4, port=80, proto="tcp", reals=REALS):
    return (f'[[service]]\nvip = "{vip}"\nport = {port}\nproto = "{proto}"\nscheduler = "rr"\n'
            + "".join(f'  [[service.real]]\n  address = "{r}"\n' for r in reals))


def settings(bench):
    return bench.dp.m["settings"][ct.c_uint32(0)]


def set_ttl(bench, jiffies):
    st = settings(bench)
    st.flow_ttl = jiffies
    bench.dp.m["settings"][ct.c_uint32(0)] = st


def establish(bench, flow):
    """SYN then ACK: returns the real the flow went to."""
    real = real_of(bench.run(flow(flags="S"))[1])
    assert bench.run(flow(flags="A")) == (TX, to_real(flow(flags="A"), real))
    return real


def test_ack_fills_the_cache_syn_does_not(bench):
    bench.reset(svc())
    bench.run(tcp4(flags="S"))
    assert lookup_conn(bench.dp, tcp4()).state == CS["syn"]
    assert flow_cached(bench.dp, tcp4()) is None                     # SYN state: every packet reads conns
    bench.run(tcp4(flags="A"))
    c, e = lookup_conn(bench.dp, tcp4()), flow_cached(bench.dp, tcp4())
    assert c.state == CS["est"]
    assert bytes(e.key) == bytes(conn_key(tcp4()))
    assert (e.real_id, e.svc_id) == (c.real_id, c.svc_id)
    assert e.real_gen == bench.dp.m["reals"][ct.c_uint32(c.real_id)].gen
    assert e.gen == settings(bench).gen


def e_real_id(bench):
    return flow_cached(bench.dp, tcp4()).real_id


def test_hit_forwards_without_the_connection_table(bench):
    bench.reset(svc())
    real = establish(bench, tcp4)
    del bench.dp.m["conns"][conn_key(tcp4())]
    ack = tcp4(flags="A", payload=b"data")
    assert bench.run(ack) == (TX, to_real(ack, real))
    assert lookup_conn(bench.dp, tcp4()) is None                     # the hit did not read or write conns
    assert bench.verdicts() == {"fwd_tx": 3}
    c = bench.dp.counters("real_stats", e_real_id(bench))
    assert (c.packets, c.conns) == (3, 1)                            # counted as on the full path
    # A control-plane change voids the entry: the next packet reads conns, finds nothing, and is placed again.
    bench.dp.invalidate_flow_cache()
    assert flow_cached(bench.dp, tcp4()) is None
    bench.run(ack)
    assert lookup_conn(bench.dp, tcp4()).state == CS["est"]          # a mid-stream packet: established


def test_removed_real_is_left_at_once(bench):
    bench.reset(svc(reals=REALS[:2]))
    real = establish(bench, tcp4)
    assert flow_cached(bench.dp, tcp4()) is not None
    other = [r for r in REALS[:2] if r != real]
    bench.dp.apply(bench.config(svc(reals=other)))
    ack = tcp4(flags="A")
    assert bench.run(ack) == (TX, to_real(ack, other[0]))
    assert flow_cached(bench.dp, tcp4()).real_id == lookup_conn(bench.dp, tcp4()).real_id


def test_fin_and_rst_take_the_full_path(bench):
    bench.reset(svc())
    real = establish(bench, tcp4)
    fin = tcp4(flags="FA")
    assert bench.run(fin) == (TX, to_real(fin, real))
    assert lookup_conn(bench.dp, tcp4()).state == CS["fin"]         # conn_touch ran: the cache was bypassed
    # A bare SYN reusing a closing tuple is scheduled afresh (rr: the next real), not sent by the cache.
    nxt = real_of(bench.run(tcp4(flags="S"))[1])
    assert nxt != real


def test_cached_packets_leave_last_seen_until_the_ttl(bench):
    bench.reset(svc())
    establish(bench, tcp4)
    c = lookup_conn(bench.dp, tcp4())
    aged = c.seen_ns - 10 * NS
    c.seen_ns = aged
    bench.dp.m["conns"][conn_key(tcp4())] = c
    bench.run(tcp4(flags="A"))
    assert lookup_conn(bench.dp, tcp4()).seen_ns == aged            # a hit: the entry is not touched
    set_ttl(bench, 1)                                               # one jiffy
    time.sleep(0.05)
    bench.run(tcp4(flags="A"))
    assert lookup_conn(bench.dp, tcp4()).seen_ns > aged + 9 * NS    # past the TTL: the full path touched it


def test_udp_first_datagram_fills(bench):
    bench.reset(svc(port=53, proto="udp"))
    out = bench.run(udp4())[1]
    e = flow_cached(bench.dp, udp4())
    assert e is not None and e.real_id == lookup_conn(bench.dp, udp4()).real_id
    del bench.dp.m["conns"][conn_key(udp4())]
    assert bench.run(udp4()) == (TX, out)


def test_ipv6_hit(bench):
    bench.reset(svc(vip=V6, reals=("2001:db8::11", "2001:db8::12")))
    real = establish(bench, tcp6)
    del bench.dp.m["conns"][conn_key(tcp6())]
    ack = tcp6(flags="A")
    assert bench.run(ack) == (TX, to_real(ack, real))
    assert lookup_conn(bench.dp, tcp6()) is None


def test_another_flow_in_the_slot_is_not_taken(bench):
    """Entries are compared on the whole tuple: a flow differing in any field misses."""
    bench.reset(svc() + svc(port=8080))
    establish(bench, tcp4)
    e = flow_cached(bench.dp, tcp4())
    gen = settings(bench).gen
    # Copy the entry into every slot of the cache: any flow now lands on a slot holding tcp4()'s entry.
    fc = bench.dp.m["flow_cache"]
    keys = (ct.c_uint32 * fc.max_entries)(*range(fc.max_entries))
    vals = (fc.Leaf * fc.max_entries)(*([e] * fc.max_entries))
    fc.items_update_batch(keys, vals)
    assert settings(bench).gen == gen
    for kw in (dict(sport=40001), dict(dport=8080), dict(src="203.0.113.8")):
        bench.run(tcp4(flags="S", **kw))
        bench.run(tcp4(flags="A", **kw))
        assert lookup_conn(bench.dp, tcp4(**kw)).state == CS["est"]  # SYN -> EST: the full path ran


def _slots(bench):
    """{flow key bytes: cache index} of the live entries."""
    gen = settings(bench).gen
    return {bytes(v.key): k for k, v in bench.dp.m["flow_cache"].items_lookup_batch() if v.gen == gen}


def test_two_way_sets_keep_two_flows_and_evict_the_older(bench):
    """Flows go into their set's two entries (index // 2): a third flow of a set replaces the one filled first."""
    bench.reset(svc())
    seen = {}                                          # set -> flows filled into it, in order
    for sport in range(50000, 52000):
        flow = tcp4(sport=sport)
        establish(bench, lambda flags, s=sport: tcp4(sport=s, flags=flags))
        idx = _slots(bench)[bytes(conn_key(flow))]
        seen.setdefault(idx // 2, []).append(sport)
        if len(seen[idx // 2]) == 3:
            break
    a, b, c = seen[idx // 2]
    slots = _slots(bench)
    assert bytes(conn_key(tcp4(sport=a))) not in slots
    assert {slots[bytes(conn_key(tcp4(sport=x)))] // 2 for x in (b, c)} == {idx // 2}
    for x in (b, c):
        real = real_of(bench.run(tcp4(sport=x, flags="A"))[1])
        del bench.dp.m["conns"][conn_key(tcp4(sport=x))]
        ack = tcp4(sport=x, flags="A")
        assert bench.run(ack) == (TX, to_real(ack, real))       # both served from the cache


def test_ttl_zero_turns_the_cache_off(bench):
    bench.reset(svc())
    tables = dataclasses.replace(bench.dp.tables, flow_cache=0)
    off = DataPlane(bench.prog, tables)
    off.apply(dataclasses.replace(bench.config(svc()), tables=tables))
    bench.dp = off
    assert settings(bench).flow_ttl == 0
    establish(bench, tcp4)
    assert flow_cached(bench.dp, tcp4()) is None


def test_ttl_is_a_second_or_a_quarter_of_the_shortest_timeout(bench):
    hz = clock.kernel_hz(bench.prog)
    bench.reset(svc())
    assert settings(bench).flow_ttl == hz
    bench.reset("[timeouts]\nudp = 2\n" + svc())
    assert settings(bench).flow_ttl == hz // 2


def test_kernel_hz_is_a_tick_rate(bench):
    assert clock.kernel_hz(bench.prog) in clock.KNOWN_HZ


@pytest.mark.parametrize("hz", [100, 250, 300, 1000])
def test_measure_hz_from_tick_boundaries(hz):
    """A synthetic clock: ns advance 7 us a sample; jiffies tick every 1e9/hz ns, starting mid-tick."""
    state = {"ns": 123_456_789}

    def sample():
        state["ns"] += 7_000
        return 1000 + state["ns"] * hz // 1_000_000_000, state["ns"]

    assert clock.measure_hz(sample) == hz


def test_measure_hz_gives_up_on_a_stopped_clock():
    with pytest.raises(KernelError, match="jiffies did not advance"):
        clock.measure_hz(lambda: (5, 0), max_samples=100)


def test_reused_tuple_leaves_the_old_entry(bench):
    """A bare SYN reusing a closing tuple is placed afresh; the handshake's next packets follow the new connection
    entry, not the cache entry the old connection left (same gen, within its TTL)."""
    bench.reset(svc())
    old = establish(bench, tcp4)
    assert flow_cached(bench.dp, tcp4()).real_id == lookup_conn(bench.dp, tcp4()).real_id
    assert real_of(bench.run(tcp4(flags="FA"))[1]) == old
    new = real_of(bench.run(tcp4(flags="S"))[1])                    # rr: the next real
    assert new != old
    ack = tcp4(flags="A")
    assert bench.run(ack) == (TX, to_real(ack, new))
    c = lookup_conn(bench.dp, tcp4())
    assert c.state == CS["est"]
    assert flow_cached(bench.dp, tcp4()).real_id == c.real_id


def test_entries_are_cache_lines(bench):
    """Each flow-cache entry is one 64-byte cache line: the map's values are page-aligned (BPF_F_MMAPABLE; a plain
    array's start mid-line, so every probe touched two lines)."""
    from xlb.dataplane.libbpf import map_info
    table = bench.prog["flow_cache"]
    assert ct.sizeof(table.Leaf) == 64
    assert map_info(table.map_fd).map_flags & BPF_F_MMAPABLE
