"""`xlb run` meeting what is already on its interface: another XDP program (in either mode), or its own program
left attached by a previous daemon; and a start that fails leaves nothing behind.

Each test builds a two-namespace topology of its own (prefix "rc": the LB's eth0 and a peer), attaches a foreign
XDP program with bcc where it needs one, runs the real CLI in the LB namespace and looks at what the kernel has
attached and what bpffs holds. Every `xlb run` compiles the program (a few seconds).
"""
import os
import signal
import time

import pytest
from conftest import needs_root

from xlb.dataplane import pin
from xlb.lab.process import run_in_netns

from harness import DAEMON_START_CONFIG, attach_foreign, lb_host, prog_name

@needs_root
def test_a_refused_start_leaves_nothing_pinned_and_claims_no_detach(tmp_path):
    with lb_host(tmp_path) as host:
        foreign = run_in_netns(host.lb, attach_foreign, "eth0", "generic")
        out = tmp_path / "refused.log"
        assert host.run_once(out, host.argv("generic")) == 1
        text = out.read_text()
        assert "xlb: error: eth0 already has an XDP program attached; use --force to replace it" in text
        assert host.xdp() == (foreign, "generic")
        assert "detached" not in text, text  # it never attached
        assert not host.pin_dir.exists(), sorted(p.name for p in host.pin_dir.iterdir())
        assert not pin.netns_pin_root(host.lb).exists()  # nor the netns-NAME directory it made for it

        # So the next start is a first start: other table sizes are no reason to refuse, nothing is "adopted".
        host.config.write_text(DAEMON_START_CONFIG.replace("conns = 65536", "conns = 131072"))
        log = tmp_path / "forced.log"
        daemon = host.spawn(log, host.argv("generic", "--force"), old_id=foreign)
        assert prog_name(host.xdp()[0]) == "xlb_xdp"
        assert "adopted" not in log.read_text()
        daemon.stop()
        assert host.xdp() == (None, None)
        assert "xlb: detached from eth0" in log.read_text()


@needs_root
def test_a_down_interface_is_attached_with_a_warning(tmp_path):
    with lb_host(tmp_path) as host:
        run_in_netns(host.lb, _set_down, "eth0")
        log = tmp_path / "xlb.log"
        daemon = host.spawn(log, host.argv("generic"))
        deadline = time.monotonic() + 30
        while "xlb: attached to eth0" not in log.read_text():  # the warning follows that line
            assert daemon.is_alive() and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        daemon.stop()
        assert ("xlb: warning: eth0 is down: the program is attached but sees no traffic until "
                "`ip link set eth0 up`") in log.read_text()


def _set_down(ifname):
    from pyroute2 import IPRoute
    with IPRoute() as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname=ifname)[0], state="down")


@needs_root
@pytest.mark.parametrize("theirs, ours", [("native", "generic"), ("generic", "native")])
def test_force_replaces_a_program_attached_in_the_other_mode(tmp_path, theirs, ours):
    with lb_host(tmp_path) as host:
        foreign = run_in_netns(host.lb, attach_foreign, "eth0", theirs)
        log = tmp_path / "xlb.log"
        daemon = host.spawn(log, host.argv(ours, "--force"), old_id=foreign)
        prog_id, mode = host.xdp()
        assert (prog_name(prog_id), mode) == ("xlb_xdp", ours)
        text = log.read_text()
        assert (f"xlb: took XDP program {foreign} off eth0 ({theirs} mode) to attach in {ours} mode: the interface "
                "had no program for a moment") in text
        assert f"xlb: attached to eth0 ({ours})" in text
        assert "xlb: the sweep walks the connection tables in the kernel" in text   # chosen once, at start
        daemon.stop()
        assert host.xdp() == (None, None)


@needs_root
def test_restart_in_the_other_mode_needs_force_and_adopts(tmp_path):
    """The previous daemon left its program attached (SIGQUIT) in generic mode. `xlb run --xdp-mode native` on the
    same maps cannot replace it in one step: it refuses, saying how, and the program keeps running; with --force
    it adopts the maps and moves the program to native mode."""
    with lb_host(tmp_path) as host:
        log = tmp_path / "xlb.log"
        first = host.spawn(log, host.argv("generic"))
        old_id, _ = host.xdp()
        os.kill(first.pid, signal.SIGQUIT)
        first.proc.join(10)
        assert host.xdp() == (old_id, "generic")

        out = tmp_path / "refused.log"
        assert host.run_once(out, host.argv("native")) == 1
        assert ("xlb: error: eth0 runs xlb's program in generic mode: start with --xdp-mode generic, or add --force "
                "to move it to native mode (the interface is without a program for a moment)") in out.read_text()
        assert host.xdp() == (old_id, "generic")
        assert pin.pinned_maps(host.pin_dir)  # the maps it runs on stay pinned

        daemon = host.spawn(log, host.argv("native", "--force"), old_id=old_id)
        prog_id, mode = host.xdp()
        assert (prog_name(prog_id), mode) == ("xlb_xdp", "native")
        assert log.read_text().count("xlb: adopted the maps pinned in") == 1
        daemon.stop()
        assert host.xdp() == (None, None)


def _lock_as_nobody(pin_dir):
    """DirLock.acquire after dropping root (uid 65534): the error it gives, as text."""
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
    try:
        pin.DirLock(pin_dir).acquire()
    except Exception as exc:  # noqa: BLE001  anything but an XlbError reaches the operator as a traceback
        return f"{type(exc).__name__}: {exc}"
    return "acquired"


@needs_root
def test_xlb_run_without_root_gets_an_error_not_a_traceback(tmp_path):
    """The pin directory is the first thing `xlb run` creates: without the right to, the operator (who forgot
    sudo) reads why, as an xlb error the CLI prints, rather than a PermissionError traceback."""
    d = tmp_path / "pins" / "eth0"
    assert run_in_netns(None, _lock_as_nobody, d) == \
        f"PinError: cannot create the pin directory {d}: Permission denied (xlb run needs root)"
