"""NAT end to end: `xlb run` in the lab's balancer namespace (xlb/lab/demo.py), the reals' default route pointing at
the balancer, real TCP and UDP from the clients' namespace. One-armed: clients, balancer and reals share one
segment, so the program on the balancer's one interface sees both the clients' packets and the reals' replies.

    cl (clients 198.19.x on lo) -- br -- lb 198.18.0.2 (xlb, NAT) -- br -- rs1..3 198.18.0.1N, default via lb
"""
import signal


from conftest import needs_root
from clients import LineConnection, udp_ask
from harness import DrLab, log_has, wait_for
from xlb.lab.demo import CLIENTS4, CLIENTS6, LAN4, LAN6, REALS4, REALS6, VIP4, VIP6
from xlb.lab.process import run_in_netns
from xlb.lab.servers import tcp_ask
from xlb.ops import control

pytestmark = needs_root
NAMES = {f"rs{i + 1}" for i in range(3)}
VIP_FWM = "198.51.100.11"
LINE = 9090  # the reals' long-lived line server; the service's port is 7000


def nat_service(vip, port, proto, reals, rport=None, extra=""):
    out = f'[[service]]\nvip = "{vip}"\nport = {port}\nproto = "{proto}"\nscheduler = "rr"\nmethod = "nat"\n{extra}'
    for r in reals:
        out += f'  [[service.real]]\n  address = "{r}"\n' + (f"  port = {rport}\n" if rport else "")
    return out


CONFIG = "\n".join([
    nat_service(VIP4, 80, "tcp", REALS4, 8080),
    nat_service(VIP4, 53, "udp", REALS4, 5353),
    nat_service(VIP4, 7000, "tcp", REALS4, LINE),
    nat_service(VIP6, 80, "tcp", REALS6, 8080),
    # nothing listens on the reals' 5454: they answer with ICMP port unreachable
    nat_service(VIP4, 54, "udp", REALS4, 5454),
    nat_service(VIP6, 54, "udp", REALS6, 5454),
    # a persistent fwmark NAT service bundling 80 and 443 of another VIP: the reals' ports are the client's
    f'[[mark]]\nmark = 1\nproto = "tcp"\ndst = "{VIP_FWM}/32"\nports = [80, 443]\n',
    '[[service]]\nfwmark = 1\nscheduler = "rr"\nmethod = "nat"\npersistence_timeout = 300\n'
    'persistence_netmask = "255.255.255.0"\n'
    + "".join(f'  [[service.real]]\n  address = "{r}"\n' for r in REALS4),
])


def udp_outcome(src, dst, port):
    """What a connected UDP socket learns from one datagram: "answer", "refused" (an ICMP port unreachable that
    names its own flow: the client's kernel matched the quote to the socket) or "timeout"."""
    try:
        udp_ask(src, dst, port, timeout=2.0)
        return "answer"
    except ConnectionRefusedError:
        return "refused"
    except TimeoutError:
        return "timeout"


def make_nat(lab):
    """The DR lab turned into a NAT one: reals route via the balancer, the balancer routes to the clients."""
    t = lab.topo
    for ns in lab.rs:
        t.route(ns, "default", gateway=f"{LAN4}.2")
        t.route(ns, "default", gateway=f"{LAN6}2")
        t.tx_checksum(ns, "eth0", False)  # XDP must see full checksums to update them
    t.route(lab.lb, "198.19.0.0/16", gateway=f"{LAN4}.1")
    t.route(lab.lb, "2001:db8:1::/48", gateway=f"{LAN6}1")
    t.route(lab.cl, f"{VIP_FWM}/32", gateway=f"{LAN4}.2")
    # The first reply toward an unresolved next hop is the kernel's to forward (pass_reply_neigh); IPv6 forwards
    # only with the host-wide switch on (README: NAT).
    t.sysctl(lab.lb, "net/ipv6/conf/all/forwarding", "1")


def ask(lab, src, vip, port):
    return run_in_netns(lab.cl, tcp_ask, src, vip, port)


def test_nat_tcp_udp_fwmark_reload_and_kill9_restart(tmp_path):
    log = str(tmp_path / "xlb.log")
    with DrLab(prefix="xnat", ports=(80, 443, 8080, 5353), line_ports=(LINE,)) as lab:
        make_nat(lab)
        lab.start_xlb(CONFIG, log_path=log)
        # TCP and UDP with port mapping, IPv4 and IPv6: the client talks to VIP:port, the real listens elsewhere.
        assert {ask(lab, c, VIP4, 80) for c in CLIENTS4[:3]} == NAMES
        assert run_in_netns(lab.cl, udp_ask, CLIENTS4[0], VIP4, 53) in NAMES
        assert ask(lab, CLIENTS6[0], VIP6, 80) in NAMES
        # The reals' port unreachable (ICMP, ICMPv6), quoting client -> real:5454, comes back from VIP:54 (outer
        # source, quoted destination, checksums): the client's kernel finds the socket the quote names and reports
        # ECONNREFUSED. Passed unchanged, the quote names no socket of the client: the datagram just times out.
        assert run_in_netns(lab.cl, udp_outcome, CLIENTS4[0], VIP4, 54) == "refused"
        assert run_in_netns(lab.cl, udp_outcome, CLIENTS6[0], VIP6, 54) == "refused"
        assert "fwd_icmp_nat_out" in control.call("stats", path=lab.socket_path)["verdicts"]
        # The persistent fwmark service: one client /24, both ports, one real.
        first = ask(lab, CLIENTS4[0], VIP_FWM, 80)
        assert {ask(lab, c, VIP_FWM, p) for c in CLIENTS4[:3] for p in (80, 443)} == {first}

        stats = control.call("list", path=lab.socket_path)
        svc = next(s for s in stats["services"] if s["name"] == f"tcp/{VIP4}:80")
        assert svc["method"] == "nat" and svc["stats"]["outpkts"] > 0
        assert {r["port"] for r in svc["reals"]} == {8080}

        with LineConnection(lab.cl, CLIENTS4[3], VIP4, 7000) as live:
            serving = live.ask()
            # A reload keeps the live NAT connection (both ways) and applies a change.
            lab.rewrite_config(CONFIG + "\n" + nat_service(VIP4, 8443, "tcp", REALS4[:1], 443))
            lab.signal_xlb(signal.SIGHUP)
            wait_for(lambda: log_has(log, "xlb: reloaded"), what="reload logged")
            assert live.ask() == serving
            assert ask(lab, CLIENTS4[4], VIP4, 8443) == "rs1"

            # kill -9: the program keeps forwarding both ways with the pinned state (nat_revs included); a
            # restarted daemon adopts it and the connection goes on.
            lab.kill_xlb()
            assert live.ask() == serving
            lab.restart_xlb(log_path=log)
            assert "adopted the maps" in open(log).read()
            assert live.ask() == serving
            assert ask(lab, CLIENTS4[0], VIP_FWM, 443) == first


def two_arm_lab(t):
    """cl 198.18.0.1 -- eth0 lb eth1 -- rs 198.18.1.11 (default via lb): the namespaces (cl, lb, rs)."""
    cl, lb, rs = t.netns("cl"), t.netns("lb"), t.netns("rs")
    t.veth(cl, "eth0", lb, "eth0")
    t.veth(lb, "eth1", rs, "eth0")
    for ns, ifname, cidr in ((cl, "eth0", "198.18.0.1/24"), (lb, "eth0", "198.18.0.2/24"),
                             (lb, "eth1", "198.18.1.1/24"), (rs, "eth0", "198.18.1.11/24")):
        t.addr(ns, ifname, cidr)
    for ns in (cl, rs):  # frames XDP sends into a veth reach the peer only with its GRO on
        t.gro(ns, "eth0", True)
        t.tx_checksum(ns, "eth0", False)
    for ns in (cl, lb, rs):
        t.sysctl(ns, "net/ipv4/conf/all/rp_filter", "0")
    t.sysctl(lb, "net/ipv4/conf/all/forwarding", "1")
    t.route(cl, f"{VIP4}/32", gateway="198.18.0.2")
    t.route(rs, "default", gateway="198.18.1.1")
    return cl, lb, rs


def spawn_xlb(t, lb, log, argv):
    """`xlb run ARGV` in lb, once its program is on every --iface."""
    from harness import run_xlb_logged
    from xlb.lab.demo import xdp_prog_id
    daemon = t.spawn(lb, run_xlb_logged, log, argv)
    ifaces = [argv[i + 1] for i, a in enumerate(argv) if a == "--iface"]

    def up():
        assert daemon.is_alive(), open(log).read()
        return all(xdp_prog_id(lb, i) is not None for i in ifaces)
    wait_for(up, 60, "attach to " + ", ".join(ifaces))
    return daemon


def kill9_and_restart(t, lb, daemon, log, argv):
    """kill -9 the daemon, start another; returns it once it adopted the maps and replaced the program."""
    import os
    from harness import run_xlb_logged
    from xlb.lab.demo import xdp_prog_id
    prog = xdp_prog_id(lb, "eth0")
    os.kill(daemon.pid, signal.SIGKILL)
    daemon.proc.join(10)
    daemon = t.spawn(lb, run_xlb_logged, log, argv)
    wait_for(lambda: log_has(log, "adopted the maps") and xdp_prog_id(lb, "eth1") not in (None, prog), 60, "restart")
    return daemon


def test_two_interfaces_clients_on_one_reals_on_the_other(tmp_path):
    """`xlb run --iface eth0 --iface eth1`: one daemon, one set of maps, the program on both. Clients come in on
    eth0, NAT sends them out of eth1 to a real whose default route is the balancer's eth1; its replies come in on
    eth1 and go back out of eth0. Status names both; a kill -9 restart keeps a live connection; SIGTERM detaches
    from both."""
    import os
    from xlb.lab.demo import xdp_prog_id
    from xlb.lab.netns import Topology
    from xlb.lab.servers import tcp_echo_name_server, tcp_line_name_server
    from xlb.dataplane.pin import netns_pin_root, remove as remove_pins
    log = str(tmp_path / "xlb.log")
    cfg = tmp_path / "xlb.toml"
    cfg.write_text(nat_service(VIP4, 80, "tcp", ["198.18.1.11"], 8080)
                   + nat_service(VIP4, 53, "udp", ["198.18.1.11"], 8080)
                   + nat_service(VIP4, 7000, "tcp", ["198.18.1.11"], LINE))
    sock = str(tmp_path / "xlb.sock")
    argv = ["run", "--iface", "eth0", "--iface", "eth1", "--config", str(cfg), "--xdp-mode", "generic",
            "--socket", sock]
    t = Topology(prefix="xn2")
    pins = None
    try:
        cl, lb, rs = two_arm_lab(t)
        pins = netns_pin_root(lb)
        t.spawn(rs, tcp_echo_name_server, "rs1", [("0.0.0.0", 8080)])
        t.spawn(rs, tcp_line_name_server, "rs1", [("0.0.0.0", LINE)])
        daemon = spawn_xlb(t, lb, log, argv)
        assert run_in_netns(cl, tcp_ask, "198.18.0.1", VIP4, 80) == "rs1"
        assert run_in_netns(cl, udp_ask, "198.18.0.1", VIP4, 53) == "rs1"
        st = control.call("status", path=sock)
        assert st["ifaces"] == ["eth0", "eth1"] and st["attached"]
        verdicts = control.call("stats", path=sock)["verdicts"]
        assert verdicts["fwd_redirect"]["packets"] >= 2 and "fwd_reply_redirect" in verdicts, verdicts
        with LineConnection(cl, "198.18.0.1", VIP4, 7000) as live:
            assert live.ask() == "rs1"
            daemon = kill9_and_restart(t, lb, daemon, log, argv)
            assert xdp_prog_id(lb, "eth0") == xdp_prog_id(lb, "eth1")
            assert live.ask() == "rs1"
        os.kill(daemon.pid, signal.SIGTERM)
        daemon.proc.join(10)
        assert "detached from eth0, eth1" in open(log).read()
        assert xdp_prog_id(lb, "eth0") is None and xdp_prog_id(lb, "eth1") is None
    finally:
        t.close()
        if pins:
            remove_pins(pins)


def test_two_ports_of_one_real_address(tmp_path):
    """Issue 15: VIP:80 -> 198.18.1.11:8080 and 198.18.1.11:8081, two servers on one real, are two reals. Real TCP
    alternates between them (rr); `ipvsadm -L -n` lists both; a live connection on each port of the line service
    (7000 -> 9090, 9091) lives through kill -9 and a restart (each real's id adopted); `ipvsadm -d -r ADDR:8081`
    leaves new connections to 8080."""
    import io
    from xlb.admincli import run_ipvsadm
    from xlb.lab.netns import Topology
    from xlb.lab.servers import tcp_echo_name_server, tcp_line_name_server
    from xlb.dataplane.pin import netns_pin_root, remove as remove_pins
    rs_addr = "198.18.1.11"

    def service(port, rports):
        return (f'[[service]]\nvip = "{VIP4}"\nport = {port}\nproto = "tcp"\nscheduler = "rr"\nmethod = "nat"\n'
                + "".join(f'  [[service.real]]\n  address = "{rs_addr}"\n  port = {p}\n' for p in rports))
    log, sock, cfg = str(tmp_path / "xlb.log"), str(tmp_path / "xlb.sock"), tmp_path / "xlb.toml"
    cfg.write_text(service(80, (8080, 8081)) + service(7000, (9090, 9091)))
    argv = ["run", "--iface", "eth0", "--iface", "eth1", "--config", str(cfg), "--xdp-mode", "generic",
            "--socket", sock]

    def ipvsadm(line):
        out = io.StringIO()
        assert run_ipvsadm(line.split(), socket=sock, out=out) == 0
        return out.getvalue()
    t = Topology(prefix="xnp")
    pins = None
    try:
        cl, lb, rs = two_arm_lab(t)
        pins = netns_pin_root(lb)
        for p in (8080, 8081):
            t.spawn(rs, tcp_echo_name_server, f"p{p}", [("0.0.0.0", p)])
        for p in (9090, 9091):
            t.spawn(rs, tcp_line_name_server, f"p{p}", [("0.0.0.0", p)])
        daemon = spawn_xlb(t, lb, log, argv)
        assert [run_in_netns(cl, tcp_ask, "198.18.0.1", VIP4, 80) for _ in range(4)] == ["p8080", "p8081"] * 2
        listed = ipvsadm(f"-L -n -t {VIP4}:80")
        assert f"  -> {rs_addr}:8080" in listed and f"  -> {rs_addr}:8081" in listed, listed
        with LineConnection(cl, "198.18.0.1", VIP4, 7000) as a, LineConnection(cl, "198.18.0.1", VIP4, 7000) as b:
            assert {a.ask(), b.ask()} == {"p9090", "p9091"}
            served = (a.ask(), b.ask())
            daemon = kill9_and_restart(t, lb, daemon, log, argv)
            assert (a.ask(), b.ask()) == served
        ipvsadm(f"-d -t {VIP4}:80 -r {rs_addr}:8081")
        assert {run_in_netns(cl, tcp_ask, "198.18.0.1", VIP4, 80) for _ in range(3)} == {"p8080"}
    finally:
        t.close()
        if pins:
            remove_pins(pins)
