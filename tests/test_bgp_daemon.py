"""`xlb run --bird-socket --bird-include` (issue 19): a real BIRD router and a node BIRD with eBGP over a veth, and
`xlb run` on the node. A VIP reaches the router's kernel while its services can serve; quorum loss, `xlb drain` and
SIGTERM withdraw it; a BIRD that is not there at start is retried while the daemon serves on."""
import contextlib
import urllib.request
from ipaddress import ip_address

import pytest

pytest.importorskip("pyroute2")

from birdlab import NEEDS, Bird, bird_conf, router_and_node, session, wait_routes  # noqa: E402
from harness import log_has, run_xlb_logged, wait_for  # noqa: E402
from xlb.cli import main  # noqa: E402
from xlb.lab.netns import Topology  # noqa: E402
from xlb.lab.process import run_in_netns  # noqa: E402
from xlb.ops import control  # noqa: E402
from xlb.ops.announce import serving_vips  # noqa: E402
from xlb.config import read as xread  # noqa: E402
from xlb.dataplane.pin import netns_pin_root, remove as remove_pins  # noqa: E402

pytestmark = NEEDS

ROUTER_CONF = bird_conf("198.18.0.1", [session("node", "198.18.0.1", "198.18.0.2", True)])
NODE_CONF = bird_conf("198.18.0.2", [session("upstream", "198.18.0.2", "198.18.0.1", False)], include="%(include)s")

CONFIG = """\
[[service]]
vip = "198.51.100.10"
port = 80
proto = "tcp"
delay_loop = 0.2
warmup = 0
retry = 0
  [[service.real]]
  address = "198.18.0.11"
    [service.real.check]
    kind = "FILE_CHECK"
    track_file = "%(track)s"
    weight = 0

[[service]]
vip = "198.51.100.11"
port = 80
proto = "tcp"
  [[service.real]]
  address = "198.18.0.12"
"""

A, B = ("198.51.100.10/32", "198.18.0.2"), ("198.51.100.11/32", "198.18.0.2")


def test_a_vip_is_announced_while_every_service_on_it_can_serve():
    svc = '[[service]]\nvip = "{}"\nport = {}\nproto = "tcp"\n  [[service.real]]\n  address = "198.18.0.11"\n' \
          '  weight = {}\n'
    cfg = xread.parse(svc.format("198.51.100.10", 80, 1) + svc.format("198.51.100.10", 443, 1)
                      + svc.format("198.51.100.11", 80, 0))
    https = cfg.services[1].key
    assert serving_vips(cfg, {}) == {ip_address("198.51.100.10")}       # .11's only real has weight 0
    assert serving_vips(cfg, {https: True}) == {ip_address("198.51.100.10")}
    assert serving_vips(cfg, {https: False}) == set()                      # :443 lost its quorum: all of .10 goes


@pytest.fixture
def lab(tmp_path):
    with contextlib.ExitStack() as stack:
        topo = stack.enter_context(Topology(prefix="xbd"))
        router, node = router_and_node(topo)
        stack.callback(remove_pins, netns_pin_root(node))  # last: the daemon keeps its pins across SIGTERM
        stack.callback(Bird(router, str(tmp_path), "router", ROUTER_CONF).stop)
        yield topo, router, node, stack


def test_run_announces_what_it_serves_and_withdraws_on_quorum_loss_drain_and_sigterm(lab, tmp_path, capsys):
    topo, router, node, stack = lab
    track, include, sock = tmp_path / "track", tmp_path / "xlb-vips.conf", str(tmp_path / "xlb.sock")
    track.write_text("0\n")
    (tmp_path / "xlb.toml").write_text(CONFIG % {"track": track})
    log = tmp_path / "xlb.log"
    log.write_text("")
    bird_sock = str(tmp_path / "node.ctl")
    xlb = topo.spawn(node, run_xlb_logged, str(log), [
        "run", "--iface", "eth0", "--config", str(tmp_path / "xlb.toml"), "--xdp-mode", "generic",
        "--socket", sock, "--bird-socket", bird_sock, "--bird-include", str(include), "--metrics", "127.0.0.1:9847"])
    stack.callback(xlb.stop)
    # No BIRD on the node yet: the daemon serves, says why nothing is announced, and keeps trying.
    wait_for(lambda: log_has(log, "xlb: bgp:") and status(sock)["bgp"]["error"], 60,
             "the daemon to report BIRD unreachable")
    assert xlb.is_alive()
    assert "node.ctl" in control.call("status", path=sock)["bgp"]["error"]
    assert include.exists()   # written empty at start, so that BIRD can start with it
    bird = Bird(node, str(tmp_path), "node", NODE_CONF % {"include": include})
    stack.callback(bird.stop)
    assert wait_routes(router, {A, B}) == {A, B}
    assert control.call("status", path=sock)["bgp"]["in_step"]

    track.write_text("1\n")  # the only real of 198.51.100.10 fails: its service loses quorum
    assert wait_routes(router, {B}) == {B}
    assert control.call("status", path=sock)["bgp"]["wanted"] == ["198.51.100.11"]
    metrics = run_in_netns(node, _get, "http://127.0.0.1:9847/metrics")
    assert [x for x in metrics.splitlines() if x.startswith("xlb_bgp_announced")] == [
        'xlb_bgp_announced{vip="198.51.100.11"} 1']
    assert "xlb_bgp_in_step 1" in metrics and "xlb_bgp_draining 0" in metrics

    assert main(["drain", "--socket", sock]) == 0
    assert "DRAINING" in capsys.readouterr().out
    assert wait_routes(router, set()) == set()
    assert xlb.is_alive()
    assert main(["drain", "--off", "--socket", sock]) == 0
    assert wait_routes(router, {B}) == {B}
    track.write_text("0\n")
    assert wait_routes(router, {A, B}) == {A, B}

    xlb.stop(timeout=30)   # SIGTERM
    assert wait_routes(router, set()) == set()
    text = log.read_text()
    assert text.index("bgp: withdrew every VIP") < text.index("detached from eth0")


def _get(url):
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.read().decode()


def status(sock):
    try:
        return control.call("status", path=sock)
    except control.ControlError:
        return {"bgp": {"error": None}}   # not listening yet


def test_drain_without_bgp_is_a_clear_error(tmp_path, capsys):
    assert main(["drain", "--socket", str(tmp_path / "none.sock")]) == 1
    assert "no xlb daemon answers" in capsys.readouterr().err


BGP_CONFIG = '[bgp]\nbird_socket = "%(socket)s"\nbird_include = "%(include)s"\n\n' + \
    CONFIG[CONFIG.index('[[service]]\nvip = "198.51.100.11"'):]   # the service of B alone


def test_the_config_bgp_section_announces_and_the_command_line_overrides_it(lab, tmp_path):
    topo, router, node, stack = lab
    include, sock = tmp_path / "xlb-vips.conf", str(tmp_path / "xlb.sock")
    include.write_text("")
    bird = Bird(node, str(tmp_path), "node", NODE_CONF % {"include": include})
    stack.callback(bird.stop)
    argv = ["run", "--iface", "eth0", "--config", str(tmp_path / "xlb.toml"), "--xdp-mode", "generic",
            "--socket", sock]
    for n, (in_file, flags) in enumerate([
            (bird.sock, []),                                                        # [bgp] alone
            (str(tmp_path / "nobird.ctl"), ["--bird-socket", bird.sock, "--bird-include", str(include)])]):
        (tmp_path / "xlb.toml").write_text(BGP_CONFIG % {"socket": in_file, "include": include})
        log = tmp_path / f"xlb{n}.log"
        xlb = topo.spawn(node, run_xlb_logged, str(log), argv + flags)
        stack.callback(xlb.stop)
        wait_for(lambda: status(sock)["bgp"].get("in_step"), 90, f"xlb to announce through BIRD (run {n})")
        assert control.call("status", path=sock)["bgp"]["bird_socket"] == bird.sock
        assert wait_routes(router, {B}) == {B}
        xlb.stop(timeout=30)   # SIGTERM withdraws, whichever said where BIRD is
        assert wait_routes(router, set()) == set()
