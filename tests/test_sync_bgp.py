"""Announcing VIPs through BIRD 2 (xlb.sync.bgp), with real BIRD daemons in two namespaces: a "router" and a
"node" with an eBGP session over a veth. A VIP the node announces appears in the router's kernel table (read with
pyroute2 in the router's namespace); a withdrawn one goes. Needs root and Debian's bird2."""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from ipaddress import ip_address

import pytest

pytest.importorskip("pyroute2")
from pyroute2 import IPRoute  # noqa: E402

from xlb.lab.netns import Topology  # noqa: E402
from xlb.sync.bgp import BirdControl, BirdError, VipAnnouncer, render  # noqa: E402

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(shutil.which("bird") is None, reason="needs bird2 (make setup installs it)"),
]

WAIT = 30.0  # seconds before giving up on BGP convergence (a bound, not a measured time)
RTPROT_BIRD = 12

ROUTER_CONF = """\
router id 198.18.0.1;
protocol device {}
protocol kernel { ipv4 { import none; export all; }; merge paths on; }
protocol kernel { ipv6 { import none; export all; }; merge paths on; }
protocol bgp node4 {
    local 198.18.0.1 as 65000; neighbor 198.18.0.2 as 65001;
    connect delay time 1; connect retry time 1; error wait time 1, 2;
    ipv4 { import all; export none; };
}
protocol bgp node6 {
    local 2001:db8:ff::1 as 65000; neighbor 2001:db8:ff::2 as 65001;
    connect delay time 1; connect retry time 1; error wait time 1, 2;
    ipv6 { import all; export none; };
}
"""

NODE_CONF = """\
router id 198.18.0.2;
protocol device {}
include "%(include)s";
protocol bgp router4 {
    local 198.18.0.2 as 65001; neighbor 198.18.0.1 as 65000;
    connect delay time 1; connect retry time 1; error wait time 1, 2;
    ipv4 { import none; export where proto = "xlb_vips4"; };
}
protocol bgp router6 {
    local 2001:db8:ff::2 as 65001; neighbor 2001:db8:ff::1 as 65000;
    connect delay time 1; connect retry time 1; error wait time 1, 2;
    ipv6 { import none; export where proto = "xlb_vips6"; };
}
"""


class Bird:
    """A BIRD daemon in namespace `ns` (our own child, stopped by its pid)."""

    def __init__(self, ns, workdir, name, conf):
        self.conf = os.path.join(workdir, f"{name}.conf")
        self.sock = os.path.join(workdir, f"{name}.ctl")
        self.log = os.path.join(workdir, f"{name}.log")
        with open(self.conf, "w") as f:
            f.write(conf)
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                ["nsenter", f"--net=/run/netns/{ns}", "bird", "-f", "-c", self.conf, "-s", self.sock,
                 "-P", os.path.join(workdir, f"{name}.pid")], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + WAIT
        while not os.path.exists(self.sock):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"bird {name} did not start: {open(self.log).read()}")
            time.sleep(0.05)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def lab(tmp_path):
    """(router namespace, announcer of the node, node Bird): a router and a node BIRD with eBGP over a veth."""
    with contextlib.ExitStack() as stack:
        topo = stack.enter_context(Topology(prefix="xbg"))
        router, node = topo.netns("r"), topo.netns("n")
        topo.veth(router, "eth0", node, "eth0")
        for host, ns in ((1, router), (2, node)):
            for cidr in (f"198.18.0.{host}/24", f"2001:db8:ff::{host}/64"):
                topo.addr(ns, "eth0", cidr)
        include = str(tmp_path / "xlb-vips.conf")
        announcer = VipAnnouncer(include, str(tmp_path / "node.ctl"))
        announcer.start()  # BIRD refuses to start on a missing include
        for name, ns, conf in (("router", router, ROUTER_CONF), ("node", node, NODE_CONF % {"include": include})):
            bird = Bird(ns, str(tmp_path), name, conf)
            stack.callback(bird.stop)
        yield router, announcer, bird


def bird_routes(ns):
    """{(prefix, gateway)} of the routes BIRD installed in namespace `ns`."""
    out = set()
    with IPRoute(netns=ns) as ipr:
        for family in (socket.AF_INET, socket.AF_INET6):
            for r in ipr.get_routes(family=family):
                if r["proto"] == RTPROT_BIRD:
                    out.add((f"{r.get_attr('RTA_DST')}/{r['dst_len']}", r.get_attr("RTA_GATEWAY")))
    return out


def wait_routes(ns, expected):
    deadline = time.monotonic() + WAIT
    while (got := bird_routes(ns)) != expected and time.monotonic() < deadline:
        time.sleep(0.1)
    return got


VIP4 = ("198.51.100.10/32", "198.18.0.2")
VIP4B = ("198.51.100.11/32", "198.18.0.2")
VIP6 = ("2001:db8:100::10/128", "2001:db8:ff::2")


def test_announce_reaches_the_routers_kernel_and_withdraw_removes_it(lab):
    router, announcer, _ = lab
    announcer.announce("198.51.100.10", "2001:db8:100::10")
    assert wait_routes(router, {VIP4, VIP6}) == {VIP4, VIP6}
    announcer.announce("198.51.100.11")
    assert wait_routes(router, {VIP4, VIP4B, VIP6}) == {VIP4, VIP4B, VIP6}
    announcer.withdraw("198.51.100.10", "2001:db8:100::10")
    assert wait_routes(router, {VIP4B}) == {VIP4B}
    announcer.withdraw_all()
    assert wait_routes(router, set()) == set()


def test_a_configuration_bird_refuses_changes_nothing(lab):
    router, announcer, node = lab
    announcer.announce("198.51.100.10")
    assert wait_routes(router, {VIP4}) == {VIP4}
    with open(node.conf, "a") as f:
        f.write("this is not bird syntax;\n")  # someone broke bird.conf: every configure now fails
    before = open(announcer.include_path).read()
    with pytest.raises(BirdError, match=r"node\.conf:\d+:\d+ syntax error"):
        announcer.announce("198.51.100.11")
    assert open(announcer.include_path).read() == before
    assert announcer.announced == {ip_address("198.51.100.10")}
    assert bird_routes(router) == {VIP4}


def test_the_control_protocol_reads_multi_line_replies(lab):
    _, _, node = lab
    with BirdControl(node.sock) as bird:
        lines = bird.command("show protocols")
        assert lines[0][0] == "2002" and any("router4" in text for _, text in lines)
        with pytest.raises(BirdError, match="syntax error"):
            bird.command("show nonsense")
        assert bird.command("show status")[-1][0] == "0013"  # the connection is still usable


def test_no_bird_is_a_clear_error_and_changes_nothing(tmp_path):
    announcer = VipAnnouncer(str(tmp_path / "vips.conf"), str(tmp_path / "absent.ctl"))
    announcer.start()
    with pytest.raises(BirdError, match="absent.ctl"):
        announcer.announce("198.51.100.10")
    assert announcer.announced == frozenset()
    assert open(announcer.include_path).read() == render(())


DOC = os.path.join(os.path.dirname(__file__), "..", "docs", "scale-out.md")


def doc_blocks():
    text = open(DOC).read()
    return [b.split("```", 1)[0].strip("\n") for b in text.split("```\n")[1::2]]


def test_the_documented_bird_configs_parse(tmp_path):
    """docs/scale-out.md's bird.conf examples, with the include file xlb writes, pass `bird -p`."""
    blocks = doc_blocks()
    include = tmp_path / "xlb-vips.conf"
    include.write_text(render([ip_address("198.51.100.10"), ip_address("2001:db8:100::10")]))
    assert blocks[0] + "\n" == include.read_text()  # the file shown is the file xlb writes
    confs = [b for b in blocks if b.startswith("# bird.conf")]
    assert len(confs) == 2
    for i, conf in enumerate(confs):
        path = tmp_path / f"bird{i}.conf"
        path.write_text(conf.replace("/etc/bird/xlb-vips.conf", str(include)) + "\n")
        done = subprocess.run(["bird", "-p", "-c", str(path)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
