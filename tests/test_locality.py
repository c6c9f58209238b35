"""lblc and lblcr (IPVS's locality-based least-connection schedulers) through BPF_PROG_TEST_RUN: which real a
destination address gets and keeps, IPVS's overload rule, lblcr's replication and set ageing, and the sweep's
expiry of the locality table (the lblc map's contents)."""
import ctypes as ct
import ipaddress

import numpy as np
from harness import real_of, tcp4

from xlb.config.model import addr_bytes
from xlb.dataplane import structs as S
from xlb.dataplane.mapkeys import NS, now_ns
from xlb.dataplane.sweep import LOCALITY_EXPIRE, LOCALITY_IDLE, locality_expired

R1, R2, R3 = "198.18.0.11", "198.18.0.12", "198.18.0.13"
DST_A, DST_B = "198.51.100.80", "198.51.100.81"


def cfg(scheduler, reals=((R1, 1), (R2, 1))):
    """A fwmark service over 198.51.100.80/28 port 80 (a transparent cache cluster: many destinations)."""
    body = "".join(f'[[service.real]]\naddress = "{a}"\nweight = {w}\n' for a, w in reals)
    return (f'[[mark]]\nmark = 7\ndst = "198.51.100.80/28"\nproto = "tcp"\nports = [80]\n'
            f'[[service]]\nfwmark = 7\nfamily = "ipv4"\nscheduler = "{scheduler}"\n{body}')


_client = iter(range(1, 10**6))


def conn_to(bench, dst):
    n = next(_client)
    action, out = bench.run(tcp4(src=f"203.0.113.{n % 250 + 1}", sport=20000 + n, dst=dst))
    assert action == "XDP_TX"
    return real_of(out)


def rid(dp, addr):
    (st,) = dp.services.values()
    return dp.real_ids.get((st.svc.key, ipaddress.ip_address(addr), 0))


def set_load(dp, addr, active):
    dp.m["real_conns"][ct.c_uint32(rid(dp, addr))] = S.RealConns(active=active, inactive=0)


def entry_key(dp, dst):
    (st,) = dp.services.values()
    return S.LblcKey(svc_id=st.id, family=S.AF_INET, addr=S.addr_words(addr_bytes(dst)))


def members(dp, dst):
    e = dp.m["lblc"][entry_key(dp, dst)]
    ids = {rid(dp, a): a for a in (R1, R2, R3) if rid(dp, a)}
    return sorted(ids[i] for i in e.real_id if i)


def test_lblc_keeps_a_destination_on_its_real_until_overloaded(bench):
    dp = bench.reset(cfg("lblc"))
    assert conn_to(bench, DST_A) == R1                  # no entry: wlc (tie: the first)
    assert members(dp, DST_A) == [R1]
    set_load(dp, R1, 1)
    set_load(dp, R2, 0)
    assert conn_to(bench, DST_A) == R1                  # locality beats least connections: 1 active <= weight 1
    assert conn_to(bench, DST_B) == R2                  # another destination: wlc
    assert members(dp, DST_B) == [R2]
    set_load(dp, R1, 2)
    set_load(dp, R2, 1)
    assert conn_to(bench, DST_A) == R1                  # 2 > weight 1, but no real is under half its weight
    set_load(dp, R2, 0)
    assert conn_to(bench, DST_A) == R2                  # overloaded and R2 idle: re-placed, the entry replaced
    assert members(dp, DST_A) == [R2]


def test_lblc_replaces_a_removed_or_quiescent_real(bench):
    dp = bench.reset(cfg("lblc"))
    assert conn_to(bench, DST_A) == R1
    dp.apply(bench.config(cfg("lblc", ((R1, 0), (R2, 1)))))
    assert conn_to(bench, DST_A) == R2
    assert members(dp, DST_A) == [R2]


def test_lblcr_replicates_under_load_and_ages_its_set(bench):
    dp = bench.reset(cfg("lblcr", ((R1, 1), (R2, 1), (R3, 1))))
    assert conn_to(bench, DST_A) == R1
    set_load(dp, R1, 2)                                 # overloaded: R2 and R3 idle
    assert conn_to(bench, DST_A) == R2                  # wlc's pick joins the set
    assert members(dp, DST_A) == [R1, R2]
    set_load(dp, R2, 1)
    assert conn_to(bench, DST_A) == R2                  # the set's least loaded member (1 < 2 active)
    set_load(dp, R2, 3)
    set_load(dp, R1, 0)
    assert conn_to(bench, DST_A) == R1
    assert members(dp, DST_A) == [R1, R2]               # not older than a day: the set keeps both
    key = entry_key(dp, DST_A)
    e = dp.m["lblc"][key]
    e.lastmod_ns = now_ns() - 25 * 3600 * NS
    dp.m["lblc"][key] = e
    assert conn_to(bench, DST_A) == R1
    assert members(dp, DST_A) == [R1]                   # a day unchanged: the most loaded (R2) left
    assert dp.m["lblc"][key].lastmod_ns > now_ns() - 10 * NS


def test_sweep_expires_unused_entries_and_those_of_other_schedulers(bench):
    dp = bench.reset(cfg("lblc"))
    conn_to(bench, DST_A)
    conn_to(bench, DST_B)
    key = entry_key(dp, DST_A)
    e = dp.m["lblc"][key]
    e.lastuse_ns = now_ns() - (LOCALITY_EXPIRE + 60) * NS
    dp.m["lblc"][key] = e
    res = dp.sweep()
    assert (res.locality_seen, res.locality_expired) == (2, 1)
    assert [k.addr[0] for k in dp.m["lblc"].keys()] == [entry_key(dp, DST_B).addr[0]]
    dp.apply(bench.config(cfg("wlc")))                  # the service no longer schedules by locality
    assert dp.sweep().locality_expired == 1
    assert len(list(dp.m["lblc"].keys())) == 0


def test_oversized_service_loses_its_idle_entries_first():
    now = 10**15
    idle = now - (LOCALITY_IDLE + 1) * NS
    lastuse = np.array([idle - 5, now, idle - 9, idle, now, idle - 1], np.int64)
    sid = np.array([1, 1, 1, 1, 1, 2], np.uint32)
    live = np.ones(6, bool)
    # service 1 holds 5 with max 2: goal min(3 * 4 // 3, 1) = 1, the least recently used idle one (index 2)
    assert locality_expired(live, sid, lastuse, now, max_size=2).tolist() == [0, 0, 1, 0, 0, 0]
    assert locality_expired(live, sid, lastuse, now, max_size=8).tolist() == [0] * 6
    live[5] = False
    assert locality_expired(live, sid, lastuse, now, max_size=8).tolist() == [0] * 5 + [1]
