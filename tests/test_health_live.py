"""Health changes seen by live traffic in a real `xlb run` (a DR lab of namespaces, generic XDP, real TCP):
on_real_failure with a long-lived connection across its real's failure; quorum loss bringing in the sorry server
(maps and traffic) and its return; inhibit_on_failure with the notify and quorum commands. Each real's health
port (9000) is a server of its own, stopped and started by the test."""
from clients import LineConnection
from conftest import needs_root

from xlb.lab.demo import CLIENTS4, REALS4, VIP4
from xlb.lab.servers import tcp_echo_name_server
from xlb.ops import control
from harness import DrLab, log_has, wait_for

HEALTH_PORT = 9000
MODES = {7001: "keep", 7002: "reschedule", 7003: "reset"}
CHECK = f"""
  [service.check]
  kind = "TCP_CHECK"
  connect_port = {HEALTH_PORT}
  connect_timeout = 2
  retry = 0
  warmup = 0
"""


def service(port, reals, extra=""):
    return (f'\n[[service]]\nvip = "{VIP4}"\nport = {port}\nproto = "tcp"\nscheduler = "rr"\ndelay_loop = 0.3\n'
            f'{extra}{CHECK}' + "".join(f'\n  [[service.real]]\n  address = "{r}"\n' for r in reals))


def health_server(lab, i):
    return lab.topo.spawn(lab.rs[i], tcp_echo_name_server, f"h{i + 1}", [("0.0.0.0", HEALTH_PORT)])


def pools(lab):
    """{service port: {real address: weight}} as the maps hold them (what `xlb ipvsadm -L -n` shows)."""
    return {s["port"]: {r["address"]: r["weight"] for r in s["reals"]}
            for s in control.call("list", path=lab.socket_path)["services"]}


def verdicts(lab):
    return {k: v["packets"] for k, v in control.call("stats", path=lab.socket_path)["verdicts"].items()}


@needs_root
def test_on_real_failure_keep_reschedule_reset(log_path):
    with DrLab(prefix="xhl1", line_ports=tuple(MODES)) as lab:
        servers = [health_server(lab, i) for i in range(3)]
        text = "[tables]\nsweep_interval = 0.2\n" + "".join(
            service(port, REALS4, f'on_real_failure = "{mode}"\n') for port, mode in MODES.items())
        lab.start_xlb(text, log_path=log_path)
        wait_for(lambda: all(len(p) == 3 for p in pools(lab).values()), timeout=30, what="every real in the maps")
        conns = {}
        try:
            for port in MODES:
                for src in CLIENTS4[:3]:
                    c = LineConnection(lab.cl, src, VIP4, port, timeout=2.0)
                    conns[(port, c.ask())] = c
            assert set(conns) == {(p, f"rs{i}") for p in MODES for i in (1, 2, 3)}
            servers[1].stop()
            wait_for(lambda: all(REALS4[1] not in p for p in pools(lab).values()), what="rs2 out of every service")
            assert log_has(log_path, f"Removing service [{REALS4[1]}]:tcp:7001 from VS [{VIP4}]:tcp:7001")
            before = verdicts(lab).get("drop_real_failed", 0)
            # keep: the connection goes on to the failed real
            assert conns[(7001, "rs2")].ask() == "rs2"
            # reschedule: its next segment goes to another real, whose stack resets it
            try:
                got = conns[(7002, "rs2")].ask()
            except OSError:
                got = "reset"
            assert got == "reset"
            assert verdicts(lab).get("drop_real_failed", 0) == before
            # reset: the segment is dropped and the entry expired; the retransmission meets another real's RST
            try:
                got = conns[(7003, "rs2")].ask()
            except OSError:
                got = "reset"
            assert got == "reset"
            assert verdicts(lab)["drop_real_failed"] >= before + 1
            # the connections of the healthy reals never noticed
            for (port, name), c in conns.items():
                if name != "rs2":
                    assert c.ask() == name, (port, name)
        finally:
            for c in conns.values():
                c.close()
        assert lab.daemon.is_alive()


@needs_root
def test_quorum_loss_brings_in_the_sorry_server_and_back(log_path):
    """rs1 and rs2 serve, quorum 2: one failure loses the quorum and rs3, the sorry server, takes every client."""
    with DrLab(prefix="xhl2") as lab:
        servers = [health_server(lab, i) for i in range(2)]
        lab.start_xlb(service(80, REALS4[:2], f'quorum = 2\nsorry_server = "{REALS4[2]}"\n'), log_path=log_path)
        wait_for(lambda: pools(lab) == {80: {REALS4[0]: 1, REALS4[1]: 1}}, timeout=30, what="both reals in the maps")
        assert {lab.ask(c, VIP4, 80) for c in CLIENTS4} == {"rs1", "rs2"}
        servers[0].stop()
        wait_for(lambda: pools(lab) == {80: {REALS4[2]: 1}}, what="the sorry server alone in the maps")
        assert log_has(log_path, f"Lost quorum 2-0=2 > 1 for VS [{VIP4}]:tcp:80")
        assert log_has(log_path, f"Adding sorry server [{REALS4[2]}]:tcp:80 to VS [{VIP4}]:tcp:80")
        assert {lab.ask(c, VIP4, 80) for c in CLIENTS4} == {"rs3"}
        (svc,) = control.call("health", path=lab.socket_path)
        assert not svc["quorum_up"] and svc["sorry_server_active"]
        servers[0] = health_server(lab, 0)
        wait_for(lambda: pools(lab) == {80: {REALS4[0]: 1, REALS4[1]: 1}}, what="the reals back in the maps")
        assert log_has(log_path, f"Removing sorry server [{REALS4[2]}]:tcp:80 from VS [{VIP4}]:tcp:80")
        assert {lab.ask(c, VIP4, 80) for c in CLIENTS4} == {"rs1", "rs2"}
        assert lab.daemon.is_alive()


@needs_root
def test_inhibit_on_failure_runs_the_notify_and_quorum_commands(log_path, tmp_path):
    """notify_down / notify_up per real and quorum_down / quorum_up run as argv (no shell): each leaves a file."""
    def touch(name):
        return f'["/usr/bin/touch", "{tmp_path}/{name}"]'
    with DrLab(prefix="xhl3") as lab:
        servers = [health_server(lab, i) for i in range(3)]
        text = service(80, (), f"inhibit_on_failure = true\nquorum = 3\nquorum_up = {touch('qup')}\n"
                               f"quorum_down = {touch('qdown')}\n")
        text += "".join(f'\n  [[service.real]]\n  address = "{r}"\n  notify_up = {touch(f"up{i + 1}")}\n'
                        f'  notify_down = {touch(f"down{i + 1}")}\n' for i, r in enumerate(REALS4))
        lab.start_xlb(text, log_path=log_path)
        wait_for(lambda: all(c["last_ok"] for s in control.call("health", path=lab.socket_path)
                             for r in s["reals"] for c in r["checkers"]), timeout=30, what="every check passed")
        for f in tmp_path.iterdir():              # a loaded machine's check may have timed out at start
            f.unlink()
        servers[1].stop()
        wait_for(lambda: (tmp_path / "down2").exists(), what="notify_down of rs2")
        wait_for(lambda: (tmp_path / "qdown").exists(), what="quorum_down")
        wait_for(lambda: pools(lab) == {80: {REALS4[0]: 1, REALS4[1]: 0, REALS4[2]: 1}}, what="rs2 at weight 0")
        assert log_has(log_path, f"Disabling service [{REALS4[1]}]:tcp:80 of VS [{VIP4}]:tcp:80")
        assert not (tmp_path / "down1").exists() and not (tmp_path / "down3").exists()
        assert {lab.ask(c, VIP4, 80) for c in CLIENTS4} == {"rs1", "rs3"}
        servers[1] = health_server(lab, 1)
        wait_for(lambda: (tmp_path / "up2").exists(), what="notify_up of rs2")
        wait_for(lambda: (tmp_path / "qup").exists(), what="quorum_up again")
        wait_for(lambda: pools(lab) == {80: {r: 1 for r in REALS4}}, what="rs2 back at weight 1")


def via_rules(lab):
    """The policy rules xlb's check_via_vip left in the LB namespace (xlb/ops/viavip.py)."""
    from pyroute2 import IPRoute
    from xlb.ops.viavip import MARK_BASE, MARK_SPAN
    with IPRoute(netns=lab.lb) as ipr:
        return [r for r in ipr.get_rules() if MARK_BASE <= (r.get_attr("FRA_TABLE") or 0) < MARK_BASE + MARK_SPAN]


@needs_root
def test_check_via_vip_fails_a_real_that_lost_its_vip(log_path):
    """Port 80 checks via the VIP, port 443 checks each real's own address: with the VIP off rs3's lo, only the
    first takes rs3 out (its clients' connections would fail), and it comes back when the VIP does."""
    with DrLab(prefix="xhl4") as lab:
        text = service(80, REALS4, "check_via_vip = true\n").replace(f"connect_port = {HEALTH_PORT}\n", "")
        text += service(443, REALS4).replace(f"connect_port = {HEALTH_PORT}\n", "")
        lab.start_xlb(text, log_path=log_path)
        wait_for(lambda: all(c["last_ok"] for s in control.call("health", path=lab.socket_path)
                             for r in s["reals"] for c in r["checkers"]), timeout=30, what="every check passed")
        (h80, _) = control.call("health", path=lab.socket_path)
        assert [r["checkers"][0]["target"] for r in h80["reals"]] == [f"[{VIP4}]:tcp:80 via [{r}]" for r in REALS4]
        assert len(via_rules(lab)) == 3
        lab.topo.lo_addr_del(lab.rs[2], VIP4)
        wait_for(lambda: REALS4[2] not in pools(lab)[80], what="rs3 out of port 80")
        assert log_has(log_path, f"TCP connection to [{VIP4}]:tcp:80 via [{REALS4[2]}] timedout.")
        assert log_has(log_path, f"Removing service [{REALS4[2]}]:tcp:80 from VS [{VIP4}]:tcp:80")
        assert pools(lab) == {80: {REALS4[0]: 1, REALS4[1]: 1}, 443: {r: 1 for r in REALS4}}
        assert {lab.ask(c, VIP4, 80) for c in CLIENTS4} == {"rs1", "rs2"}
        lab.topo.lo_addr(lab.rs[2], VIP4)
        wait_for(lambda: REALS4[2] in pools(lab)[80], what="rs3 back in port 80")
        lab.stop_xlb()
        assert via_rules(lab) == []
