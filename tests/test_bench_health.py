"""`python -m bench.health` runs end to end for both checkers it measures and reports what docs/health.md quotes:
checks asked and achieved, failures, SYNs its servers dropped, the engine's CPU and the load average. A small
run (200 reals); no figure is asserted but the checks' own outcome (every one passed: the servers answered)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import needs_root

ROOT = Path(__file__).resolve().parent.parent

KEYS = {"asked_checks_per_s", "checks_per_s", "timing_allows_checks_per_s", "mean_check_ms", "mean_period_s",
        "mean_late_ms", "checks", "failed", "syn_dropped_accept_queue_full", "checkers_down", "wall_s", "user_s",
        "system_s", "engine_cores", "cpu_per_1000_checks_per_s", "servers_cores", "engine_runqueue_wait", "loadavg_1m", "kind", "reals",
        "delay_loop", "servers"}


@needs_root
@pytest.mark.parametrize("kind", ["TCP_CHECK", "HTTP_GET"])
def test_a_small_run_reports_every_figure(kind):
    proc = subprocess.Popen([sys.executable, "-m", "bench.health", "--reals", "200", "--delay-loop", "0.5",
                             "--seconds", "1", "--kind", kind, "--servers", "2"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:       # SIGTERM, not run()'s SIGKILL: the bench then removes its namespace
            proc.terminate()
            proc.communicate(timeout=15)
    assert proc.returncode == 0, stderr
    out = json.loads(stdout)
    assert set(out) == KEYS
    assert (out["kind"], out["reals"], out["servers"], out["asked_checks_per_s"]) == (kind, 200, 2, 400)
    assert out["checks"] > 0 and out["failed"] == 0 and out["checkers_down"] == 0, out
    assert out["syn_dropped_accept_queue_full"] >= 0 and len(out["loadavg_1m"]) == 2
    assert out["cpu_per_1000_checks_per_s"] > 0
