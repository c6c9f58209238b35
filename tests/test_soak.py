"""The soak and its faults (issue 18; docs/reliability.md "Soak" and "Faults"), marked `soak`: `pytest -m soak`.

Real TCP and UDP through the DR lab (tests/soak.py): ~200 new connections a second and 300 long-lived ones while
the config is reloaded every second (weights, rs3 added and removed, a mark rule moved), runtime edits arrive over
the control socket and through `xlb ipvsadm`, and rs2's TCP check fails and recovers. The second test kills the
daemon with SIGKILL every few seconds and restarts it on its pins, reloading in between. SOAK_SECONDS sets the
length (the suite's profile: 60 s and 24 s; `make soak`: 600 s each).
"""
import os

import pytest
from conftest import needs_root

from soak import LONG, STABLE, Soak, problems, report

SECONDS = float(os.environ.get("SOAK_SECONDS", "0")) or None
pytestmark = [pytest.mark.soak, needs_root]


def check_longs(figs, res):
    """Every long-lived connection to a real that stayed configured lived to the end, on its real."""
    longs = res["longs"]
    assert len(longs) == LONG
    bad = [r for r in longs if r["real"] in STABLE and r["failure"]]
    assert bad == [], figs
    # A connection that never got its first answer would escape the line above.
    assert all(r["real"] is not None for r in longs), figs


def check_shorts(figs, res, budget):
    """New connections: all answered but at most `budget` of them (those placed on rs3 as it left)."""
    shorts = res["shorts"]
    ok = shorts.get("tcp ok", 0) + shorts.get("udp ok", 0)
    assert ok >= 150 * res["seconds"] * 0.8, figs  # the rate was kept (~200/s asked, on a busy 2-core machine)
    assert sum(shorts.values()) - ok <= budget, figs


def test_soak_with_reloads_edits_and_health_flips(tmp_path):
    seconds = SECONDS or 60
    with Soak(tmp_path, "xsk1") as soak:
        res = soak.run(seconds)
        figs = soak.figures(res)
        figs["drained after s"] = round(soak.drained(), 1)
        report(figs)
        log = soak.log.read_text()
        said = problems(log)
        assert not said, said
        assert soak.lab.daemon.is_alive()
        check_longs(figs, res)
        check_shorts(figs, res, budget=0.01 * sum(res["shorts"].values()))
        # The health check really flipped: rs2 went down and came back (keepalived's words in the log).
        assert soak.events["health flips"] >= 2 and "Removing service [198.18.0.12]" in log \
            and "Adding service [198.18.0.12]" in log, log
        # Memory: after the first third, the daemon's RSS stays within 16 MB of what it was then.
        third = [s[2] for s in soak.samples[len(soak.samples) // 3:]]
        assert max(third) - third[0] <= 16 * 2**20, figs
        # The table holds what the traffic needs (~200/s for tcpfin 2 s, 300 long-lived, templates), not more.
        assert figs["entries max"] <= 4000, figs
        # The sweep never needed a stretched interval (it logs one when a sweep took over a tenth of its period).
        assert "sweeping every" not in log, log
        assert figs["daemon CPU share"] < 0.6, figs


def test_soak_with_kill9_every_few_seconds(tmp_path):
    seconds = SECONDS or 24  # a restart compiles the program (15-30 s here): one kill in the suite's profile
    with Soak(tmp_path, "xsk2") as soak:
        res = soak.run(seconds, kill_every=3.0)
        figs = soak.figures(res)
        figs["drained after s"] = round(soak.drained(), 1)
        report(figs)
        log = soak.log.read_text()
        assert soak.events["kills"] >= 1, figs
        assert log.count("xlb: adopted the maps pinned in") >= soak.events["kills"], log[-3000:]
        said = problems(log)
        assert not said, said
        check_longs(figs, res)
        check_shorts(figs, res, budget=0.01 * sum(res["shorts"].values()))
