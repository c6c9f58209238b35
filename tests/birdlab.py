"""BIRD in the BGP tests (tests/test_sync_bgp.py, test_bgp_daemon.py): xlb/lab/bird.py, the marks these tests
need, and the two-namespace topology of a router and one node."""
import os
import shutil

import pytest

from xlb.lab.bird import Bird, bird_conf, bird_routes, session, wait_routes  # noqa: F401  (the tests' one import)

# The BGP tests' marks: root for namespaces, Debian's bird2.
NEEDS = [pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
         pytest.mark.skipif(shutil.which("bird") is None, reason="needs bird2 (make setup installs it)")]


def router_and_node(topo, v6=False):
    """Namespaces "r" (198.18.0.1, 2001:db8:ff::1) and "n" (.2, ::2) joined by a veth, eth0 on both sides."""
    router, node = topo.netns("r"), topo.netns("n")
    topo.veth(router, "eth0", node, "eth0")
    for host, ns in ((1, router), (2, node)):
        for cidr in (f"198.18.0.{host}/24", f"2001:db8:ff::{host}/64")[:2 if v6 else 1]:
            topo.addr(ns, "eth0", cidr)
    return router, node
