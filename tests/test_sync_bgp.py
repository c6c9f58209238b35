"""Announcing VIPs through BIRD 2 (xlb.sync.bgp), with real BIRD daemons in two namespaces: a "router" and a
"node" with an eBGP session over a veth. A VIP the node announces appears in the router's kernel table (read with
pyroute2 in the router's namespace); a withdrawn one goes. Needs root and Debian's bird2."""

import contextlib
import os
import subprocess
from ipaddress import ip_address

import pytest

pytest.importorskip("pyroute2")

from birdlab import NEEDS, Bird, bird_conf, bird_routes, router_and_node, session, wait_routes  # noqa: E402
from xlb.lab.netns import Topology  # noqa: E402
from xlb.sync.bgp import BirdControl, BirdError, VipAnnouncer, render  # noqa: E402

pytestmark = NEEDS


ROUTER_CONF = bird_conf("198.18.0.1", [session("node4", "198.18.0.1", "198.18.0.2", True),
                                        session("node6", "2001:db8:ff::1", "2001:db8:ff::2", True)], families=(4, 6))
NODE_CONF = bird_conf("198.18.0.2", [session("router4", "198.18.0.2", "198.18.0.1", False),
                                     session("router6", "2001:db8:ff::2", "2001:db8:ff::1", False)],
                      include="%(include)s")


@pytest.fixture
def lab(tmp_path):
    """(router namespace, announcer of the node, node Bird): a router and a node BIRD with eBGP over a veth."""
    with contextlib.ExitStack() as stack:
        topo = stack.enter_context(Topology(prefix="xbg"))
        router, node = router_and_node(topo, v6=True)
        include = str(tmp_path / "xlb-vips.conf")
        announcer = VipAnnouncer(include, str(tmp_path / "node.ctl"))
        announcer.start()  # BIRD refuses to start on a missing include
        for name, ns, conf in (("router", router, ROUTER_CONF), ("node", node, NODE_CONF % {"include": include})):
            bird = Bird(ns, str(tmp_path), name, conf)
            stack.callback(bird.stop)
        yield router, announcer, bird


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
