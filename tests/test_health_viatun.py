"""check_via_vip for tunnel reals in a real `xlb run` (the DR lab, its reals running `xlb decap`): each check to
the VIP leaves the balancer wrapped in its service's tunnel to its real (bpf/hcencap.c on the LB's egress), so a
real that lost the VIP from its lo fails it and leaves the pool, though its own address would still answer; it
comes back with the VIP. One lab, four services: GUE with IPVS's header (4in4), GRE with checksums to an IPv6 real
(4in6), IPIP to an IPv4 real of an IPv6 VIP (6in4), Katran's header-less GUE (6in6); the reals' decap counters
show each encapsulation came. At exit no rule, placeholder neighbour or TC filter is left. The exact bytes of each
encapsulation are pinned by test_hcencap_packets.py."""
from conftest import needs_root
from harness import DrLab, log_has, read_until, start_decap, stop_proc, wait_for
from xlb.lab.demo import CLIENTS4, REALS4, REALS6, VIP4, VIP6
from xlb.ops import control


def service(vip, port, tunnel, reals):
    return (f'[[service]]\nvip = "{vip}"\nport = {port}\nproto = "tcp"\nscheduler = "rr"\nmethod = "tun"\n'
            f'{tunnel}delay_loop = 0.3\ncheck_via_vip = true\n'
            f'  [service.check]\n  kind = "TCP_CHECK"\n  connect_timeout = 1\n  retry = 0\n  warmup = 0\n'
            + "".join(f'\n  [[service.real]]\n  address = "{r}"\n' for r in reals))


CONFIG = (service(VIP4, 80, 'tunnel_type = "gue"\ntunnel_port = 5555\ntunnel_csum = "csum"\n', REALS4[:2])
          + service(VIP4, 443, 'tunnel_type = "gre"\ntunnel_csum = "csum"\n', [REALS6[0]])
          + service(VIP6, 80, "", [REALS4[1]])
          + service(VIP6, 443, 'tunnel_type = "gue"\ntunnel_gue_header = false\n', [REALS6[1]]))


def pools(lab):
    return {(s["vip"], s["port"]): {r["address"]: r["weight"] for r in s["reals"]}
            for s in control.call("list", path=lab.socket_path)["services"]}


def lb_state(lab):
    """(check_via_vip's policy rules, placeholder neighbours, TC filters on eth0's egress) in the LB namespace."""
    import ipaddress
    from pyroute2 import IPRoute
    from xlb.dataplane.hcencap import EGRESS
    from xlb.ops.viavip import MARK_BASE, MARK_SPAN, PLACEHOLDER
    with IPRoute(netns=lab.lb) as ipr:
        rules = [r for r in ipr.get_rules() if MARK_BASE <= (r.get_attr("FRA_TABLE") or 0) < MARK_BASE + MARK_SPAN]
        neigh = [n for n in ipr.get_neighbours(family=10)
                 if n.get_attr("NDA_DST") and ipaddress.ip_address(n.get_attr("NDA_DST")) in PLACEHOLDER]
        (idx,) = ipr.link_lookup(ifname="eth0")
        try:
            filters = [f for f in ipr.get_filters(idx, parent=EGRESS)
                       if f.get_attr("TCA_KIND") == "bpf" and f["handle"]]
        except Exception:  # noqa: BLE001 - no clsact qdisc: no filter
            filters = []
    return len(rules), len(neigh), len(filters)


def decap_counts(proc):
    proc.send_signal(10)   # SIGUSR1: the decap prints its verdicts
    text = read_until(proc, "xlb decap verdicts:", 20)
    rows = [ln.split() for ln in text.splitlines()]   # "  gue   12 packets   1234 bytes"
    return {r[0]: int(r[1]) for r in rows if len(r) > 2 and r[1].isdigit() and r[2] == "packets"}


@needs_root
def test_check_via_vip_wraps_checks_in_each_tunnel(tmp_path):
    log_path = str(tmp_path / "xlb.log")
    decaps = []
    with DrLab(prefix="xhvt", reals=2) as lab:
        try:
            for ns in lab.rs:
                proc = start_decap(ns, "--iface", "eth0", "--xdp-mode", "generic", "--gue-port", "5555")
                decaps.append(proc)
                assert read_until(proc, "xlb decap: on eth0", 120), f"decap: {stop_proc(proc)}"
            lab.start_xlb(CONFIG, log_path=log_path, timeout=150)   # it compiles bpf/hcencap.c too
            wait_for(lambda: all(c["last_ok"] for s in control.call("health", path=lab.socket_path)
                                 for r in s["reals"] for c in r["checkers"]), timeout=30, what="every check passed")
            rs1, rs2 = (decap_counts(p) for p in decaps)
            assert rs1.get("gue", 0) > 0 and rs1.get("gre", 0) > 0      # 4in4 GUE, 4in6 GRE
            assert rs2.get("gue", 0) > 0 and rs2.get("ipip", 0) > 0 and rs2.get("gue_bare", 0) > 0
            assert lb_state(lab) == (5, 2, 1)        # a rule per (VIP, real); placeholders for 4in6 and 6in4

            lab.topo.lo_addr_del(lab.rs[1], VIP4)    # rs2 loses VIP4: its GUE check fails, its 6in4 one goes on
            wait_for(lambda: REALS4[1] not in pools(lab)[(VIP4, 80)], what="rs2 out of the GUE service")
            assert log_has(log_path, f"TCP connection to [{VIP4}]:tcp:80 via [{REALS4[1]}] timedout.")
            assert pools(lab)[(VIP4, 80)] == {REALS4[0]: 1}
            assert pools(lab)[(VIP6, 80)] == {REALS4[1]: 1}
            assert {lab.ask(c, VIP4, 80) for c in CLIENTS4[:3]} == {"rs1"}
            lab.topo.lo_addr_del(lab.rs[1], VIP6)    # and VIP6: its 6in4 and 6in6 checks fail
            wait_for(lambda: not pools(lab)[(VIP6, 80)] and not pools(lab)[(VIP6, 443)], what="rs2 out of VIP6")
            assert pools(lab)[(VIP4, 443)] == {REALS6[0]: 1}

            lab.topo.lo_addr(lab.rs[1], VIP4)
            lab.topo.lo_addr(lab.rs[1], VIP6)
            wait_for(lambda: REALS4[1] in pools(lab)[(VIP4, 80)] and pools(lab)[(VIP6, 80)], what="rs2 back")
            lab.stop_xlb()
            assert lb_state(lab) == (0, 0, 0)
        finally:
            for p in decaps:
                stop_proc(p)
