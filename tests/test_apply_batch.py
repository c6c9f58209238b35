"""DataPlane.apply writes in batches and only what differs (docs/performance.md): these tests hold the maps it
leaves to the per-entry writes it replaced, spelled out here (`expected_real`, `expected_meta`), through a
sequence of reloads that adds, changes, removes and brings back reals and services; the batched delete the
sweep uses passes over keys already gone; ids taken in one loop are those taken one by one; a write apply makes on
a second thread fails apply before the writes that follow it."""
import ctypes as ct

import numpy as np
import pytest

from xlb.config.model import addr_bytes
from xlb.dataplane import structs as S
from xlb.dataplane.mapkeys import svc_key


def svc(vip, reals, extra=""):
    body = "".join(f'  [[service.real]]\n  address = "{a}"\n{w}' for a, w in reals)
    return f'[[service]]\nvip = "{vip}"\nport = 80\nproto = "tcp"\nscheduler = "wrr"\n{extra}{body}'


R = ("198.18.0.11", "198.18.0.12", "198.18.0.13")
A = (svc("198.51.100.10", [(a, "") for a in R], "persistence_timeout = 60\n")
     + svc("198.51.100.11", [(R[0], "  weight = 2\n"), (R[1], "  uthreshold = 50\n  lthreshold = 10\n")])
     + svc("2001:db8:100::10", [("2001:db8::11", ""), ("2001:db8::12", "")]))
# a weight changed, a real gone, a real added, a service gone, a service added
B = (svc("198.51.100.10", [(R[0], "  weight = 5\n"), (R[2], ""), ("198.18.0.14", "")], "persistence_timeout = 60\n")
     + svc("198.51.100.11", [(R[0], "  weight = 2\n"), (R[1], "  uthreshold = 50\n  lthreshold = 10\n")])
     + svc("198.51.100.12", [(R[1], "")]))


def expected_real(dp, svc, r):
    rid = dp.real_ids.get((svc.key, r.address, r.port or 0))
    return rid, S.Real(addr=S.addr_words(addr_bytes(r.address)), gen=dp.gens[rid], svc_id=dp.services[svc.key].id,
                       weight=r.weight, family=svc.family, flags=S.REAL_F_LIVE, uthreshold=r.uthreshold,
                       lthreshold=r.lthreshold)


def expected_meta(dp, svc):
    st = dp.services[svc.key]
    return S.SvcMeta(id=st.id, flags=S.SVC_F_PERSIST if svc.persistence_timeout else 0, sched=S.SCHED["rr"],
                     method=S.METHOD[svc.method], table_off=st.region[0], table_len=st.region[1],
                     persist_timeout_ns=(svc.persistence_timeout or 0) * 10**9,
                     persist_mask=S.addr_words(svc.persistence_netmask))


def check_maps(dp, removed=()):
    """Every configured real's and service's entry as the per-entry code wrote it; removed reals not live, with
    their generation kept; no other service in the map; each table as its slots say."""
    reals = dp.m["reals"]
    for s in dp.config.services:
        for r in s.reals:
            rid, want = expected_real(dp, s, r)
            assert bytes(reals[ct.c_uint32(rid)]) == bytes(want), (s.name, r.address)
        st = dp.services[s.key]
        assert bytes(dp.m["services"][svc_key(s)]) == bytes(expected_meta(dp, s)), s.name
        off, n = st.region
        assert [dp.m["sched_slots"][ct.c_uint32(i)].value for i in range(off, off + n)] == st.table
        assert sorted(set(st.table)) == sorted(dp.real_ids.get((s.key, r.address, r.port or 0)) for r in s.reals if r.weight)
    assert {bytes(k) for k in dp.m["services"].keys()} == {bytes(svc_key(s)) for s in dp.config.services}
    for rid in removed:
        assert bytes(reals[ct.c_uint32(rid)]) == bytes(S.Real(gen=dp.gens[rid]))


def ids(dp):
    return dict(dp.real_ids.ids)


def test_reloads_leave_the_entries_the_per_entry_writes_did(bench):
    dp = bench.reset(A)
    check_maps(dp)
    first = ids(dp)
    dp.apply(bench.config(B))
    gone = [rid for ident, rid in first.items() if ident not in dp.real_ids.ids]
    assert len(gone) == 3  # R[1] of the first service, both reals of the IPv6 one
    check_maps(dp, removed=gone)
    dp.apply(bench.config(B))  # unchanged: nothing to write, the same maps
    check_maps(dp, removed=gone)
    second = ids(dp)
    dp.apply(bench.config(A))
    check_maps(dp, removed=[rid for ident, rid in second.items() if ident not in dp.real_ids.ids])


def test_fresh_ids_start_from_zero_counters(bench):
    dp = bench.reset(A)
    dp.apply(bench.config(B))
    kept = ids(dp)
    # Traffic's counters on every slot (behind the control plane's back), then the reals and services of A again:
    # ids taken afresh (the IPv6 service and its reals, R[1] under the first service) start from zero.
    for name in ("real_stats", "svc_stats"):
        table = dp.m[name]
        busy = table.Leaf(*([table.Leaf._type_(packets=7, bytes=700, conns=1)] * len(table.Leaf())))
        for i in range(table.max_entries):
            table[ct.c_uint32(i)] = busy
    conns = dp.m["real_conns"]
    for i in range(conns.max_entries):
        conns[ct.c_uint32(i)] = conns.Leaf(active=3, inactive=1)
    old_svcs = {s.key: dp.services[s.key].id for s in dp.config.services}
    dp.apply(bench.config(A))
    check_maps(dp)
    for ident, rid in dp.real_ids.ids.items():
        fresh = kept.get(ident) != rid
        assert dp.counters("real_stats", rid).packets == (0 if fresh else 7 * len(dp.m["real_stats"].Leaf())), ident
        assert conns[ct.c_uint32(rid)].active == (0 if fresh else 3), ident
    for s in dp.config.services:
        sid = dp.services[s.key].id
        assert dp.counters("svc_stats", sid).packets == (7 * len(dp.m["svc_stats"].Leaf())
                                                         if old_svcs.get(s.key) == sid else 0), s.name


def test_delete_batch_passes_over_keys_already_gone(bench):
    dp = bench.reset(A)
    conns = dp.m["conns"]
    keys = np.zeros(7, np.dtype(S.ConnKey))
    keys["sport"] = np.arange(1, 8)
    keys["proto"], keys["family"] = 6, 4
    present = [0, 1, 3, 4, 5]            # 2 and 6 (the last) were never there: evicted, say, since they were read
    for i in present:
        conns[S.ConnKey.from_buffer_copy(keys[i].tobytes())] = S.Conn(seen_ns=1, real_id=1, state=1)
    assert dp.delete_batch(conns, keys) == len(present)
    assert len(list(conns.keys())) == 0
    # ctypes keys, as callers outside the sweep pass them
    conns[S.ConnKey.from_buffer_copy(keys[0].tobytes())] = S.Conn(seen_ns=1, real_id=1, state=1)
    assert dp.delete_batch(conns, [S.ConnKey.from_buffer_copy(k.tobytes()) for k in keys[:2]]) == 1
    assert len(list(conns.keys())) == 0


def test_take_all_hands_out_the_ids_take_would():
    from xlb.dataplane.alloc import IdPool
    one, many = IdPool(100), IdPool(100)
    for pool in (one, many):
        for ident in ("a", "b", "c", "d"):
            pool.take(ident)
        pool.drop("b")
        pool.drop("d")
    idents = ["a", "x", "b", "y", "x", "z"]
    expect = [one.take(i) for i in idents]
    ids, fresh = many.take_all(idents)
    assert ids == [i for i, _ in expect]
    assert fresh == [i for i, f in expect if f]
    assert (many.ids, many.free, many.next) == (one.ids, one.free, one.next)


def test_a_failed_background_write_stops_apply_before_the_reals(bench, monkeypatch):
    """The counters of fresh ids are zeroed on a second thread while the reals' entries are built: a failure there
    is apply's, raised before any real (or anything after) is written."""
    from xlb.dataplane.apply import DataPlane
    from xlb.errors import KernelError
    dp = bench.reset(A)
    before = {name: [(bytes(k), bytes(v)) for k, v in dp.m[name].items()] for name in ("reals", "services")}

    def refuse(table, ids):
        raise KernelError("refused")

    monkeypatch.setattr(DataPlane, "zero_slots", staticmethod(refuse))
    with pytest.raises(KernelError, match="refused"):
        dp.apply(bench.config(B))  # B takes fresh ids (a real and a service added)
    assert {name: [(bytes(k), bytes(v)) for k, v in dp.m[name].items()] for name in ("reals", "services")} == before


def test_what_apply_keeps_skips_the_young_collections_and_garbage_is_still_freed(bench):
    """apply() moves what it keeps to the oldest generation unscanned (no young collection right after it, ~40 ms
    at 10k x 10); a reference cycle that was garbage then is freed by the next full collection, not kept."""
    import gc
    import weakref

    class Node:
        pass

    dp = bench.reset(A)
    cycle = Node()
    cycle.me = cycle
    gone = weakref.ref(cycle)
    del cycle
    dp.apply(bench.config(B))
    kept = list(dp.services.values())
    young = {id(o) for o in gc.get_objects(generation=0)} | {id(o) for o in gc.get_objects(generation=1)}
    assert not young & {id(st) for st in kept}
    assert gc.isenabled() and gc.get_freeze_count() == 0
    assert gone() is not None  # garbage, not yet collected
    gc.collect()
    assert gone() is None
