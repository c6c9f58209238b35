"""Faults (docs/reliability.md "Faults"): the BPF memory limit reached while loading is said as such. The kill -9
under traffic is in tests/test_soak.py; a neighbour or interface of a real that goes away is resolved again by the
daemon (xlb/ops/daemon.py tick, tests/test_integration.py).

Since Linux 5.11 a map's memory is charged to the memory cgroup of the process that creates it, and
RLIMIT_MEMLOCK no longer applies: the test runs `xlb run` in a memory cgroup too small for its tables.
"""
import os
import uuid
from pathlib import Path

import pytest
from conftest import needs_root

from xlb.dataplane import loaderr, pin
from xlb.lab.netns import Topology
from xlb.lab.process import run_in_netns
from harness import DAEMON_START_CONFIG, cli_captured

BIG = DAEMON_START_CONFIG.replace("conns = 65536", "conns = 16777216")


def test_explain_names_the_map_and_the_cgroup():
    text = "bpf: Failed to load program\ncould not open bpf map: conns, error: Cannot allocate memory\n"
    said = loaderr.explain(text)
    assert said.startswith("the kernel refused memory for the map conns (ENOMEM)") and "MemoryMax=" in said
    assert loaderr.explain("could not open bpf map: x, error: Operation not permitted") == \
        "the kernel would not create the map x: Operation not permitted"
    assert loaderr.explain("error: use of undeclared identifier") is None


def _memory_cgroup():
    """A fresh child of this process's memory cgroup (v1 or v2) and the name of its limit file; or skip."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == "memory":
            base, limit = Path("/sys/fs/cgroup/memory") / path.lstrip("/"), "memory.limit_in_bytes"
            break
    else:
        path = next(line.split(":", 2)[2] for line in Path("/proc/self/cgroup").read_text().splitlines()
                    if line.startswith("0::"))
        root = Path("/sys/fs/cgroup/unified") if Path("/sys/fs/cgroup/unified").is_dir() else Path("/sys/fs/cgroup")
        base, limit = root / path.lstrip("/"), "memory.max"
    child = base / f"xlb-memtest-{uuid.uuid4().hex[:8]}"
    try:
        child.mkdir()
    except OSError as exc:
        pytest.skip(f"cannot make a memory cgroup under {base}: {exc.strerror}")
    if not (child / limit).exists():
        child.rmdir()
        pytest.skip(f"no memory controller in {base} (no {limit})")
    return child, limit


def _run_in_cgroup(cgroup, out, argv):
    (cgroup / "cgroup.procs").write_text(str(os.getpid()))
    return cli_captured(out, argv)


@needs_root
def test_tables_too_big_for_the_memory_cgroup_fail_clearly(tmp_path):
    cgroup, limit = _memory_cgroup()
    cfg, out = tmp_path / "xlb.toml", tmp_path / "out.log"
    cfg.write_text(BIG)
    try:
        # Enough for the compiler (~300 MB), not for 16M connection entries (~2 GB with the NAT reverse table).
        (cgroup / limit).write_text(str(800 * 2**20))
        with Topology(prefix="xft1") as t:
            lb, peer = t.netns("lb"), t.netns("pe")
            t.veth(lb, "eth0", peer, "eth0")
            t.addr(lb, "eth0", "198.18.0.2/24")
            pins = pin.netns_pin_root(lb)
            try:
                rc = run_in_netns(lb, _run_in_cgroup, cgroup, str(out),
                                  ["run", "--iface", "eth0", "--config", str(cfg), "--xdp-mode", "generic",
                                   "--socket", str(tmp_path / "xlb.sock")])
            finally:
                pin.remove(pins)
        text = out.read_text()
        assert rc == 1, text
        assert "xlb: error: could not load bpf/xlb.c: the kernel refused memory for the map " in text, text
        assert "(ENOMEM): BPF maps are charged to the memory cgroup" in text and "Traceback" not in text
    finally:
        cgroup.rmdir()
