"""`python -m bench --quick` runs end to end and writes the result shape other tools read. No timing is asserted:
only that every part ran, measured what it says (the expected XDP actions and verdicts), and wrote its files.
On a kernel that refuses live frames (the forwarding part's generator) that part must say so and generate with an
AF_PACKET TX ring instead."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from xlb.testrun import live_frames_refusal

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, XDP)")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    res = subprocess.run([sys.executable, "-m", "bench", "--quick", "--json", str(out / "r.json"),
                          "--plots", str(out), "--prefix", "xbt"], cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr
    return out, json.loads((out / "r.json").read_text()), res.stdout


@pytest.fixture(scope="module")
def refusal():
    """Why this kernel refuses live frames, or None: which generator the forwarding part must have used."""
    return live_frames_refusal()


def test_json_shape(quick_run, refusal):
    _, r, _ = quick_run
    assert set(r) >= {"machine", "micro", "forward", "control"}
    for case in ("established_tcp_v4", "new_conn_persist_hit_v4", "min_fwd"):
        assert isinstance(r["micro"][case]["ns_per_pkt"], (int, float))
        assert isinstance(r["micro"][case]["ratio_to_min_fwd"], (int, float))
    generator = r["notes"]["forward"]["generator"]
    if refusal:
        assert generator == f"an AF_PACKET TX ring (bench/ringgen.py): {refusal}"
    else:
        assert generator == "xb_gen under BPF_PROG_TEST_RUN with live frames"
    for system in ("xlb", "floor", "nft_dnat"):
        assert r["forward"][system]["mpps"] > 0
        assert r["forward"][system]["offered_mpps"] > 0
    for name, v in r["control"].items():
        assert "seconds" in v, name


def test_micro_cases_took_the_paths_they_name(quick_run):
    _, r, _ = quick_run
    m = r["micro"]
    assert m["non_vip_pass"]["action"] == "XDP_PASS"
    assert set(m["non_vip_pass"]["verdicts"]) == {"pass_no_service"}
    for case in ("established_tcp_v4", "established_tcp_v6", "udp_v4", "new_conn_v4", "new_conn_persist_hit_v4",
                 "new_conn_template_v4", "fwmark_v4"):
        assert m[case]["action"] == "XDP_TX", case
        assert set(m[case]["verdicts"]) == {"fwd_tx"}, case
        assert set(m[case]["cold_actions"]) == {"XDP_TX"}, case
    # A persistence hit creates no template; the template case creates one per driven run.
    assert m["new_conn_persist_hit_v4"]["templates_created"] == 0
    assert m["new_conn_template_v4"]["templates_created"] == m["new_conn_template_v4"]["runs"]


def test_forwarding_delivered_what_was_offered(quick_run):
    _, r, stdout = quick_run
    assert f"Generator: {r['notes']['forward']['generator']}." in stdout
    assert set(r["forward"]) == {"xlb", "floor", "nft_dnat", "kernel_fwd"}
    for system, s in r["forward"].items():
        for mix, v in s["mixes"].items():
            assert v["delivered"] > 0.99 * v["offered"], (system, mix, v)


def test_files_written(quick_run):
    out, _, stdout = quick_run
    assert (out / "bench-micro.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "bench-forward.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "summary.md").read_text() == stdout.rstrip("\n") + "\n"
