"""Part 3: control-plane scale. Wall seconds unless a figure says CPU seconds (user + system of this process)."""
import ctypes as ct
import dataclasses
import importlib.util
import ipaddress
import os
import time
from array import array

from xlb.config import model as xconfig
from xlb.config import read as xread
from xlb.ops import listings as runtime
from xlb.observe import stats
from xlb.tables import sched
from xlb.dataplane.apply import DataPlane
from xlb.dataplane.program import Program, cflags_for
from xlb.config.model import addr_bytes
from xlb.dataplane.mapkeys import now_ns

from . import lab as L


def _real_addr(i):
    return str(ipaddress.IPv4Address("198.18.16.0") + i)


def _service(vip, port, nreals, first_real=0, extra=""):
    reals = "".join(f'\n  [[service.real]]\n  address = "{_real_addr(first_real + j)}"\n' for j in range(nreals))
    return f'[[service]]\nvip = "{vip}"\nport = {port}\nproto = "tcp"\n{extra}{reals}\n'


def _many_services(n, reals_each):
    """n services (VIPs of 203.0.113.0/24 x ports), each with its own reals."""
    out = []
    for i in range(n):
        vip = f"203.0.113.{1 + i // 8}"
        out.append(_service(vip, 8000 + i % 8, reals_each, i * reals_each, 'scheduler = "wrr"\n'))
    return "".join(out)


def _timed(fn):
    t0, c0 = time.perf_counter(), time.process_time()
    res = fn()
    return res, time.perf_counter() - t0, time.process_time() - c0


def maglev(lab, out):
    for n in (10, 100, 1000):
        reals = [(addr_bytes(_real_addr(i)), 1) for i in range(n)]
        table, compute, _ = _timed(lambda: sched.maglev_table(reals, 65537))
        toml = _service("198.51.100.40", 80, n, extra='scheduler = "mh"\nmh_table_size = 65537\n')
        lab.dataplane("")
        config, parse_s, _ = _timed(lambda: lab.config(toml))
        _, secs, _ = _timed(lambda: lab.dp.apply(config))
        (st,) = lab.dp.services.values()
        _, write, _ = _timed(lambda: lab.dp.write_slots(st.region[0], st.table))  # the same slots again
        out[f"maglev_{n}_reals"] = {"seconds": round(secs, 4), "compute_seconds": round(compute, 4),
                                    "write_seconds": round(write, 4), "parse_seconds": round(parse_s, 4),
                                    "table_size": len(table), "what": "DataPlane.apply of one mh service (its "
                                    "config parsed beforehand): compute and write its Maglev table; "
                                    "write_seconds: the 65537-slot batch write alone"}


def apply_services(lab, out):
    text = _many_services(1000, 2)
    _, parse_s, _ = _timed(lambda: xread.parse(text, "<bench>"))
    lab.dataplane("")
    _, secs, _ = _timed(lambda: lab.apply(text))
    _, again, _ = _timed(lambda: lab.apply(text))
    out["apply_1000_services"] = {"seconds": round(secs, 3), "parse_seconds": round(parse_s, 3),
                                  "reapply_unchanged_seconds": round(again, 3), "reals": 2000}


def _services_per_vip(n, reals_each, ports=40):
    """n services of `reals_each` reals each: VIPs of 203.0.113.0/24, `ports` ports each (10,000 fit)."""
    return "".join(_service(f"203.0.113.{1 + i // ports}", 8000 + i % ports, reals_each, i * reals_each,
                            'scheduler = "wrr"\n') for i in range(n))


def _median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def _medians(runs, names):
    """Each run is [(wall, CPU seconds)] of the timings `names` name, in that order: {NAMEseconds: median wall,
    NAMEcpu_seconds: median CPU} over the runs."""
    out = {}
    for i, name in enumerate(names):
        out[f"{name}seconds"] = round(_median([r[i][0] for r in runs]), 3)
        out[f"{name}cpu_seconds"] = round(_median([r[i][1] for r in runs]), 3)
    return out


def apply_at_scale(out, quick, rounds=3):
    """DataPlane.apply of 10,000 services x 10 reals (issue 17's goal: under 1 s), on a program compiled for them
    (bpf/consts.h's defaults hold 8191 services and 65535 reals); then the same config again, and one with one
    real's weight changed (a reload: only the difference is written). `rounds` times, each with a new DataPlane
    whose first apply writes every entry (the services map emptied first): medians of wall and CPU seconds."""
    n = 10_000
    if quick:
        out[f"apply_{n // 1000}k_services_x10"] = {"seconds": None, "skipped": "--quick: compiling a program for "
                                                   "10,000 services takes seconds"}
        return
    tables = xconfig.Tables(conns=65536, templates=16384)
    prog = Program(cflags=cflags_for(tables) + [f"-DXLB_MAX_SERVICES={2 * n}", f"-DXLB_MAX_REALS={20 * n}"],
                   log=None)
    try:
        text = _services_per_vip(n, 10)
        config, parse_s, _ = _timed(lambda: dataclasses.replace(xread.parse(text, "<bench>"), tables=tables))
        changed = dataclasses.replace(xread.parse(text.replace('address = "198.18.16.5"\n',
                                                               'address = "198.18.16.5"\n  weight = 3\n', 1),
                                                  "<bench>"), tables=tables)
        load = os.getloadavg()[0]

        def one_round():
            prog["services"].items_delete_batch()
            dp = DataPlane(prog, tables)
            return [_timed(lambda: dp.apply(c))[1:] for c in (config, config, changed)]

        runs = [one_round() for _ in range(rounds)]
    finally:
        prog.close()
    out[f"apply_{n // 1000}k_services_x10"] = {
        **_medians(runs, ("", "reapply_unchanged_", "reload_one_weight_")), "parse_seconds": round(parse_s, 3),
        "reals": 10 * n, "rounds": rounds, "loadavg": [round(load, 2), round(os.getloadavg()[0], 2)],
        "what": "DataPlane.apply of a parsed config into empty maps; then unchanged; then one weight changed "
                "(medians of the rounds; loadavg: the 1-minute load average before and after)"}


def metrics_scrape(lab, out, rounds=5):
    """Scrapes through xlb.observe.metrics's documented API: XlbCollector(dp, None).exposition(), as /metrics serves;
    medians of `rounds` (wall and CPU seconds)."""
    if importlib.util.find_spec("xlb.observe.metrics") is None:
        out["metrics_scrape_1000x10"] = {"seconds": None, "skipped": "xlb.observe.metrics is not there yet"}
        return
    from xlb.observe.metrics import XlbCollector
    dp = lab.dataplane(_many_services(1000, 10))
    collector = XlbCollector(dp, None)
    collector.exposition()  # warm-up: first-use imports and allocations
    load = os.getloadavg()[0]
    runs = [[_timed(collector.exposition)[1:]] for _ in range(rounds)]
    out["metrics_scrape_1000x10"] = {**_medians(runs, ("",)), "bytes": len(collector.exposition()),
                                     "rounds": rounds, "loadavg": [round(load, 2), round(os.getloadavg()[0], 2)],
                                     "what": "XlbCollector.exposition(), 1000 services x 10 reals (medians)"}
    stats.snapshot(dp)  # warm-up, as for the scrape: the first call also lays out the config's names and ids
    snap, secs, cpu = _timed(lambda: stats.snapshot(dp))
    out["top_snapshot_1000x10"] = {"seconds": round(secs, 3), "cpu_seconds": round(cpu, 3),
                                   "reals": sum(len(s["reals"]) for s in snap["services"]),
                                   "what": "the daemon's `stats` snapshot that `xlb top` fetches every refresh"}
    rates = runtime.RateEstimator()
    rates.sample(dp, t=0.0)
    _, secs, cpu = _timed(lambda: rates.sample(dp, t=2.0))
    out["rate_sample_1000x10"] = {"seconds": round(secs, 3), "cpu_seconds": round(cpu, 3),
                                  "what": "the daemon's rate estimator, every 2 s (ipvsadm --rate)"}
    _, secs, cpu = _timed(lambda: runtime.listing(dp, rates))
    out["list_1000x10"] = {"seconds": round(secs, 3), "cpu_seconds": round(cpu, 3),
                           "what": "the daemon's side of `xlb list` / `xlb ipvsadm -L`"}


def _le32(addr):
    return int.from_bytes(ipaddress.ip_address(addr).packed, "little")


def _conn_values(seen, rid, gen, sid):
    """Established connections' 24-byte values, last seen at `seen` (ns each), placed on real rid of service sid."""
    n = len(seen)
    vals = array("I", bytes(24 * n))
    vals[0::6] = array("I", (s & 0xFFFFFFFF for s in seen))
    vals[1::6] = array("I", (s >> 32 for s in seen))
    vals[2::6] = array("I", [rid]) * n
    vals[3::6] = array("I", [gen]) * n
    vals[4::6] = array("I", [sid]) * n
    vals[5::6] = array("I", [1]) * n  # XLB_CS_EST
    return vals


def _fill_conns(conns, keys, vals, n):
    """Write n connections (40-byte keys, 24-byte values in two arrays), each CPU's share from that CPU (as
    connections arrive on every CPU)."""
    cpus = sorted(os.sched_getaffinity(0))
    old = L.pin_cpu(cpus[0])
    try:
        share = -(-n // len(cpus))
        for i, cpu in enumerate(cpus):
            L.pin_cpu(cpu)
            lo, hi = i * share, min(n, (i + 1) * share)
            if lo < hi:
                conns.items_update_batch((conns.Key * (hi - lo)).from_buffer(keys, lo * 40),
                                         (conns.Leaf * (hi - lo)).from_buffer(vals, lo * 24))
    finally:
        L.unpin(old)


def sweep(lab, out, n, templates=False, rounds=3, persistent=True):
    """n connections (a quarter expired) of 65536 clients; with templates, each client's template too, its timer
    run out: the clients with a live connection hold theirs (a hold to write), the others' expire. Not persistent:
    the same connections of a service without persistence (no template matching: the walk's floor). Each round
    sweeps the same tables by both paths (DataPlane.choose_sweep), the kernel's walk and numpy over batched
    reads, in this process: the figures are the kernel's (the default), with the numpy path's beside them and the
    median of the per-round ratios."""
    dp = lab.dataplane(_service("198.51.100.30", 80, 3, extra='persistence_timeout = 300\n' if persistent else ""))
    st = next(iter(dp.services.values()))
    rid = st.table[0]
    timeout = 900 * 10**9
    # A clock at least two timeouts past boot, so the expired entries' times are not negative on a machine up for
    # less than that (the sweeps are given it: nothing else reads these tables meanwhile).
    now = max(now_ns(), 3 * timeout)
    keys = array("I", bytes(40 * n))
    base = int(ipaddress.IPv4Address("198.19.0.0"))
    keys[0::10] = array("I", (int.from_bytes((base + (i & 0xFFFF)).to_bytes(4, "big"), "little")
                              for i in range(n)))
    keys[4::10] = array("I", [_le32("198.51.100.30")]) * n
    keys[8::10] = array("I", ((int.from_bytes((1024 + (i >> 16)).to_bytes(2, "big"), "little")
                               | (80 << 8) << 16) for i in range(n)))
    keys[9::10] = array("I", [6 | 4 << 8]) * n
    # A quarter expired, the rest established and live; all placed by the persistent service (holds computed).
    seen = [(now - 2 * timeout if i % 4 == 0 else now) for i in range(n)]
    live = [i for i in range(n) if seen[i] == now]
    live_keys = array("I", b"".join(keys[10 * i:10 * i + 10].tobytes() for i in live))
    vals, next_vals = _conn_values(seen, rid, dp.gens[rid], st.id), _conn_values([now + 10**9] * len(live), rid,
                                                                              dp.gens[rid], st.id)
    name = f"sweep_{n // 1000}k_conns" if n < 10**6 else f"sweep_{n // 10**6}m_conns"
    name += "" if persistent else "_not_persistent"
    conns, persist = lab.prog["conns"], lab.prog["persist"]
    clients = min(n, 65536)
    if templates:
        tkeys = (persist.Key * clients)()
        tvals = (persist.Leaf * clients)()
        for i in range(clients):
            ct.memmove(ct.addressof(tkeys[i].svc), st.key_bytes, len(st.key_bytes))
            tkeys[i].client[0] = keys[10 * i]
            tvals[i] = persist.Leaf(last_new_ns=now - 400 * 10**9, real_id=rid, real_gen=dp.gens[rid])
        name += f"_{clients // 1024}k_templates"
    runs = {"kernel": [], "numpy": []}
    for _ in range(rounds):
        for path in ("numpy", "kernel"):
            dp.choose_sweep(numpy=path == "numpy")
            _fill_conns(conns, keys, vals, n)
            if templates:
                persist.items_update_batch(tkeys, tvals)
            res, secs, cpu = _timed(lambda: dp.sweep(now))
            # The next sweep, a second later, after a packet of every live connection (its last-seen time a second
            # on): the expired entries are gone, and each hold has moved, but is only rewritten once the stored
            # one has used up half of its lead.
            _fill_conns(conns, live_keys, next_vals, len(live))
            _, next_secs, next_cpu = _timed(lambda: dp.sweep(now + 10**9))
            runs[path].append((res, secs, cpu, next_secs, next_cpu))
            conns.items_delete_batch()
            if templates:
                persist.items_delete_batch()
    dp.choose_sweep(numpy=False)
    res = runs["kernel"][0][0]
    if any(dataclasses.replace(r[0], seconds=0) != dataclasses.replace(res, seconds=0)
           for path in runs for r in runs[path]):
        raise AssertionError(f"{name}: the sweep's paths or rounds disagree: {runs}")

    def median(path, i):
        return round(sorted(r[i] for r in runs[path])[rounds // 2], 3)

    def ratio(i):
        return round(sorted(k[i] / m[i] for k, m in zip(runs["kernel"], runs["numpy"]))[rounds // 2], 2)
    out[name] = {"seconds": median("kernel", 1), "cpu_seconds": median("kernel", 2), "conns_seen": res.conns_seen,
                 "conns_expired": res.conns_expired, "templates_seen": res.templates_seen,
                 "templates_held": res.templates_held, "templates_expired": res.templates_expired,
                 "templates_missing": res.templates_missing,
                 "next_seconds": median("kernel", 3), "next_cpu_seconds": median("kernel", 4),
                 "numpy_cpu_seconds": median("numpy", 2), "numpy_next_cpu_seconds": median("numpy", 4),
                 "cpu_ratio_to_numpy": ratio(2), "next_cpu_ratio_to_numpy": ratio(4),
                 "how": f"medians of {rounds} rounds, each sweeping the same tables by the kernel's walk and by "
                        "numpy over batched reads (DataPlane.choose_sweep), in this process"}


def _memlock(table):
    with open(f"/proc/self/fdinfo/{table.map_fd}") as f:
        for line in f:
            if line.startswith("memlock:"):
                return int(line.split()[1])
    return 0


def memory(lab):
    small_t = xconfig.Tables(conns=65536, templates=16384)
    small = Program(cflags=cflags_for(small_t), log=None)
    try:
        big = lab.tables
        conn = (_memlock(lab.prog["conns"]) - _memlock(small["conns"])) / (big.conns - small_t.conns)
        tmpl = (_memlock(lab.prog["persist"]) - _memlock(small["persist"])) / (big.templates - small_t.templates)
    finally:
        small.close()
    return {"conn_bytes": round(conn, 1), "template_bytes": round(tmpl, 1),
            "how": f"fdinfo memlock of conns/persist at {big.conns}/{big.templates} and "
                   f"{small_t.conns}/{small_t.templates} entries: the difference per entry"}


def run(lab, quick=False, log=print):
    """Returns the JSON "control" section and the "memory" one."""
    log("bench: control plane")
    out = {}
    maglev(lab, out)
    apply_services(lab, out)
    apply_at_scale(out, quick)
    metrics_scrape(lab, out)
    n, rounds = (100_000, 1) if quick else (1_000_000, 3)
    sweep(lab, out, n, rounds=rounds)
    sweep(lab, out, n, templates=True, rounds=rounds)
    sweep(lab, out, n, persistent=False, rounds=rounds)
    mem = {"skipped": "--quick: loading a second program takes seconds"} if quick else memory(lab)
    lab.dataplane("")
    return out, mem
