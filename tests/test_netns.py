"""Throwaway namespace topologies (xlb.lab.netns) and the DR real-server tool, tested for real: needs root."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("pyroute2")

from xlb.lab.process import NetnsProcess, run_in_netns  # noqa: E402
from xlb.lab.netns import Topology  # noqa: E402
from clients import udp_ask  # noqa: E402
from xlb.lab.servers import tcp_ask, tcp_echo_name_server  # noqa: E402

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

DR_REAL = Path(__file__).resolve().parent.parent / "tools" / "xlb-dr-real"


def netns_names():
    try:
        return set(os.listdir("/run/netns"))
    except FileNotFoundError:
        return set()


def root_links():
    return set(os.listdir("/sys/class/net"))


def two_hosts(topo):
    """client <-> server over one veth, IPv4 and IPv6."""
    client, server = topo.netns("cli"), topo.netns("srv")
    topo.veth(client, "eth0", server, "eth0")
    topo.addr(client, "eth0", "198.18.0.1/24")
    topo.addr(server, "eth0", "198.18.0.2/24")
    topo.addr(client, "eth0", "fd00:18::1/64")
    topo.addr(server, "eth0", "fd00:18::2/64")
    return client, server


def test_name_server_answers_tcp_and_udp_over_ipv4_and_ipv6():
    with Topology() as topo:
        client, server = two_hosts(topo)
        topo.spawn(server, tcp_echo_name_server, "rs1", [("0.0.0.0", 8080), ("::", 8080)])
        assert run_in_netns(client, tcp_ask, "198.18.0.1", "198.18.0.2", 8080) == "rs1"
        assert run_in_netns(client, tcp_ask, "fd00:18::1", "fd00:18::2", 8080) == "rs1"
        assert run_in_netns(client, udp_ask, "198.18.0.1", "198.18.0.2", 8080) == "rs1"
        assert run_in_netns(client, udp_ask, "fd00:18::1", "fd00:18::2", 8080) == "rs1"


def test_name_server_answers_for_a_vip_on_lo_from_the_vip():
    with Topology() as topo:
        client, server = two_hosts(topo)
        topo.lo_addr(server, "198.18.100.1")
        topo.lo_addr(server, "fd00:100::1")
        topo.route(client, "198.18.100.1/32", gateway="198.18.0.2")
        topo.route(client, "fd00:100::1/128", gateway="fd00:18::2")
        topo.spawn(server, tcp_echo_name_server, "vip", [("198.18.100.1", 80), ("::", 80)])
        assert run_in_netns(client, tcp_ask, None, "198.18.100.1", 80) == "vip"
        # udp_ask connects, so only a reply sourced from the VIP is received.
        assert run_in_netns(client, udp_ask, None, "fd00:100::1", 80) == "vip"


def test_gro_sysctl_and_errors_from_the_namespace():
    with Topology() as topo:
        client, server = two_hosts(topo)
        assert topo.gro(server, "eth0", on=True) is True
        assert topo.gro(server, "eth0", on=False) is False
        topo.sysctl(server, "net/ipv4/conf/all/arp_ignore", "1")
        assert topo.sysctl_get(server, "net/ipv4/conf/all/arp_ignore") == "1"
        with pytest.raises(ConnectionRefusedError):
            run_in_netns(client, tcp_ask, None, "198.18.0.2", 9)
        topo.spawn(server, tcp_echo_name_server, "a", [("0.0.0.0", 7000)])
        with pytest.raises(OSError):  # the port is taken: start() re-raises the child's bind error
            topo.spawn(server, tcp_echo_name_server, "b", [("0.0.0.0", 7000)])


def test_everything_is_removed_on_exit_even_when_the_body_raises():
    """Everything the topology made (its names carry its unique suffix) is gone; other namespaces and links on the
    machine, which other tests or processes may be making meanwhile, are not this test's to count."""
    with pytest.raises(RuntimeError, match="boom"):
        with Topology() as topo:
            client, server = two_hosts(topo)
            host_if = topo.name("h")
            topo.veth(None, host_if, client, "eth1")
            topo.bridge(server, "br0")
            proc = topo.spawn(server, tcp_echo_name_server, "rs1", [("0.0.0.0", 80)])
            assert {client, server} <= netns_names()
            assert host_if in root_links()
            ours = lambda names: {n for n in names if topo.suffix in n}  # noqa: E731
            assert ours(netns_names()) == {client, server} and ours(root_links()) == {host_if}
            raise RuntimeError("boom")
    assert ours(netns_names()) == set()
    assert ours(root_links()) == set()
    assert not proc.is_alive()
    topo.close()  # a second close is harmless


def test_netns_process_context_manager_stops_the_child():
    with Topology() as topo:
        _, server = two_hosts(topo)
        with NetnsProcess(server, tcp_echo_name_server, "x", [("0.0.0.0", 80)]) as proc:
            assert proc.is_alive()
        assert not proc.is_alive()


def dr_real(ns, *args):
    res = subprocess.run([sys.executable, str(DR_REAL), "--netns", ns, *args],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_xlb_dr_real_configures_a_namespace_idempotently():
    with Topology() as topo:
        client, server = two_hosts(topo)
        assert "192.0.2.10/32" in dr_real(server, "--dry-run", "--iface", "eth0", "add", "192.0.2.10")
        assert json.loads(dr_real(server, "show", "--json"))["vips"] == []

        dr_real(server, "--iface", "eth0", "add", "192.0.2.10", "2001:db8::10")
        assert dr_real(server, "--iface", "eth0", "add", "192.0.2.10", "2001:db8::10") == ""  # idempotent
        state = json.loads(dr_real(server, "--iface", "eth0", "show", "--json"))
        assert sorted(state["vips"]) == ["192.0.2.10/32", "2001:db8::10/128"]
        assert state["dr_ready"]
        for iface in ("all", "lo", "eth0"):
            assert topo.sysctl_get(server, f"net/ipv4/conf/{iface}/arp_ignore") == "1"
            assert topo.sysctl_get(server, f"net/ipv4/conf/{iface}/arp_announce") == "2"
        # The VIP is usable: a server bound to it answers from the client's side.
        topo.route(client, "192.0.2.10/32", gateway="198.18.0.2")
        topo.spawn(server, tcp_echo_name_server, "dr", [("192.0.2.10", 80)])
        assert run_in_netns(client, tcp_ask, None, "192.0.2.10", 80) == "dr"

        dr_real(server, "del", "192.0.2.10", "2001:db8::10")
        assert json.loads(dr_real(server, "show", "--json"))["vips"] == []
