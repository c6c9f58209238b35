"""`xlb top` (xlb/observe/top.py): the rendering is a pure function of two snapshots and an interval; the loop prints N frames
for scripts, and interactively quits cleanly on q and on Ctrl-C with the terminal restored. The snapshot it fetches
(xlb/observe/stats.py) is exact against a real data plane and read in batches."""
import ctypes as ct
import io
import os
import pty
import select
import signal
import termios
import time

import pytest
from conftest import needs_root

from xlb.observe import stats, top


def snap(conns=0, packets=0, bytes_=0, real_conns=(0, 0), active=(0, 0), drops=0, extra_real=False):
    reals = [{"address": "198.18.0.11", "weight": 1, "packets": packets, "bytes": bytes_, "conns": real_conns[0],
              "active": active[0], "inactive": 1},
             {"address": "198.18.0.12", "weight": 0, "packets": 0, "bytes": 0, "conns": real_conns[1],
              "active": active[1], "inactive": 0}]
    if extra_real:
        reals.append({"address": "198.18.0.13", "weight": 2, "packets": 50, "bytes": 5000, "conns": 5,
                      "active": 3, "inactive": 0})
    return {"services": [{"service": "tcp/198.51.100.10:80", "scheduler": "rr", "packets": packets,
                          "bytes": bytes_, "conns": conns, "reals": reals}],
            "verdicts": {"fwd_tx": {"packets": packets, "bytes": bytes_}, "drop_bad_tcp": {"packets": drops, "bytes": 0}},
            "marks": []}


def test_rates_over_the_interval():
    prev = snap(conns=10, packets=100, bytes_=1000, real_conns=(4, 6), drops=1)
    cur = snap(conns=30, packets=300, bytes_=5000, real_conns=(14, 16), active=(7, 2), drops=5)
    lines = top.render(prev, cur, 2.0)
    assert lines[0] == ("xlb top - every 2.0s - 1 services, 2 reals - 10 conn/s, 100 pkt/s, 2.0KB/s, "
                        "9 active, 2 drops/s")
    assert lines[2] == top.HEADER
    assert lines[3] == f"{'tcp/198.51.100.10:80 rr':<40}{'10':>9}{'100':>10}{'2.0KB':>11}{'9':>9}{'1':>8}"
    assert lines[4] == f"{'  -> 198.18.0.11 w1':<40}{'5':>9}{'100':>10}{'2.0KB':>11}{'7':>9}{'1':>8}"
    assert lines[5] == f"{'  -> 198.18.0.12 w0':<40}{'5':>9}{'0':>10}{'0B':>11}{'2':>9}{'0':>8}"
    assert len(lines) == 6


def test_a_real_new_since_the_last_snapshot_counts_from_zero():
    lines = top.render(snap(), snap(extra_real=True), 1.0)
    assert lines[-1] == f"{'  -> 198.18.0.13 w2':<40}{'5':>9}{'50':>10}{'5.0KB':>11}{'3':>9}{'0':>8}"


def test_a_counter_that_went_back_shows_no_negative_rate():
    lines = top.render(snap(conns=50, packets=500), snap(conns=3, packets=20), 1.0)
    assert lines[3].split()[2:4] == ["0", "0"]


def test_width_truncates_and_long_names_are_marked():
    cur = snap()
    cur["services"][0]["service"] = "udp/[2001:db8:100:200:300:400:500:10]:5353"
    lines = top.render(snap(), cur, 1.0, width=30)
    assert all(len(ln) <= 30 for ln in lines)
    wide = top.render(snap(), cur, 1.0)
    assert wide[3][:40] == "udp/[2001:db8:100:200:300:400:500:10]:~ "


@pytest.mark.parametrize("value,unit,want", [(0, "", "0"), (999, "", "999"), (1500, "", "1.5K"), (2.5, "", "2.5"),
                                             (3_200_000, "B", "3.2MB"), (7e9, "", "7.0G")])
def test_human(value, unit, want):
    assert top.human(value, unit) == want


def test_iterations_print_frames_without_a_terminal():
    snaps = iter([snap(conns=0), snap(conns=1), snap(conns=3)])
    out = io.StringIO()
    assert top.run(lambda: next(snaps), interval=0.01, iterations=2, out=out) == 0
    frames = out.getvalue().split("\n\n")
    assert len([f for f in frames if f.startswith("xlb top - every")]) == 2
    assert "\x1b[" not in out.getvalue()


def test_interactive_needs_a_terminal():
    with pytest.raises(SystemExit, match="not a terminal"):
        top.run(lambda: snap(), interval=0.01, out=io.StringIO(), inp=io.StringIO())


def _interactive(key):
    """Run top.run in a child on a pseudo-terminal; press key after the first frame. (exit status, output)."""
    pid, master = pty.fork()
    if pid == 0:  # the child: its stdin/stdout are the terminal
        rc = 99
        try:
            # The terminal's own fds: pytest has replaced sys.stdin/stdout.
            signal.signal(signal.SIGINT, signal.default_int_handler)
            saved = termios.tcgetattr(0)
            rc = top.run(lambda: snap(), interval=0.05, out=os.fdopen(1, "w"), inp=os.fdopen(0, "r"))
            if termios.tcgetattr(0) != saved:
                rc = 98  # the terminal was left in cbreak mode
        finally:
            os._exit(rc)
    out = b""
    deadline = time.monotonic() + 20
    sent = False
    status = None
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.1)
        if ready:
            try:
                out += os.read(master, 65536)
            except OSError:
                pass
        if not sent and b"SERVICE / REAL" in out:
            os.write(master, key)
            sent = True
        done, st = os.waitpid(pid, os.WNOHANG)
        if done:
            status = st
            break
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise AssertionError(f"xlb top did not quit on {key!r}; output: {out[-300:]!r}")
    try:
        while select.select([master], [], [], 0.1)[0]:
            out += os.read(master, 65536)
    except OSError:
        pass
    os.close(master)
    return status, out


@pytest.mark.parametrize("key", [b"q", b"\x03"], ids=["q", "ctrl-c"])
def test_interactive_quits_cleanly(key):
    status, out = _interactive(key)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, (status, out[-300:])
    assert top.ALT_ON.encode() in out
    assert out.rstrip(b"\r\n").endswith(top.ALT_OFF.encode()), out[-100:]
    assert b"tcp/198.51.100.10:80" in out


# -- the snapshot top shows (xlb/observe/stats.py), from a real data plane -----------------------------------------------

@needs_root
def test_snapshot_reads_counters_in_batches(bench, monkeypatch):
    """After known packets the `stats` snapshot has exact figures, the same as a slot-by-slot read, and it gets
    them without one (DataPlane.counters is what reads a slot at a time)."""
    from harness import BENCH_CONFIG, tcp_exchange
    dp = bench.reset(BENCH_CONFIG)
    for i in range(4):
        assert bench.run(tcp_exchange("198.51.100.10", 46000 + i))[0] == "XDP_TX"
        assert bench.run(tcp_exchange("198.51.100.10", 46000 + i, flags="A", payload=b"0123456789"))[0] == "XDP_TX"
    for src, port in (("203.0.113.7", 80), ("192.0.2.9", 443)):
        assert bench.run(tcp_exchange("198.51.100.20", 47000, dport=port, src=src))[0] == "XDP_TX"
    slot = {}
    for st in dp.services.values():
        slot[st.svc.name] = dp.counters("svc_stats", st.id)
        for r in st.svc.reals:
            slot[(st.svc.name, str(r.address))] = dp.counters("real_stats", dp.real_ids.get((st.svc.key, r.address, r.port or 0)))
    verdicts = {k: {"packets": v.packets, "bytes": v.bytes} for k, v in dp.verdict_counts().items() if v.packets}
    monkeypatch.setattr(dp, "counters", lambda *a: pytest.fail("snapshot read a counters slot by slot"))

    snap = stats.snapshot(dp)

    by_name = {s["service"]: s for s in snap["services"]}
    svc80 = by_name["tcp/198.51.100.10:80"]
    assert (svc80["conns"], svc80["packets"], svc80["bytes"]) == (4, 8, 4 * 54 + 4 * 64)
    assert [(r["address"], r["conns"], r["active"]) for r in svc80["reals"]] == [
        ("198.18.0.11", 2, 2), ("198.18.0.12", 2, 2), ("198.18.0.13", 0, 0)]
    assert by_name["fwm/5"]["conns"] == 2 and by_name["fwm/5"]["reals"][0]["inactive"] == 2
    for name, s in by_name.items():
        assert (s["packets"], s["bytes"], s["conns"]) == (slot[name].packets, slot[name].bytes, slot[name].conns)
        for r in s["reals"]:
            c = slot[(name, r["address"])]
            assert (r["packets"], r["bytes"], r["conns"]) == (c.packets, c.bytes, c.conns)
    assert snap["verdicts"] == verdicts and verdicts["fwd_tx"]["packets"] == 10
    assert snap["marks"] == [{"rule": dp.config.marks[0].where, "mark": 5, "hits": 2}]
    # A config applied since: the next snapshot follows it (the per-config layout is rebuilt).
    dp.apply(bench.config(BENCH_CONFIG.replace('  [[service.real]]\n  address = "198.18.0.12"\n', "")))
    svc80 = {s["service"]: s for s in stats.snapshot(dp)["services"]}["tcp/198.51.100.10:80"]
    assert [r["address"] for r in svc80["reals"]] == ["198.18.0.11", "198.18.0.13"]


@needs_root
def test_percpu_sums_past_64_bits_stay_exact(bench):
    """Counters are u64 per CPU; their sum over CPUs is exact even where it passes 2**64."""
    dp = bench.reset('[[service]]\nvip = "198.51.100.10"\nport = 80\nproto = "tcp"\n'
                     '  [[service.real]]\n  address = "198.18.0.11"\n')
    table = dp.m["svc_stats"]
    (st,) = dp.services.values()
    leaf = table.Leaf()
    for i in range(len(leaf)):
        leaf[i].packets, leaf[i].bytes, leaf[i].conns = 2**64 - 1, 10 + i, 1
    table[ct.c_uint32(st.id)] = leaf
    ncpu = len(leaf)
    assert stats.percpu_counters(table, st.id + 1)[st.id] == (ncpu * (2**64 - 1), 10 * ncpu + ncpu * (ncpu - 1) // 2,
                                                             ncpu)
