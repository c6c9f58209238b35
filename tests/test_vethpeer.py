"""Native XDP on a veth whose peer offloads tx checksums: found at attach time and warned about (the frames its
peer's stack sends carry partial checksums that native XDP forwards unfixed; the reals drop them). Real veth pairs
in namespaces, real `xlb run`."""
import time
from pathlib import Path

from conftest import needs_root

from xlb.dataplane import pin, vethpeer
from harness import DAEMON_START_CONFIG, run_xlb_logged
from xlb.lab.netns import Topology
from xlb.lab.process import run_in_netns

WARNING = ("xlb: warning: eth0 is a veth whose peer eth0 (namespace {peer}) has tx checksum offload on: packets its "
           "stack sends arrive with partial checksums, which native XDP forwards unfixed and the reals drop. Turn it "
           "off on the peer (`ethtool -K eth0 tx off` in namespace {peer}) or run with --xdp-mode generic")


@needs_root
def test_the_peer_is_found_in_its_namespace_or_in_this_one():
    with Topology(prefix="vp") as t:
        lb, peer = t.netns("lb"), t.netns("peer")
        t.veth(lb, "v0", peer, "p0")
        t.veth(lb, "a0", lb, "a1")
        assert run_in_netns(lb, vethpeer.offloading_peer, "v0") == ("p0", f"namespace {peer}")
        assert run_in_netns(peer, vethpeer.offloading_peer, "p0") == ("v0", f"namespace {lb}")
        assert run_in_netns(lb, vethpeer.offloading_peer, "a0") == ("a1", "this namespace")
        assert run_in_netns(lb, vethpeer.offloading_peer, "lo") is None  # not a veth
        assert t.tx_checksum(peer, "p0", False) is False
        assert run_in_netns(lb, vethpeer.offloading_peer, "v0") is None
        # Only the peer's offload matters: v0's own is still on.
        assert run_in_netns(peer, vethpeer.offloading_peer, "p0") == ("v0", f"namespace {lb}")


def _run_until_attached(topo, ns, log, mode, tmp_path):
    cfg = tmp_path / "xlb.toml"
    cfg.write_text(DAEMON_START_CONFIG)
    argv = ["run", "--iface", "eth0", "--config", str(cfg), "--xdp-mode", mode, "--socket", str(tmp_path / "x.sock")]
    log.touch()
    daemon = topo.spawn(ns, run_xlb_logged, str(log), argv)
    deadline = time.monotonic() + 60
    while "xlb: attached to eth0" not in log.read_text():
        assert daemon.is_alive(), log.read_text()
        assert time.monotonic() < deadline, "xlb did not attach within 60 s"
        time.sleep(0.1)
    daemon.stop()
    return log.read_text()


@needs_root
def test_xlb_run_native_warns_until_the_peer_stops_offloading(tmp_path):
    pins = None
    try:
        with Topology(prefix="vq") as t:
            lb, peer = t.netns("lb"), t.netns("peer")
            pins = pin.netns_pin_root(lb)
            t.veth(lb, "eth0", peer, "eth0")
            t.addr(lb, "eth0", "198.18.0.2/24")
            text = _run_until_attached(t, lb, tmp_path / "on.log", "native", tmp_path)
            assert WARNING.format(peer=peer) in text, text
            # It is a warning: xlb attached natively all the same.
            assert "xlb: attached to eth0 (native)" in text
            assert "warning" not in _run_until_attached(t, lb, tmp_path / "generic.log", "generic", tmp_path)
            t.tx_checksum(peer, "eth0", False)
            text = _run_until_attached(t, lb, tmp_path / "off.log", "native", tmp_path)
            assert "xlb: attached to eth0 (native)" in text and "warning" not in text, text
    finally:
        if pins:
            pin.remove(pins)
