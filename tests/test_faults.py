"""Faults (docs/reliability.md "Faults"): pins that vanish under a running daemon are made again; the BPF memory
limit reached while loading, and a read-only BPF filesystem, are said as such. The kill -9
under traffic is in tests/test_soak.py; a neighbour or interface of a real that goes away is resolved again by the
daemon (xlb/ops/daemon.py tick, tests/test_integration.py).

Since Linux 5.11 a map's memory is charged to the memory cgroup of the process that creates it, and
RLIMIT_MEMLOCK no longer applies: the test runs `xlb run` in a memory cgroup too small for its tables.
"""
import os
import time
import uuid
from pathlib import Path

import pytest
from conftest import needs_root

from xlb.dataplane import loaderr, pin
from xlb.lab.netns import Topology
from xlb.lab.process import run_in_netns
from xlb.lab.demo import CLIENTS4, VIP4
from clients import LineConnection
from harness import DAEMON_START_CONFIG, LAB_CONFIG, LINE, DrLab, NAMES, cli_captured, wait_for

BIG = DAEMON_START_CONFIG.replace("conns = 65536", "conns = 16777216")


def test_explain_names_the_map_and_the_cgroup():
    text = "bpf: Failed to load program\ncould not open bpf map: conns, error: Cannot allocate memory\n"
    said = loaderr.explain(text)
    assert said.startswith("the kernel refused memory for the map conns (ENOMEM)") and "MemoryMax=" in said
    assert loaderr.explain("could not open bpf map: x, error: Operation not permitted") == \
        "the kernel would not create the map x: Operation not permitted"
    assert loaderr.explain("error: use of undeclared identifier") is None
    said = loaderr.explain("failed to pin map: /sys/fs/bpf/xlb/eth0/conns, error: Read-only file system\n")
    assert said.startswith("cannot pin the map /sys/fs/bpf/xlb/eth0/conns: Read-only file system (") and \
        "--pin-dir" in said


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


def _private_bpffs(mnt):
    """In this (child) process: a mount namespace of its own with a new BPF filesystem at `mnt`."""
    import ctypes
    import subprocess
    assert ctypes.CDLL(None, use_errno=True).unshare(0x00020000) == 0, "unshare(CLONE_NEWNS)"  # noqa: PLR2004
    subprocess.run(["mount", "--make-rprivate", "/"], check=True)
    os.makedirs(mnt, exist_ok=True)
    subprocess.run(["mount", "-t", "bpf", "bpf", mnt], check=True)


def _run_on_readonly_bpffs(mnt, out, argv):
    _private_bpffs(mnt)
    os.makedirs(f"{mnt}/xlb/eth0")
    import subprocess
    subprocess.run(["mount", "-o", "remount,ro", mnt], check=True)
    return cli_captured(out, argv + ["--pin-dir", f"{mnt}/xlb/eth0"])


@needs_root
def test_a_readonly_bpffs_is_said_as_such(tmp_path):
    """The pin directory exists on a BPF filesystem mounted read-only (in a mount namespace of the test's own, so
    the mount goes with its process): the start fails naming the map, the reason and --pin-dir."""
    cfg, out = tmp_path / "xlb.toml", tmp_path / "out.log"
    cfg.write_text(DAEMON_START_CONFIG)
    with Topology(prefix="xft2") as t:
        lb, peer = t.netns("lb"), t.netns("pe")
        t.veth(lb, "eth0", peer, "eth0")
        t.addr(lb, "eth0", "198.18.0.2/24")
        rc = run_in_netns(lb, _run_on_readonly_bpffs, str(tmp_path / "bpffs"), str(out),
                          ["run", "--iface", "eth0", "--config", str(cfg), "--xdp-mode", "generic",
                           "--socket", str(tmp_path / "xlb.sock")])
    text = out.read_text()
    assert rc == 1, text
    assert f"xlb: error: could not load bpf/xlb.c: cannot pin the map {tmp_path}/bpffs/xlb/eth0/" in text, text
    assert ": Read-only file system (the maps must be pinned on a writable BPF filesystem" in text
    assert "Traceback" not in text


@needs_root
def test_pins_that_vanish_are_pinned_again_and_a_restart_adopts_them(tmp_path):
    """The pin directory removed under a running daemon (what unmounting the BPF filesystem does to it; the host's
    bpffs itself is shared with the machine and is not unmounted here): the next sweep pins the running maps again,
    so a kill -9 and a restart adopt the connection, which lives on."""
    log = tmp_path / "xlb.log"
    with DrLab(prefix="xft3", line_ports=(LINE,)) as lab:
        lab.start_xlb(LAB_CONFIG, log_path=str(log))
        with LineConnection(lab.cl, CLIENTS4[3], VIP4, LINE) as live:
            serving = live.ask()
            pin.remove(lab.pin_root)
            wait_for(lambda: "pinned the running maps again" in log.read_text(), 10, "the pins made again")
            assert live.ask() == serving
            lab.kill_xlb()
            lab.restart_xlb(log_path=str(log), timeout=300)
            text = log.read_text()
            assert "xlb: adopted the maps pinned in" in text and "Traceback" not in text, text
            assert live.ask() == serving
            assert lab.ask(CLIENTS4[0], VIP4, 80) in NAMES


def _drop_neighbours(addresses):
    """In this (child) process, in the balancer's namespace: delete the neighbour entries of `addresses`."""
    from pyroute2 import IPRoute
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname="eth0")[0]
        for a in addresses:
            ipr.neigh("del", dst=a, ifindex=idx)


def _link(ifname, up):
    from pyroute2 import IPRoute
    with IPRoute() as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname=ifname)[0], state="up" if up else "down")


@needs_root
def test_a_reals_neighbour_gone_or_its_link_down_and_back(tmp_path):
    """The balancer's neighbour entries of the reals deleted: the first packets are dropped as drop_no_neigh, the
    next sweep resolves them again, and the connections go through (TCP resends its SYN). A real's link down for
    a while and up again: its long-lived connection lives on. The daemon says what it did and goes on."""
    from xlb.lab.demo import REALS4
    from xlb.ops import control
    log = tmp_path / "xlb.log"
    with DrLab(prefix="xft4", line_ports=(LINE,)) as lab:
        lab.start_xlb(LAB_CONFIG, log_path=str(log))
        with LineConnection(lab.cl, CLIENTS4[3], VIP4, LINE, timeout=10) as live:
            serving = live.ask()
            run_in_netns(lab.lb, _drop_neighbours, REALS4)
            assert [lab.ask(c, VIP4, 80) in NAMES for c in CLIENTS4] == [True] * len(CLIENTS4)
            assert live.ask() == serving
            text = log.read_text()
            assert "packets met an unresolved neighbour; resolving" in text, text
            verdicts = control.call("stats", path=lab.socket_path)["verdicts"]
            assert verdicts["drop_no_neigh"]["packets"] >= 1, verdicts
            # The real's link on the switch (its own routes stay; taking its eth0 down would drop them).
            sw, port = f"{lab.topo.prefix}-sw-{lab.topo.suffix}", f"r{int(serving[-1]) - 1}"
            run_in_netns(sw, _link, port, False)
            time.sleep(1.0)  # a while without the real (no health check here: it stays in the pool)
            run_in_netns(sw, _link, port, True)
            assert live.ask() == serving
            assert lab.daemon.is_alive() and "Traceback" not in log.read_text()
