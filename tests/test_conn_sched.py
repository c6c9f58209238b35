"""Connection-count scheduling through BPF_PROG_TEST_RUN: the data plane's live counts (real_conns), IPVS's lc, wlc,
sed, nq, fo and ovf choices, thresholds with hysteresis, and the sh/mh port and fallback flags.

Counts are read from the map; loads are set by opening connections through the program itself or, where a test
needs a particular starting load, by writing real_conns as the control plane's reconcile would.
"""
import ctypes as ct
import ipaddress
import os

import pytest
from harness import TEST_TABLES, conn_key, lookup_conn, real_of, tcp4, udp4

from xlb.dataplane import structs as S
from xlb.dataplane.mapkeys import now_ns, NS

VIP = "198.51.100.10"
R1, R2, R3 = "198.18.0.11", "198.18.0.12", "198.18.0.13"


def svc(scheduler, reals, extra="", port=80, proto="tcp"):
    """One service; reals as [(address, weight, "extra real keys")]."""
    body = "".join(f'[[service.real]]\naddress = "{a}"\nweight = {w}\n{x}\n' for a, w, x in reals)
    return (f'[timeouts]\ntcpfin = 5\nsyn = 5\nudp = 5\n[[service]]\nvip = "{VIP}"\nport = {port}\n'
            f'proto = "{proto}"\nscheduler = "{scheduler}"\n{extra}\n{body}')


def rid(dp, addr, port=80):
    (st,) = [s for s in dp.services.values() if s.svc.port == port]
    return dp.real_ids.get((st.svc.key, ipaddress.ip_address(addr), 0))


def counts(dp, addr):
    return dp.real_conn_counts()[rid(dp, addr)]


def set_load(dp, addr, active, inactive=0, overloaded=False):
    dp.m["real_conns"][ct.c_uint32(rid(dp, addr))] = S.RealConns(
        active=active, inactive=inactive, flags=S.RC_F_OVERLOAD if overloaded else 0)


_client = iter(range(1, 10**6))


def new_conn(bench, flags="S", **kw):
    """A SYN (or flags) from a fresh client; returns the real it went to, or the verdict when dropped."""
    n = next(_client)
    pkt = tcp4(src=f"203.0.{n // 250 % 250}.{n % 250 + 1}", sport=10000 + n % 50000, flags=flags, **kw)
    action, out = bench.run(pkt)
    return real_of(out) if action == "XDP_TX" else action


# --- counting -------------------------------------------------------------------------------------------------


def test_counts_follow_tcp_states_and_expire(bench):
    dp = bench.reset(svc("wlc", [(R1, 1, "")]))
    syn = tcp4(flags="S")
    assert bench.run(syn)[0] == "XDP_TX"
    assert counts(dp, R1) == (0, 1)                     # SYN: inactive
    bench.run(tcp4(flags="A"))
    assert counts(dp, R1) == (1, 0)                     # established: active
    bench.run(tcp4(flags="PA", payload=b"x"))
    assert counts(dp, R1) == (1, 0)                     # no change on data
    bench.run(tcp4(flags="FA"))
    assert counts(dp, R1) == (0, 1)                     # closing: inactive again
    bench.run(udp4(dport=80))                           # no UDP service on 80: not counted
    assert counts(dp, R1) == (0, 1)
    res = dp.sweep(now=now_ns() + 6 * NS)               # past tcpfin = 5
    assert res.conns_expired == 1 and counts(dp, R1) == (0, 0)


def test_one_cpu_can_fill_the_whole_connection_table(bench):
    """The connection table is one LRU shared by the CPUs: connections arriving on one CPU may use all of it. (With
    per-CPU lists each CPU held only its share and evicted live connections while the table had room.)"""
    dp = bench.reset(svc("rr", [(R1, 1, "")]))
    n = TEST_TABLES.conns * 3 // 4
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(old)})
    try:
        for i in range(n):
            pkt = tcp4(src=f"203.0.{i // 250 % 250}.{i % 250 + 1}", sport=10000 + i)
            assert bench.run(pkt)[0] == "XDP_TX", i
    finally:
        os.sched_setaffinity(0, old)
    assert sum(1 for _ in dp.m["conns"].keys()) == n


def test_udp_counts_inactive(bench):
    dp = bench.reset(svc("lc", [(R1, 1, "")], port=53, proto="udp"))
    for sport in (1000, 1001, 1002):
        assert bench.run(udp4(sport=sport))[0] == "XDP_TX"
    assert dp.real_conn_counts()[rid(dp, R1, 53)] == (0, 3)


def test_reconcile_rewrites_counts_from_the_table(bench):
    """Entries the LRU evicts or that expire would leak counts: every sweep rewrites them from the table."""
    dp = bench.reset(svc("wlc", [(R1, 1, ""), (R2, 1, "")]))
    bench.run(tcp4(flags="A"))                          # one established flow, on R1 (tie: first)
    assert counts(dp, R1) == (1, 0)
    set_load(dp, R1, 500, 7)
    set_load(dp, R2, -3, 9)
    dp.sweep()
    assert (counts(dp, R1), counts(dp, R2)) == ((1, 0), (0, 0))


def test_replacing_an_expired_entry_moves_its_count(bench):
    dp = bench.reset(svc("lc", [(R1, 1, ""), (R2, 1, "")]))
    bench.run(tcp4(flags="FA"))                         # unknown closing flow: inactive on R1
    assert counts(dp, R1) == (0, 1)
    c = lookup_conn(dp, tcp4())
    c.seen_ns -= 10 * NS                                # expired, not yet swept
    dp.m["conns"][conn_key(tcp4())] = c
    # The expired entry still counts until replaced, so lc picks R2; R1 then loses the replaced entry.
    assert real_of(bench.run(tcp4(flags="S"))[1]) == R2
    assert (counts(dp, R1), counts(dp, R2)) == ((0, 0), (0, 1))


# --- choices ----------------------------------------------------------------------------------------------------


def test_wlc_splits_by_weight(bench):
    """IPVS wlc over fresh SYNs (inactive each): cost inactive/weight, ties to the first real."""
    dp = bench.reset(svc("wlc", [(R1, 1, ""), (R2, 2, "")]))
    seq = [new_conn(bench) for _ in range(6)]
    assert seq == [R1, R2, R2, R1, R2, R2]
    assert (counts(dp, R1), counts(dp, R2)) == ((0, 2), (0, 4))


def test_wlc_weighs_active_256_times_inactive(bench):
    dp = bench.reset(svc("wlc", [(R1, 1, ""), (R2, 1, "")]))
    set_load(dp, R1, active=1)
    set_load(dp, R2, active=0, inactive=255)
    assert new_conn(bench) == R2                        # 255 < 256
    set_load(dp, R2, active=0, inactive=256)
    assert new_conn(bench) == R1                        # 256 vs 256: tie goes to the first


def test_lc_ignores_weight(bench):
    dp = bench.reset(svc("lc", [(R1, 1, ""), (R2, 100, "")]))
    set_load(dp, R1, 2)
    set_load(dp, R2, 3)
    assert new_conn(bench) == R1


def test_sed_and_nq(bench):
    dp = bench.reset(svc("sed", [(R1, 1, ""), (R2, 3, "")]))
    set_load(dp, R1, 0)
    set_load(dp, R2, 2)
    assert new_conn(bench) == R1                        # (0+1)/1 = 1 > (2+1)/3 = 1? equal: first
    set_load(dp, R2, 1)
    assert new_conn(bench) == R2                        # (1+1)/3 < 1
    dp = bench.reset(svc("nq", [(R1, 1, ""), (R2, 5, ""), (R3, 1, "")]))
    set_load(dp, R1, 4)
    set_load(dp, R2, 1)
    set_load(dp, R3, 0, inactive=50)                    # idle: no active connection
    assert new_conn(bench) == R3                        # nq: an idle real first, whatever sed says
    set_load(dp, R3, 9)
    assert new_conn(bench) == R2                        # none idle: sed, (1+1)/5 lowest


def test_fo_takes_the_highest_weight_and_moves(bench):
    cfg = svc("fo", [(R1, 1, ""), (R2, 3, ""), (R3, 3, "")])
    dp = bench.reset(cfg)
    assert {new_conn(bench) for _ in range(5)} == {R2}  # highest weight, first of equals
    dp.apply(bench.config(cfg.replace("weight = 3\n", "weight = 0\n", 1)))
    assert {new_conn(bench) for _ in range(5)} == {R3}
    dp.apply(bench.config(cfg.replace("weight = 3\n", "weight = 0\n")))
    assert {new_conn(bench) for _ in range(3)} == {R1}


def test_ovf_fills_to_weight_then_spills(bench):
    """ovf counts active connections: established flows (here mid-stream ACKs, which start established)."""
    dp = bench.reset(svc("ovf", [(R1, 1, ""), (R2, 2, "")]))
    seq = [new_conn(bench, flags="A") for _ in range(4)]
    assert seq == [R2, R2, R1, "XDP_DROP"]              # R2 to its weight, then R1, then nobody
    assert bench.verdicts()["drop_no_real"] == 1


def test_zero_weight_and_overloaded_reals_get_nothing(bench):
    for sched in ("lc", "wlc", "sed", "nq", "fo", "ovf", "rr", "wrr"):
        dp = bench.reset(svc(sched, [(R1, 0, ""), (R2, 1, ""), (R3, 1, "")]))
        set_load(dp, R2, 0, overloaded=True)
        assert {new_conn(bench) for _ in range(4)} == {R3}, sched


# --- thresholds ---------------------------------------------------------------------------------------------------


def test_upper_threshold_overloads_and_lower_brings_back(bench):
    cfg = svc("lc", [(R1, 1, "uthreshold = 3\nlthreshold = 1"), (R2, 1, "")])
    dp = bench.reset(cfg)
    set_load(dp, R2, 100)                               # lc prefers R1 while it can take connections
    assert [new_conn(bench) for _ in range(4)] == [R1, R1, R1, R2]
    assert dp.m["real_conns"][ct.c_uint32(rid(dp, R1))].flags & S.RC_F_OVERLOAD
    set_load(dp, R1, 0, inactive=2, overloaded=True)    # reconcile sees 2: not below lthreshold 1 yet
    dp._reconcile({rid(dp, R1): [0, 2], rid(dp, R2): [100, 0]})
    assert new_conn(bench) == R2
    dp._reconcile({rid(dp, R1): [0, 0], rid(dp, R2): [100, 0]})
    assert new_conn(bench) == R1                        # below lthreshold: back


def test_threshold_default_lower_is_three_quarters(bench):
    dp = bench.reset(svc("lc", [(R1, 1, "uthreshold = 8"), (R2, 1, "")]))
    r1, r2 = rid(dp, R1), rid(dp, R2)
    set_load(dp, R1, 8, overloaded=True)
    dp._reconcile({r1: [6, 0], r2: [50, 0]})            # 6*4 = 24 is not below 8*3 = 24
    assert new_conn(bench) == R2
    dp._reconcile({r1: [5, 0], r2: [50, 0]})
    assert new_conn(bench) == R1


# --- sh / mh flags --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sched", ["sh", "mh"])
def test_hash_without_fallback_drops_when_hashed_real_is_unavailable(bench, sched):
    cfg = svc(sched, [(R1, 1, ""), (R2, 1, ""), (R3, 1, "")])
    dp = bench.reset(cfg)
    src = "203.0.113.9"
    first = real_of(bench.run(tcp4(src=src, sport=1))[1])
    set_load(dp, first, 0, overloaded=True)
    assert bench.run(tcp4(src=src, sport=2))[0] == "XDP_DROP"      # IPVS's default: no destination
    dp = bench.reset(cfg.replace('scheduler = "', f'sched_flags = ["{sched}-fallback"]\nscheduler = "'))
    set_load(dp, first, 0, overloaded=True)
    other = real_of(bench.run(tcp4(src=src, sport=3))[1])
    assert other in (R1, R2, R3) and other != first
    assert real_of(bench.run(tcp4(src=src, sport=4))[1]) == other   # the fallback is deterministic


@pytest.mark.parametrize("sched", ["sh", "mh"])
def test_hash_port_spreads_one_client_over_reals(bench, sched):
    cfg = svc(sched, [(R1, 1, ""), (R2, 1, ""), (R3, 1, "")])
    bench.reset(cfg)
    plain = {real_of(bench.run(tcp4(sport=p))[1]) for p in range(2000, 2030)}
    assert len(plain) == 1                                          # address only: one real
    bench.reset(cfg.replace('scheduler = "', f'sched_flags = ["{sched}-port"]\nscheduler = "'))
    by_port = {p: real_of(bench.run(tcp4(sport=p))[1]) for p in range(2000, 2030)}
    assert set(by_port.values()) == {R1, R2, R3}
    assert all(real_of(bench.run(tcp4(sport=p, flags="S"))[1]) == r for p, r in by_port.items())


def test_more_reals_than_candidates_keeps_the_least_loaded(bench):
    """With more reals than the data plane weighs, the control plane keeps the cheapest candidates, in list order,
    and refreshes them at every sweep."""
    n = S.CAND_MAX + 4
    reals = [(f"198.18.0.{100 + i}", 1, "") for i in range(n)]
    dp = bench.reset(svc("lc", reals))
    (st,) = dp.services.values()
    assert len(st.table) == S.CAND_MAX
    busy = {st.svc.reals[i].address for i in range(4)}
    loads = {rid(dp, str(a)): [0 if a not in busy else 50, 0] for a in (r.address for r in st.svc.reals)}
    dp._reconcile(loads)
    order = [rid(dp, str(r.address)) for r in st.svc.reals]
    assert len(st.table) == S.CAND_MAX and not {rid(dp, str(a)) for a in busy} & set(st.table)
    assert st.table == sorted(st.table, key=order.index)
    slots = dp.m["sched_slots"]
    assert [slots[ct.c_uint32(st.region[0] + i)].value for i in range(S.CAND_MAX)] == st.table
