"""What an install puts around the CLI: the systemd unit (tools/xlb@.service), the sample config, the man page and
shell completion generated from the parser (`make man`, `make completion`).

The unit cannot be started here (no systemd as PID 1): `systemd-analyze verify` checks it, and its capability set is
checked by running `xlb run` with exactly that bounding set, and without each capability in it (setpriv).
"""
import argparse
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import needs_root

from xlb.cli import build_parser

from harness import lb_host

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "tools" / "xlb@.service"
SAMPLE = REPO / "tools" / "xlb.toml.example"
XLB = Path(sys.executable).parent / "xlb"  # the suite's install of the CLI


def subcommands():
    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return list(sub.choices)


def unit_settings():
    """{key: [values]} of the unit's [Service] section (systemd allows a key more than once)."""
    section, out = None, {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def capabilities():
    (caps,) = unit_settings()["CapabilityBoundingSet"]
    return caps.split()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_the_unit_passes_systemd_analyze_verify(tmp_path):
    """verify also checks that ExecStart's binary exists: the copy points at this suite's xlb instead of
    /usr/local/bin/xlb. Warnings (an unknown key, a bad value) count as failures: verify exits 0 on them."""
    copy = tmp_path / UNIT.name
    copy.write_text(UNIT.read_text().replace("/usr/local/bin/xlb", str(XLB)))
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(tmp_path / "xlb@eth0.service")],
                       capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout + r.stderr) == (0, "")


def test_the_unit_runs_one_xlb_per_interface_and_maps_its_signals():
    s = unit_settings()
    assert s["ExecStart"] == ["/usr/local/bin/xlb run --iface %i --config /etc/xlb/%i.toml"]
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert s["KillSignal"] == ["SIGTERM"]
    assert s["RuntimeDirectory"] == ["xlb"] and s["RuntimeDirectoryPreserve"] == ["yes"]  # /run/xlb/IFACE.sock
    assert sorted(capabilities()) == ["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"]


def test_the_sample_config_is_valid():
    r = subprocess.run([str(XLB), "check", str(SAMPLE)], capture_output=True, text=True, timeout=120)
    assert (r.returncode, r.stderr) == (0, "")
    assert r.stdout.startswith(f"{SAMPLE}: OK (2 services, 4 reals, 1 mark rules)"), r.stdout


def test_make_man_and_completion_cover_every_subcommand(tmp_path):
    r = subprocess.run(["make", "-s", "-C", str(REPO), "man", "completion", f"GEN_DIR={tmp_path}"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    man = (tmp_path / "man" / "xlb.8").read_text()
    bash = (tmp_path / "completion" / "xlb").read_text()
    zsh = (tmp_path / "completion" / "_xlb").read_text()
    names = subcommands()
    assert {"run", "check", "trace", "ipvsadm", "demo"} <= set(names)
    assert man.startswith('.TH XLB "8"')
    roff = {n: n.replace("-", "\\-") for n in names}  # roff escapes hyphens
    assert [n for n in names if f".SH COMMAND \\fI\\,'xlb {roff[n]}'" not in man] == []
    assert all(f".SH {s}" in man for s in ("SIGNALS", "FILES")), "tools/xlb.8.include went missing"
    (listed,) = re.findall(r"^_shtab_xlb_subparsers=\((.*)\)$", bash, re.M)
    assert listed.split() == names
    assert [n for n in names if not re.search(rf"^\s+{re.escape(n)}:'", zsh, re.M)] == []

    # The bash script completes as bash would run it: a subcommand, a file (xlb/completion.py marks paths), a choice.
    def complete(*words):
        script = (f"source {tmp_path / 'completion' / 'xlb'}; COMP_WORDS=({shlex.join(words)}); "
                  f"COMP_CWORD={len(words) - 1}; _shtab_xlb; printf '%s\\n' \"${{COMPREPLY[@]}}\"")
        r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60, cwd=REPO)
        assert r.returncode == 0, r.stderr
        return r.stdout.split()
    assert complete("xlb", "ch") == ["check"]
    assert complete("xlb", "run", "--config", "tools/xlb.t") == ["tools/xlb.toml.example"]
    assert complete("xlb", "check", "tools/xlb@") == ["tools/xlb@.service"]
    assert complete("xlb", "run", "--xdp-mode", "") == ["native", "generic"]


def _run_with_capabilities(host, tmp_path, caps):
    """`xlb run` with only caps in its bounding set (root, as the unit runs it): attach, then SIGTERM.
    Returns (exit code, log)."""
    log = tmp_path / "xlb.log"
    bounding = ",".join(["-all"] + [f"+{c.removeprefix('CAP_').lower()}" for c in caps])
    argv = ["nsenter", f"--net=/run/netns/{host.lb}", "setpriv", f"--bounding-set={bounding}", "--inh-caps=-all",
            "--", str(XLB), *host.argv("generic", "--pin-dir", str(host.pin_dir))]
    with open(log, "w") as out:
        daemon = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while daemon.poll() is None and "xlb: attached to eth0" not in log.read_text():
            assert time.monotonic() < deadline, f"neither attached nor exited within 120 s:\n{log.read_text()}"
            time.sleep(0.2)
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
        return daemon.wait(60), log.read_text()
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()


@needs_root
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) is not installed")
@pytest.mark.parametrize("without", [None, "CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"])
def test_the_units_capabilities_are_enough_and_each_is_needed(tmp_path, without):
    caps = [c for c in capabilities() if c != without]
    with lb_host(tmp_path) as host:
        rc, log = _run_with_capabilities(host, tmp_path, caps)
    if without is None:
        assert rc == 0, log
        assert "xlb: attached to eth0" in log and "xlb: detached from eth0" in log, log
    else:
        assert rc == 1, log
        assert "xlb: error: " in log and "Traceback" not in log, log
