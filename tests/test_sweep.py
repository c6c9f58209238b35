"""The timer sweep (DataPlane.sweep) decides with numpy over batched reads; these tests hold it to the per-entry
rules it replaced, spelled out here in plain Python (`expected`), on tables filled with random entries of every
kind: live, expired and invalid connections (unknown states, removed reals, stale generations, unknown
services) and templates of lvs-mode, timeout-mode, non-persistent and unknown services, IPv4 and IPv6, under
/32, /24 and /64 netmasks. The pure helpers behind the matching are checked against brute force without root."""
import ctypes as ct
import ipaddress
import random

import numpy as np
import pytest

from conftest import needs_root
from xlb.dataplane import structs as S
from xlb.config.model import addr_bytes, mask_address
from xlb.dataplane.mapkeys import now_ns, NS, svc_key
from xlb.dataplane.rowmatch import exact_keys, max_per_key, row_index
from xlb.dataplane.sweep import hold_due, sweep_interval

TIMEOUTS = "[timeouts]\ntcp = 30\nsyn = 20\ntcpfin = 10\nudp = 30\n"
R = ("198.18.0.11", "198.18.0.12", "198.18.0.13")
R6 = ("2001:db8::11", "2001:db8::12")


def reals(addrs):
    return "".join(f'  [[service.real]]\n  address = "{a}"\n' for a in addrs)


def config(with_spare_real):
    return (TIMEOUTS + '[[mark]]\nmark = 5\ndst = "198.51.100.20/32"\nproto = "tcp"\nports = [80, 443]\n'
            '[[service]]\nvip = "198.51.100.10"\nport = 80\nproto = "tcp"\nscheduler = "rr"\n'
            'persistence_timeout = 60\npersistence_netmask = "255.255.255.0"\n' + reals(R)
            + '[[service]]\nfwmark = 5\nscheduler = "rr"\npersistence_timeout = 120\n' + reals(R[:2])
            + '[[service]]\nvip = "2001:db8::100"\nport = 443\nproto = "tcp"\nscheduler = "rr"\n'
            'persistence_timeout = 60\npersistence_netmask = 64\n' + reals(R6)
            + '[[service]]\nvip = "198.51.100.11"\nport = 80\nproto = "tcp"\nscheduler = "rr"\n'
            'persistence_timeout = 60\npersistence_mode = "timeout"\n' + reals(R[1:])
            + '[[service]]\nvip = "198.51.100.12"\nport = 80\nproto = "udp"\nscheduler = "rr"\n'
            + reals(R + (("198.18.0.14",) if with_spare_real else ())))


def client(rng, family):
    if family == 6:
        return ipaddress.ip_address(f"2001:db8:ff:{rng.randrange(3)}::{rng.randrange(1, 40):x}")
    return ipaddress.ip_address(rng.choice(("203.0.113.", "192.0.2.", "198.51.100.")) + str(rng.randrange(1, 30)))


def fill(dp, rng, now):
    """Random connections and templates straight into the maps; returns (conns, templates) as {key bytes:
    value} of what was written."""
    states = list(dp.by_id.values())
    spare, = set(dp.gens) - set(dp.real_ids.ids.values())  # removed by the second apply: generation kept, not live
    conns, tmpls = {}, {}
    for _ in range(1500):
        st = rng.choice(states)
        svc = st.svc
        fam = svc.family
        ids = [dp.real_ids.get((svc.key, r.address, r.port or 0)) for r in svc.reals] + [spare, 250]
        rid = rng.choice(ids)
        gen = dp.gens.get(rid, 0) + (rng.random() < 0.1)
        dst = svc.vip or ipaddress.ip_address("198.51.100.20")
        key = S.ConnKey(src=S.addr_words(addr_bytes(client(rng, fam))), dst=S.addr_words(addr_bytes(dst)),
                        sport=rng.randrange(1024, 65535), dport=svc.port or 443,
                        proto=6 if svc.proto != "udp" else 17, family=fam)
        val = S.Conn(seen_ns=now - rng.randrange(0, 70 * NS), real_id=rid, real_gen=gen,
                     svc_id=st.id if rng.random() < 0.95 else 200, state=rng.randrange(S.CONN_STATES + 1))
        conns[bytes(key)] = val
    for _ in range(400):
        st = rng.choice(states)
        svc = st.svc
        k = svc_key(svc) if rng.random() < 0.95 else S.SvcKey(family=4, mark=99)
        masked = mask_address(addr_bytes(client(rng, svc.family)), svc.persistence_netmask)
        ids = [dp.real_ids.get((svc.key, r.address, r.port or 0)) for r in svc.reals] + [spare]
        rid = rng.choice(ids)
        key = S.PersistKey(svc=k, client=S.addr_words(masked))
        val = S.Persist(last_new_ns=now - rng.randrange(0, 130 * NS), held_until_ns=rng.choice((0, now, now + 25 * NS)),
                        real_id=rid, real_gen=dp.gens.get(rid, 0) + (rng.random() < 0.1))
        tmpls[bytes(key)] = val
    for name, entries, K in (("conns", conns, S.ConnKey), ("persist", tmpls, S.PersistKey)):
        m = dp.m[name]
        for kb, v in entries.items():
            m[K.from_buffer_copy(kb)] = v
    return conns, tmpls


def expected(dp, now, conns, tmpls):
    """The sweep's rules, one entry at a time: (live conn keys, {real id: (active, inactive)}, {template key:
    held_until_ns after}, templates held, holds left as they were though they differ)."""
    tmo = dp.m["settings"][ct.c_uint32(0)].timeout_ns
    live_gen = {rid: dp.gens[rid] for rid in dp.real_ids.ids.values()}
    by_key = {st.key_bytes: st.svc for st in dp.by_id.values()}
    sid_key = {st.id: st.key_bytes for st in dp.by_id.values()}
    alive, counts, held = set(), {rid: [0, 0] for rid in live_gen}, {}
    for kb, v in conns.items():
        until = v.seen_ns + (tmo[v.state] if v.state < S.CONN_STATES else 0)
        if until - now < 0:
            continue
        alive.add(kb)
        if live_gen.get(v.real_id) == v.real_gen:
            counts[v.real_id][0 if v.state == S.CONN_STATE["est"] else 1] += 1
        svc = by_key.get(sid_key.get(v.svc_id))
        if svc and svc.persistence_timeout and svc.persistence_mode == "lvs":
            src = mask_address(bytes(S.ConnKey.from_buffer_copy(kb).src), svc.persistence_netmask)
            tkey = sid_key[v.svc_id] + src
            held[tkey] = max(held.get(tkey, 0), until)
    kept, nheld, lazy = {}, 0, 0
    for kb, v in tmpls.items():
        svc = by_key.get(kb[:ct.sizeof(S.SvcKey)])
        if not svc or not svc.persistence_timeout:
            continue
        r = dp.m["reals"][ct.c_uint32(v.real_id)]
        if not (r.flags & S.REAL_F_LIVE) or r.gen != v.real_gen:
            continue
        hold = held.get(kb, 0) if svc.persistence_mode == "lvs" else 0
        if max(v.last_new_ns + svc.persistence_timeout * NS, hold) - now <= 0:
            continue
        nheld += bool(hold)
        stored = v.held_until_ns
        if svc.persistence_mode != "lvs":
            kept[kb] = stored
        elif hold < stored or (hold > stored and stored - now < max((hold - now) // 2, 20 * NS)):
            kept[kb] = hold   # lower: at once; higher: once the stored one has used up half of its lead or is
            #                   within two of the longest sweep intervals (10 s) of now
        else:
            kept[kb] = stored
            lazy += hold != stored
    return alive, {r: tuple(c) for r, c in counts.items()}, kept, nheld, lazy


@needs_root
@pytest.mark.parametrize("path", ["kernel", "numpy"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sweep_matches_the_per_entry_rules(bench, seed, path):
    """Either path: the kernel's walk (xlb/dataplane/kwalk.py) or numpy over batched reads."""
    assert now_ns() > 200 * NS, "the monotonic clock is younger than the ages this test writes"
    bench.reset(config(with_spare_real=True))
    bench.dp.apply(bench.config(config(with_spare_real=False)))
    dp = bench.dp
    assert dp.choose_sweep(numpy=path == "numpy") == path
    now = now_ns()
    conns, tmpls = fill(dp, random.Random(seed), now)
    want_alive, want_counts, want_kept, want_held, lazy = expected(dp, now, conns, tmpls)
    assert 0 < len(want_alive) < len(conns) and 0 < len(want_kept) < len(tmpls)   # the draw covers both outcomes
    assert 0 < want_held < len(want_kept) and lazy > 0

    res = dp.sweep(now)

    assert (res.conns_seen, res.conns_expired) == (len(conns), len(conns) - len(want_alive))
    assert (res.templates_seen, res.templates_expired) == (len(tmpls), len(tmpls) - len(want_kept))
    assert res.templates_held == want_held
    assert {bytes(k) for k in dp.m["conns"].keys()} == want_alive
    assert {bytes(k): v.held_until_ns for k, v in dp.m["persist"].items()} == want_kept
    assert dp.real_conn_counts() == want_counts


def fill_half_and_nat(dp, rng, now, conns):
    """Move a fifth of the connections to half_open, and write NAT reverse entries (nat_revs, nat_half) for some
    connections, with their real or another, and for none, born before the sweep or after it."""
    for kb in rng.sample(sorted(conns), len(conns) // 5):
        k = S.ConnKey.from_buffer_copy(kb)
        del dp.m["conns"][k]
        dp.m["half_open"][k] = conns[kb]
    for kb in rng.sample(sorted(conns), 600) + [None] * 50:
        k = S.ConnKey.from_buffer_copy(kb or rng.choice(sorted(conns)))
        v = conns[kb] if kb else S.Conn(real_id=1)
        rev = S.ConnKey(src=S.addr_words(addr_bytes(ipaddress.ip_address(R6[0] if k.family == 6 else R[0]))),
                        dst=k.src, sport=8080, dport=k.sport if kb else k.sport ^ 1, proto=k.proto, family=k.family)
        nat = S.NatRev(vip=k.dst, vport=k.dport, real_id=v.real_id + (rng.random() < 0.1), svc_id=v.svc_id,
                       born_ns=rng.choice((now - NS, now + 10**6 * NS)))
        dp.m[rng.choice(("nat_revs", "nat_half"))][rev] = nat


def tables_after_sweep(bench, seed, now, path, max_clients=None):
    bench.reset(config(with_spare_real=True))
    bench.dp.apply(bench.config(config(with_spare_real=False)))
    dp = bench.dp
    assert dp.choose_sweep(numpy=path == "numpy") == path
    if max_clients:   # aggregates for that many clients only (8: the walk overflows; 256: 128 slots, shared)
        from xlb.dataplane.kwalk import Walker
        dp._walker.close()
        dp._walker = Walker(dp.m, dp.cap.max_reals, dp.cap.max_services, max_clients)
    rng = random.Random(seed)
    conns, _ = fill(dp, rng, now)
    fill_half_and_nat(dp, rng, now, conns)
    res = dp.sweep(now)
    res.seconds = 0
    maps = {name: {bytes(k): bytes(v) for k, v in dp.m[name].items()}
            for name in ("conns", "half_open", "nat_revs", "nat_half", "persist")}
    return res, maps, dp.real_conn_counts()


@needs_root
@pytest.mark.parametrize("seed, max_clients", [(4, None), (5, None), (6, 8), (7, 256)])
def test_kernel_and_numpy_sweeps_leave_the_same_tables(bench, seed, max_clients):
    """The same random tables (connections, half-open ones, NAT reverse entries of live, gone and re-placed
    connections, templates) swept by either path: the same map contents, counts and results; also with fewer
    direct-mapped slots than clients (the others in the hash), and when the walk's aggregates overflow (the
    templates' part then reads the swept table)."""
    now = now_ns()
    res_k, maps_k, counts_k = tables_after_sweep(bench, seed, now, "kernel", max_clients)
    res_n, maps_n, counts_n = tables_after_sweep(bench, seed, now, "numpy")
    assert 0 < res_n.nat_expired < res_n.nat_seen and 0 < res_n.nat_half_expired < res_n.nat_half_seen
    assert 0 < res_n.half_open_expired < res_n.half_open_seen and res_n.templates_held > 0
    assert res_k == res_n
    assert maps_k == maps_n
    assert counts_k == counts_n


@needs_root
def test_sweep_falls_back_to_numpy_when_the_walk_cannot_load(bench, monkeypatch):
    """A kernel that refuses the walker (before 5.13 it has no bpf_for_each_map_elem): the sweep says so once and
    reads the tables with numpy."""
    from xlb.dataplane import bpfasm
    from xlb.errors import KernelError

    def refuse(asm, name, **_):
        raise KernelError(f"the kernel refused program {name!r}: Invalid argument\nunknown func bpf_for_each_map_elem")
    monkeypatch.setattr(bpfasm, "load", refuse)
    bench.reset(config(with_spare_real=False))
    said = []
    assert bench.dp.choose_sweep(said.append) == "numpy"
    assert said == ["xlb: the sweep reads the tables with numpy: the in-kernel walk did not load (the kernel "
                    "refused program 'xlb_sweep': Invalid argument)"]
    assert bench.dp.choose_sweep(said.append) == "numpy" and len(said) == 1
    assert bench.dp.sweep().conns_seen == 0


def test_a_walk_that_fails_at_a_sweep_falls_back_to_numpy_for_that_sweep_and_after(bench, monkeypatch):
    """The kernel refuses a walk it loaded (BPF_PROG_TEST_RUN fails): that sweep reads the tables with numpy
    instead, says why once (the daemon logs it), and later sweeps stay on numpy; nothing is raised."""
    from xlb.dataplane import bpfasm
    from xlb.errors import KernelError
    bench.reset(config(with_spare_real=False))
    assert bench.dp.choose_sweep(numpy=False) == "kernel"

    def fail(prog_fd, data=bytes(64)):
        raise KernelError(f"running program fd {prog_fd} failed: Cannot allocate memory")
    monkeypatch.setattr(bpfasm, "test_run", fail)
    assert bench.dp.sweep().conns_seen == 0
    assert "the in-kernel walk failed" in bench.dp.walk_error and "Cannot allocate memory" in bench.dp.walk_error
    assert bench.dp.choose_sweep() == "numpy"


# -- the matching helpers, without root ------------------------------------------------------------------------

def brute_row_index(rows, table, missing):
    where = {tuple(r): i for i, r in enumerate(zip(*table))}
    return [where.get(tuple(r), missing) for r in zip(*rows)]


@pytest.mark.parametrize("seed", range(6))
def test_row_index_is_exact(seed):
    """Rows of three uint64 columns (full 64-bit values, small ranges, constant columns) find their equal table
    row, and only it, whatever the column values share."""
    rng = np.random.default_rng(seed)
    m = int(rng.integers(1, 300))
    big = rng.integers(0, 2**64 - 1, 5, dtype=np.uint64, endpoint=True)
    table = [rng.choice(big, m), rng.integers(0, 4, m, dtype=np.uint64), np.full(m, 7, np.uint64)]
    if seed % 2:
        table[2] = rng.integers(0, 2**64 - 1, m, dtype=np.uint64, endpoint=True)
    uniq = np.unique(np.stack(table, 1), axis=0)
    table = [np.ascontiguousarray(c) for c in uniq.T]
    pick = rng.integers(0, len(table[0]), 500)
    rows = [c[pick].copy() for c in table]
    rows[1][::7] += np.uint64(1)           # some rows become absent, some another table row
    rows[2][::11] ^= np.uint64(1 << 63)
    got = row_index(rows, table, missing=-1)
    assert got.tolist() == brute_row_index(rows, table, -1)


@pytest.mark.parametrize("seed", range(4))
def test_max_per_key_is_the_brute_force_maximum(seed):
    """Each template key's latest expiry among the connections of that key (0 for none), table keys repeated
    and in any order, some keys of neither side in the other."""
    rng = np.random.default_rng(seed)
    keys = rng.integers(-50, 50, 2000)
    values = rng.integers(0, 10**12, 2000)
    table = rng.integers(-60, 60, 300)
    want = [max((v for k, v in zip(keys.tolist(), values.tolist()) if k == t), default=0) for t in table.tolist()]
    assert max_per_key(keys, values, table).tolist() == want
    assert max_per_key(keys[:0], values[:0], table).tolist() == [0] * len(table)


def test_exact_keys_without_table_rows():
    rows = [np.arange(5, dtype=np.uint64), np.zeros(5, np.uint64)]
    _, valid, tk = exact_keys(rows, [np.zeros(0, np.uint64), np.zeros(0, np.uint64)])
    assert not valid.any() and len(tk) == 0
    assert row_index(rows, [np.zeros(0, np.uint64)] * 2, missing=9).tolist() == [9] * 5


def test_hold_due():
    """A hold is written when it drops; when it grows, once the stored one is less than half the new lead ahead of
    now or within the margin (two sweep intervals) of it; never when unchanged."""
    now, margin = 1000 * NS, 2 * NS
    cases = [  # (hold, stored, due)
        (now + 30 * NS, now + 20 * NS, False),    # 20 s left of a 30 s lead: more than half
        (now + 30 * NS, now + 14 * NS, True),     # less than half
        (now + 30 * NS, 0, True),                 # never written
        (now + 3 * NS, now + 2 * NS, False),      # a short lead: more than half left, and at the margin ...
        (now + 3 * NS, now + NS + NS // 2, True),  # ... inside it: the next sweep might come too late
        (now + 10 * NS, now + 30 * NS, True),     # dropped (connections closed)
        (0, now + 30 * NS, True),                 # no live connection left
        (now + 30 * NS, now + 30 * NS, False),
    ]
    hold, stored, due = (np.array(col, np.int64) if i < 2 else list(col) for i, col in enumerate(zip(*cases)))
    assert hold_due(hold, stored, now, margin).tolist() == due


@pytest.mark.parametrize("configured, last, want", [
    (1.0, 0.01, 1.0),      # a quick sweep: as configured
    (1.0, 0.4, 4.0),       # 1M entries here: stretched to a tenth of a CPU
    (1.0, 3.0, 10.0),      # never past 10 s ...
    (30.0, 5.0, 30.0),     # ... unless configured longer
    (0.05, 0.02, 0.2),
])
def test_sweep_interval_stretches_to_a_tenth_of_a_cpu(configured, last, want):
    assert sweep_interval(configured, last) == pytest.approx(want)
