"""check_via_vip for tunnel reals in a real `xlb run` (the DR lab, its reals running `xlb decap`): each check to
VIP:80 leaves the balancer wrapped in IPIP to its real (bpf/hcencap.c on the LB's egress), so a real that lost
the VIP from its lo fails it and leaves the pool, though its own address would still answer; it comes back with
the VIP. The real's decap counters show the wrapped checks; at exit no rule and no TC filter is left."""
from conftest import needs_root
from harness import DrLab, log_has, read_until, start_decap, stop_proc, wait_for
from xlb.lab.demo import CLIENTS4, REALS4, VIP4
from xlb.ops import control

CONFIG = (f'[[service]]\nvip = "{VIP4}"\nport = 80\nproto = "tcp"\nscheduler = "rr"\nmethod = "tun"\n'
          f'tunnel_type = "ipip"\ndelay_loop = 0.3\ncheck_via_vip = true\n'
          f'  [service.check]\n  kind = "TCP_CHECK"\n  connect_timeout = 1\n  retry = 0\n  warmup = 0\n'
          + "".join(f'\n  [[service.real]]\n  address = "{r}"\n' for r in REALS4[:2]))


def pool(lab):
    (svc,) = control.call("list", path=lab.socket_path)["services"]
    return {r["address"]: r["weight"] for r in svc["reals"]}


def lb_state(lab):
    """(check_via_vip's policy rules, TC filters on eth0's egress) in the LB namespace."""
    from pyroute2 import IPRoute
    from xlb.dataplane.hcencap import EGRESS
    from xlb.ops.viavip import MARK_BASE, MARK_SPAN
    with IPRoute(netns=lab.lb) as ipr:
        rules = [r for r in ipr.get_rules() if MARK_BASE <= (r.get_attr("FRA_TABLE") or 0) < MARK_BASE + MARK_SPAN]
        (idx,) = ipr.link_lookup(ifname="eth0")
        try:
            filters = [f for f in ipr.get_filters(idx, parent=EGRESS)
                       if f.get_attr("TCA_KIND") == "bpf" and f["handle"]]
        except Exception:  # noqa: BLE001 - no clsact qdisc: no filter
            filters = []
    return rules, filters


def ipip_count(proc):
    proc.send_signal(10)   # SIGUSR1: the decap prints its verdicts
    text = read_until(proc, "xlb decap verdicts:", 20)
    line = next((ln for ln in text.splitlines() if ln.strip().startswith("ipip ")), "ipip 0")
    return int(line.split()[1])


@needs_root
def test_check_via_vip_wraps_checks_to_a_tunnel_real(tmp_path):
    log_path = str(tmp_path / "xlb.log")
    decaps = []
    with DrLab(prefix="xhvt", reals=2) as lab:
        try:
            for ns in lab.rs:
                proc = start_decap(ns, "--iface", "eth0", "--xdp-mode", "generic")
                decaps.append(proc)
                assert read_until(proc, "xlb decap: on eth0", 120), f"decap: {stop_proc(proc)}"
            lab.start_xlb(CONFIG, log_path=log_path, timeout=150)   # it compiles bpf/hcencap.c too
            wait_for(lambda: all(c["last_ok"] for s in control.call("health", path=lab.socket_path)
                                 for r in s["reals"] for c in r["checkers"]), timeout=30, what="every check passed")
            assert all(ipip_count(p) > 0 for p in decaps)     # the checks came wrapped
            rules, filters = lb_state(lab)
            assert len(rules) == 2 and len(filters) == 1

            lab.topo.lo_addr_del(lab.rs[1], VIP4)
            wait_for(lambda: REALS4[1] not in pool(lab), what="rs2 out of the pool")
            assert log_has(log_path, f"TCP connection to [{VIP4}]:tcp:80 via [{REALS4[1]}] timedout.")
            assert log_has(log_path, f"Removing service [{REALS4[1]}]:tcp:80 from VS [{VIP4}]:tcp:80")
            assert pool(lab) == {REALS4[0]: 1}
            assert {lab.ask(c, VIP4, 80) for c in CLIENTS4[:3]} == {"rs1"}

            lab.topo.lo_addr(lab.rs[1], VIP4)
            wait_for(lambda: REALS4[1] in pool(lab), what="rs2 back in the pool")
            lab.stop_xlb()
            assert lb_state(lab) == ([], [])
        finally:
            for p in decaps:
                stop_proc(p)
