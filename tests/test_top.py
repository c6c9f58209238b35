"""`xlb top` (xlb/top.py): the rendering is a pure function of two snapshots and an interval; the loop prints N frames
for scripts, and interactively quits cleanly on q and on Ctrl-C with the terminal restored."""
import io
import os
import pty
import select
import signal
import termios
import time

import pytest

from xlb import top


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
