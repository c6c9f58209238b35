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

from xlb.dataplane.testrun import live_frames_refusal

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
                 "new_conn_template_v4", "fwmark_v4", "established_tcp_v4_tun_ipip", "established_tcp_v4_tun_gue_csum"):
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


KATRAN_CASES = ("established_1_flow", "established_16384_flows", "new_conn_syn", "new_conn_setup",
                "new_conn_syn_persist_hit", "new_conn_setup_persist_hit")


def test_katran_side_by_side(quick_run):
    """Katran ran next to xlb on every case, each recording what it should; or the run says why it did not."""
    _, r, stdout = quick_run
    k = r["katran"]
    assert "## Side by side with Katran" in stdout
    if not k["present"]:
        assert k["reason"] and f"Not run: {k['reason']}" in stdout
        return
    for name in KATRAN_CASES:
        c = k["cases"][name]
        for key in ("ratio_to_katran", "ratio_to_katran_cold", "xlb_ns", "katran_ns", "pass_ns"):
            assert isinstance(c[key], (int, float)) and c[key] > 0, (name, key)
        # Every driven run took the forwarding path to its end: Katran's IPIP frame was undone before each rerun.
        assert c["actions"] == {"xlb": "XDP_TX", "katran": "XDP_TX"}, name
        assert set(c["cold_actions"]["xlb"]) == set(c["cold_actions"]["katran"]) == {"XDP_TX"}, name
    for name in ("new_conn_syn", "new_conn_setup"):
        c = k["cases"][name]
        assert c["recorded"] == {"xlb": c["flows_sent"], "katran": c["flows_sent"]}, name
    for name in ("new_conn_syn_persist_hit", "new_conn_setup_persist_hit"):
        c = k["cases"][name]
        assert c["recorded"]["xlb"] == c["flows_sent"], name
        assert c["recorded"]["katran"] == 65535, name  # one entry per client, made beforehand: every SYN a hit
    assert k["notes"]["table_entries_per_cpu"] > 0


def test_katran_missing_is_reported(tmp_path, monkeypatch):
    from bench import katran_peer, report
    monkeypatch.setenv(katran_peer.ENV_DIR, str(tmp_path))
    got, reason = katran_peer.open_peer(lambda msg: None)
    assert got is None and str(tmp_path / "katran.py") in reason
    assert f"Not run: {reason}." in "\n".join(report._katran({"present": False, "reason": reason}))


def test_nat_bench_config_reads():
    """bench/nat.py adds a NAT service to micro.py's config: its VIP must be none of micro.py's (when micro.py gained
    the tunnel services, a clash on 198.51.100.14 stopped `python -m bench.nat` at its config)."""
    from bench import nat
    from xlb.config.read import parse
    cfg = parse(nat.TOML, "<bench>")
    assert [str(s.vip) for s in cfg.services if s.method == "nat"] == [nat.VIP_NAT]
