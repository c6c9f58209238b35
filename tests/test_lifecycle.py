"""A daemon's life on a host: started with `ip netns exec` (a private mount namespace), its program taken off or
replaced under it, the interface settings it needs set and put back, what it leaves behind.

The daemons here are real `xlb run` processes started as an operator starts them (`ip netns exec NS python -m
xlb.cli run ...`) in a DR lab (xlb/lab/demo.py DrLab) or a two-namespace host; every one is killed, and every
namespace and pin removed, whatever happens.
"""
import contextlib
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import needs_root

from xlb.ops import control
from xlb.dataplane import libbpf, pin
from xlb.lab.demo import CLIENTS4, REALS4, REALS6, VIP4, VIP6, xdp_prog_id
from harness import LAB_CONFIG, LINE, attach_foreign, DrLab, prog_name
from clients import LineConnection
from xlb.lab.process import run_in_netns



class NetnsExec:
    """`ip netns exec NS python -m xlb.cli ARGS` processes, their output appended to one log; all killed at exit."""

    def __init__(self, ns, log):
        self.ns, self.log, self.procs = ns, Path(log), []

    def start(self, *args):
        with open(self.log, "a") as out:
            p = subprocess.Popen(["ip", "netns", "exec", self.ns, sys.executable, "-m", "xlb.cli", *args],
                                 stdout=out, stderr=subprocess.STDOUT)
        self.procs.append(p)
        return p

    def run(self, *args, timeout=120):
        """A command that ends by itself: its exit code."""
        p = self.start(*args)
        return p.wait(timeout)

    def text(self):
        return self.log.read_text()

    def wait_for(self, what, proc, timeout=60):
        deadline = time.monotonic() + timeout
        while not what():
            assert proc.poll() is None, f"xlb exited ({proc.returncode}):\n{self.text()}"
            assert time.monotonic() < deadline, f"timed out:\n{self.text()}"
            time.sleep(0.1)

    def close(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()


@contextlib.contextmanager
def lab_and_runner(prefix, tmp_path):
    with DrLab(prefix=prefix, line_ports=(LINE,)) as lab:
        runner = NetnsExec(lab.lb, tmp_path / "xlb.log")
        try:
            yield lab, runner
        finally:
            runner.close()


def add_no_neigh(pin_dir, packets):
    """Add packets to the pinned drop_no_neigh counter (CPU 0), as the data plane would."""
    import ctypes as ct
    from xlb.dataplane import structs as S
    from xlb.dataplane.program import possible_cpus
    fd = libbpf.obj_get(pin_dir / "verdicts")
    try:
        key, vals = ct.c_uint32(S.REASON["drop_no_neigh"]), (S.Counters * possible_cpus())()
        lib = libbpf.lib()
        libbpf.check(lib.bpf_map_lookup_elem(fd, ct.byref(key), ct.byref(vals)), "lookup")
        vals[0].packets += packets
        libbpf.check(lib.bpf_map_update_elem(fd, ct.byref(key), ct.byref(vals), 0), "update")
    finally:
        import os
        os.close(fd)


def run_args(lab, config, sock, *extra):
    return ["run", "--iface", "eth0", "--config", str(config), "--xdp-mode", "generic", "--socket", str(sock),
            *extra]


@needs_root
def test_ip_netns_exec_pins_outlive_the_process_and_lock_one_daemon(tmp_path):
    config = tmp_path / "xlb.toml"
    config.write_text(LAB_CONFIG)
    with lab_and_runner("xl1", tmp_path) as (lab, xlb):
        sock = tmp_path / "xlb.sock"
        first = xlb.start(*run_args(lab, config, sock))
        xlb.wait_for(lambda: xdp_prog_id(lab.lb, "eth0") is not None, first)
        pin_dir = lab.pin_root / "eth0"
        assert "conns" in pin.pinned_maps(pin_dir)  # on the host's bpffs, seen from the test's mount namespace

        # A second daemon started the same way on the same interface is refused by the lock.
        assert xlb.run(*run_args(lab, config, tmp_path / "second.sock")) == 1
        assert "xlb: error: another xlb daemon uses the maps pinned in /sys/fs/bpf/xlb/netns-" in xlb.text()
        assert "this mount namespace is private (as `ip netns exec` makes one): pinning in the host's " \
               "/sys/fs/bpf" in xlb.text()

        sticky = lab.ask(CLIENTS4[0], VIP4, 80)
        with LineConnection(lab.cl, CLIENTS4[3], VIP4, LINE) as live:
            serving = live.ask()
            old_id = xdp_prog_id(lab.lb, "eth0")
            first.kill()
            first.wait()
            assert "conns" in pin.pinned_maps(pin_dir)
            add_no_neigh(pin_dir, 1000)  # counted in the first daemon's life: not news to the next one

            # The restart adopts: the connection and the template come through, no --force needed.
            again = xlb.start(*run_args(lab, config, sock))
            xlb.wait_for(lambda: xdp_prog_id(lab.lb, "eth0") not in (None, old_id), again)
            assert re.search(r"xlb: adopted the maps pinned in /sys/fs/bpf/xlb/netns-\S+/eth0 \(2 services",
                             xlb.text()), xlb.text()
            assert live.ask() == serving
            assert lab.ask(CLIENTS4[1], VIP4, 443) == sticky
            add_no_neigh(pin_dir, 3)
            xlb.wait_for(lambda: "xlb: 3 packets met an unresolved neighbour; resolving" in xlb.text(), again)
            assert "1000 packets" not in xlb.text() and "1003 packets" not in xlb.text()

            # SIGQUIT: the message is true, the next start adopts again.
            again.send_signal(signal.SIGQUIT)
            assert again.wait(30) == 0
            assert re.search(r"exiting with the program attached to eth0 and its maps pinned in "
                             r"/sys/fs/bpf/xlb/netns-\S+/eth0; the next `xlb run` adopts them", xlb.text())
            quit_id = xdp_prog_id(lab.lb, "eth0")
            # The program still runs on the maps: `xlb clean` refuses to unpin them.
            assert xlb.run("clean", "--iface", "eth0") == 1
            assert "xlb's program on eth0 still runs on the maps pinned in /sys/fs/bpf/xlb/netns-" in xlb.text()
            third = xlb.start(*run_args(lab, config, sock))
            xlb.wait_for(lambda: xdp_prog_id(lab.lb, "eth0") not in (None, quit_id), third)
            assert xlb.text().count("xlb: adopted the maps pinned in") == 2
            assert live.ask() == serving

        third.send_signal(signal.SIGTERM)
        assert third.wait(30) == 0
        assert "xlb: detached from eth0" in xlb.text()
        assert "conns" in pin.pinned_maps(pin_dir)  # SIGTERM keeps the state for the next start...
        assert xlb.run("clean", "--iface", "eth0") == 0  # ...until `xlb clean` removes it
        assert re.search(r"xlb: unpinned \d+ maps and removed /sys/fs/bpf/xlb/netns-\S+/eth0", xlb.text())
        assert not pin_dir.exists()


@needs_root
def test_private_mount_namespace_without_a_host_bpffs_is_refused(tmp_path):
    """The outer mount namespace has no bpffs (here: a namespace of the test's own, made by unshare, in which the
    BPF filesystem is unmounted; `unshare --fork` stays there as xlb's parent): `ip netns exec` inside it
    refuses, saying why and what to do, and pins nothing."""
    config = tmp_path / "xlb.toml"
    config.write_text(LAB_CONFIG)
    with lab_and_runner("xl2", tmp_path) as (lab, xlb):
        script = (f"umount /sys/fs/bpf && exec ip netns exec {lab.lb} {sys.executable} -m xlb.cli "
                  + " ".join(run_args(lab, config, tmp_path / "x.sock")))
        with open(xlb.log, "a") as out:
            p = subprocess.Popen(["unshare", "-m", "--fork", "--kill-child", "--propagation", "private", "sh", "-c",
                                  script], stdout=out, stderr=subprocess.STDOUT)
        xlb.procs.append(p)  # killed, with xlb (--kill-child), whatever happens
        assert p.wait(120) == 1
        assert ("xlb: error: xlb runs in a private mount namespace (as `ip netns exec` makes one) and the host has "
                "no BPF filesystem at /sys/fs/bpf: maps pinned in a BPF filesystem mounted here would vanish with "
                "this process") in xlb.text()
        assert "nsenter --net=/run/netns/NAME" in xlb.text()
        assert xdp_prog_id(lab.lb, "eth0") is None


def _scrape(port):
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return r.read().decode()


def _metric(text, name):
    return [line for line in text.splitlines() if line.startswith(name)]


@needs_root
def test_program_taken_off_is_attached_again_and_replaced_ends_the_daemon(tmp_path):
    config = tmp_path / "xlb.toml"
    config.write_text(LAB_CONFIG)  # sweeps every 0.2 s
    with lab_and_runner("xl3", tmp_path) as (lab, xlb):
        sock = tmp_path / "xlb.sock"
        daemon = xlb.start(*run_args(lab, config, sock, "--metrics", "127.0.0.1:9851"))
        xlb.wait_for(lambda: xdp_prog_id(lab.lb, "eth0") is not None, daemon)
        ours = xdp_prog_id(lab.lb, "eth0")
        sticky = lab.ask(CLIENTS4[0], VIP4, 80)

        subprocess.run(["ip", "-n", lab.lb, "link", "set", "dev", "eth0", "xdpgeneric", "off"], check=True)
        xlb.wait_for(lambda: "xlb: attached to eth0 again (generic)" in xlb.text(), daemon)
        assert (f"xlb: warning: xlb's XDP program {ours} was taken off eth0 (nothing attached there now): "
                "attaching it again") in xlb.text()
        assert xdp_prog_id(lab.lb, "eth0") == ours
        assert lab.ask(CLIENTS4[1], VIP4, 80) == sticky  # the same maps: the template holds
        status = control.call("status", path=str(sock))
        assert (status["attached"], status["program_id"], status["program_lost"]) == \
            (True, ours, {"removed": 1, "replaced": 0})
        text = run_in_netns(lab.lb, _scrape, 9851)
        assert _metric(text, "xlb_xdp_attached ") == ["xlb_xdp_attached 1"]
        assert _metric(text, "xlb_xdp_program_lost_total{") == ['xlb_xdp_program_lost_total{cause="removed"} 1',
                                                               'xlb_xdp_program_lost_total{cause="replaced"} 0']

        # Another tool replaces it: the daemon says so, leaves that program alone and exits 1.
        foreign = run_in_netns(lab.lb, attach_foreign, "eth0", "generic")
        assert daemon.wait(30) == 1
        text = xlb.text()
        assert (f"xlb: error: XDP program {foreign} (other_xdp) replaced xlb's program {ours} on eth0; xlb does not "
                "fight another tool for the interface: exiting") in text
        assert "detached from eth0" not in text
        assert xdp_prog_id(lab.lb, "eth0") == foreign and prog_name(foreign) == "other_xdp"
        # The program that replaced it came while forwarding was on (maybe another xlb, --force): left on.
        assert "xlb: put back" not in text
        assert _sysctls(lab.lb)["net/ipv4/conf/eth0/forwarding"] == "1"


def _sysctls(ns):
    from xlb.lab.netns import sysctl_read
    paths = ("net/ipv4/conf/eth0/forwarding", "net/ipv6/conf/eth0/forwarding", "net/ipv6/conf/eth0/accept_ra",
             "net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding")
    return run_in_netns(ns, lambda: {p: sysctl_read(p) for p in paths})


def _managed_neighbours():
    import socket
    from pyroute2 import IPRoute
    with IPRoute() as ipr:
        return sorted(n.get_attr("NDA_DST") for fam in (socket.AF_INET, socket.AF_INET6)
                      for n in ipr.get_neighbours(family=fam) if (n.get_attr("NDA_FLAGS_EXT") or 0) & 1)


V6_SERVICE = f"""
[[service]]
vip = "{VIP6}"
port = 80
proto = "tcp"

  [[service.real]]
  address = "{REALS6[0]}"
"""


@needs_root
def test_forwarding_sysctls_and_neighbours_are_put_back(tmp_path):
    """Forwarding on the interface for the families the reals use (IPv4 and IPv6 here), accept_ra 1 -> 2 first;
    all put back on SIGTERM and after a failed start; the managed neighbour entries of removed reals go."""
    config = tmp_path / "xlb.toml"
    config.write_text(LAB_CONFIG + V6_SERVICE)
    with lab_and_runner("xl4", tmp_path) as (lab, xlb):
        lab.topo.sysctl(lab.lb, "net/ipv6/conf/eth0/accept_ra", "1")
        before = _sysctls(lab.lb)
        assert before["net/ipv4/conf/eth0/forwarding"] == before["net/ipv6/conf/eth0/forwarding"] == "0"

        # A start that fails (another program on the interface) puts back what it set.
        foreign = run_in_netns(lab.lb, attach_foreign, "eth0", "generic")
        assert xlb.run(*run_args(lab, config, tmp_path / "x.sock")) == 1
        assert "already has an XDP program attached" in xlb.text()
        assert _sysctls(lab.lb) == before
        assert run_in_netns(lab.lb, _managed_neighbours) == []
        subprocess.run(["ip", "-n", lab.lb, "link", "set", "dev", "eth0", "xdpgeneric", "off"], check=True)
        assert xdp_prog_id(lab.lb, "eth0") is None, foreign

        sock = tmp_path / "xlb.sock"
        daemon = xlb.start(*run_args(lab, config, sock))
        xlb.wait_for(lambda: xdp_prog_id(lab.lb, "eth0") is not None, daemon)
        during = _sysctls(lab.lb)
        assert during == {**before, "net/ipv4/conf/eth0/forwarding": "1", "net/ipv6/conf/eth0/forwarding": "1",
                          "net/ipv6/conf/eth0/accept_ra": "2"}
        said = [line for line in xlb.text().splitlines() if "xlb: set net." in line]
        assert len(said) == 2, said  # once per start (the failed one too)
        assert said[-1].endswith("xlb: set net.ipv4.conf.eth0.forwarding=1 (was 0), net.ipv6.conf.eth0.accept_ra=2 "
                                 "(was 1), net.ipv6.conf.eth0.forwarding=1 (was 0): bpf_fib_lookup answers only "
                                 "on an interface that forwards; accept_ra=2 keeps router advertisements accepted "
                                 "while forwarding; put back when xlb exits")
        lab.ask(CLIENTS4[0], VIP4, 80)
        assert set(REALS4) <= set(run_in_netns(lab.lb, _managed_neighbours))

        # A real removed by a reload loses its neighbour entry; the others keep theirs.
        config.write_text(V6_SERVICE + LAB_CONFIG.replace(f'\n  [[service.real]]\n  address = "{REALS4[2]}"\n', "", 1)
                          .replace(f'\n  [[service.real]]\n  address = "{REALS4[2]}"\n', ""))
        n = xlb.text().count("xlb: reloaded")
        daemon.send_signal(signal.SIGHUP)
        xlb.wait_for(lambda: xlb.text().count("xlb: reloaded") > n, daemon)
        managed = run_in_netns(lab.lb, _managed_neighbours)
        assert REALS4[2] not in managed and {REALS4[0], REALS4[1]} <= set(managed), managed

        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(30) == 0
        assert _sysctls(lab.lb) == before
        assert run_in_netns(lab.lb, _managed_neighbours) == []
        assert "xlb: put back net.ipv6.conf.eth0.forwarding=0, net.ipv6.conf.eth0.accept_ra=1, " \
               "net.ipv4.conf.eth0.forwarding=0" in xlb.text()


def test_log_lines_carry_a_timestamp_unless_journald_stamps_them(monkeypatch, capsys):
    from xlb.cli import daemon_log
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    daemon_log("xlb: hello")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ xlb: hello\n", capsys.readouterr().out)
    daemon_log("service    conns\nfwm/1         18")  # a table: every line stamped, so its columns stay
    first, second = capsys.readouterr().out.splitlines()
    assert first[:21] == second[:21] and first[21:] == "service    conns" and second[21:] == "fwm/1         18"
    monkeypatch.setenv("JOURNAL_STREAM", "8:12345")
    daemon_log("xlb: hello")
    assert capsys.readouterr().out == "xlb: hello\n"


@needs_root
def test_default_control_socket_is_per_network_namespace():
    from xlb.lab.netns import Topology
    with Topology(prefix="xl5") as topo:
        ns = topo.netns("lb")
        assert run_in_netns(ns, control.default_socket, "eth0") == Path(f"/run/xlb/netns-{ns}/eth0.sock")
        assert run_in_netns(ns, control.socket_dir) == Path(f"/run/xlb/netns-{ns}")
    assert control.default_socket("eth0") == Path("/run/xlb/eth0.sock")


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
