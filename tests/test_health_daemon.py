"""Health checks in a real `xlb run` (a DR lab of namespaces, generic XDP, real TCP): a real whose TCP_CHECK fails
leaves the service (the listing and new connections: its persistent clients move at their next connection), and
comes back when its check passes; with inhibit_on_failure it stays at weight 0. Each real's health port (9000) is
a server of its own, stopped and started by the test; the service's traffic goes to port 80."""
import json
import urllib.request

from conftest import needs_root
from prometheus_client.parser import text_string_to_metric_families

from xlb.lab.demo import CLIENTS4, REALS4, VIP4
from xlb.lab.process import run_in_netns
from xlb.lab.servers import tcp_echo_name_server
from xlb.ops import control
from harness import DrLab, cli_output, log_has, wait_for
from health_harness import HEALTH_PORT, config, health_servers, pool

METRICS_PORT = 9853


def _get(url):
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.read().decode()


def scrape(lab):
    """{(sample name, frozenset(labels)): value} of the daemon's /metrics (served in the LB namespace)."""
    text = run_in_netns(lab.lb, _get, f"http://127.0.0.1:{METRICS_PORT}/metrics")
    return {(x.name, frozenset(x.labels.items())): x.value
            for fam in text_string_to_metric_families(text) for x in fam.samples}


@needs_root
def test_a_failed_real_leaves_and_its_clients_move(log_path):
    with DrLab(prefix="xh1") as lab:
        servers = health_servers(lab)
        lab.start_xlb(config(), log_path=log_path, extra_args=("--metrics", str(METRICS_PORT)))
        wait_for(lambda: all(r["checkers"][0]["has_run"] for s in control.call("health", path=lab.socket_path)
                             for r in s["reals"]), what="every checker ran")
        first = {c: lab.ask(c, VIP4, 80) for c in CLIENTS4}
        assert set(first.values()) == {"rs1", "rs2", "rs3"}
        victim = next(c for c in CLIENTS4 if first[c] == "rs2")
        servers[1].stop()
        removing = f"Removing service [{REALS4[1]}]:tcp:80 from VS [{VIP4}]:tcp:80"
        wait_for(lambda: log_has(log_path, removing), what="the removal logged")
        assert log_has(log_path, f"TCP connection to [{REALS4[1]}]:tcp:{HEALTH_PORT} failed")
        wait_for(lambda: REALS4[1] not in pool(lab), what="the real out of the maps")
        assert pool(lab) == {REALS4[0]: 1, REALS4[2]: 1}
        (svc,) = control.call("health", path=lab.socket_path)
        down = next(r for r in svc["reals"] if r["address"] == REALS4[1])
        assert not down["alive"] and down["last_change"] and not down["checkers"][0]["last_ok"]
        text = cli_output(["list", "--health", "--socket", lab.socket_path])
        assert text.startswith(f"VS [{VIP4}]:tcp:80  quorum up, live weight 2, 2 in the pool\n")
        row = next(line for line in text.splitlines() if line.startswith(f"  {REALS4[1]}:80 "))
        assert row.split()[1:3] == ["down", "1"] and "TCP_CHECK fail" in " ".join(row.split())
        (js,) = json.loads(cli_output(["list", "--health", "--json", "--socket", lab.socket_path]))
        assert [(r["address"], r["alive"]) for r in js["reals"]] == [(REALS4[0], True), (REALS4[1], False),
                                                                     (REALS4[2], True)]
        m = scrape(lab)
        svc = f"tcp/{VIP4}:80"
        assert [m[("xlb_real_up", frozenset({"service": svc, "real": r}.items()))] for r in REALS4] == [1, 0, 1]
        assert m[("xlb_health_checks_total", frozenset({"kind": "TCP_CHECK", "result": "failure"}.items()))] >= 2
        assert m[("xlb_health_checks_total", frozenset({"kind": "TCP_CHECK", "result": "success"}.items()))] >= 3
        assert m[("xlb_health_check_seconds_total", frozenset({"kind": "TCP_CHECK"}.items()))] > 0
        listing = cli_output(["ipvsadm", "--socket", lab.socket_path, "-L", "-n"])
        assert REALS4[1] not in listing and REALS4[0] in listing
        # its persistent clients move at their next connection; the others stay where they were
        for c in CLIENTS4:
            now = lab.ask(c, VIP4, 80)
            assert now != "rs2"
            if first[c] != "rs2":
                assert now == first[c], c
        moved = lab.ask(victim, VIP4, 80)
        # it comes back after one pass; its former clients stay where they moved (their templates say so)
        servers[1] = lab.topo.spawn(lab.rs[1], tcp_echo_name_server, "h2", [("0.0.0.0", HEALTH_PORT)])
        wait_for(lambda: log_has(log_path, f"Adding service [{REALS4[1]}]:tcp:80 to VS [{VIP4}]:tcp:80"),
                 what="the return logged")
        wait_for(lambda: REALS4[1] in pool(lab), what="the real back in the maps")
        assert lab.ask(victim, VIP4, 80) == moved
        assert lab.daemon.is_alive()


@needs_root
def test_inhibit_on_failure_keeps_the_real_at_weight_0(log_path):
    with DrLab(prefix="xh2") as lab:
        servers = health_servers(lab)
        lab.start_xlb(config("inhibit_on_failure = true"), log_path=log_path)
        servers[2].stop()
        wait_for(lambda: log_has(log_path, f"Disabling service [{REALS4[2]}]:tcp:80 of VS [{VIP4}]:tcp:80"),
                 what="the real disabled")
        wait_for(lambda: pool(lab).get(REALS4[2]) == 0, what="weight 0 in the maps")
        assert pool(lab) == {REALS4[0]: 1, REALS4[1]: 1, REALS4[2]: 0}
        assert {lab.ask(c, VIP4, 80) for c in CLIENTS4} <= {"rs1", "rs2"}


def keepalived_conf(flag_dir):
    reals = "".join(f"""
    real_server {r} 80 {{
        TCP_CHECK {{
            connect_port {HEALTH_PORT}
            connect_timeout 0.5
            delay_loop 0.3
            delay_before_retry 0.2
            warmup 0
        }}
        MISC_CHECK {{
            misc_path "/usr/bin/test -e {flag_dir}/rs{i + 1}"
            delay_loop 0.3
            warmup 0
        }}
    }}""" for i, r in enumerate(REALS4))
    return f"""virtual_server {VIP4} 80 {{
    delay_loop 1
    lb_algo rr
    lb_kind DR
    protocol TCP
{reals}
}}
"""


@needs_root
def test_keepalived_conf_with_several_checkers_per_real(log_path, tmp_path):
    """Every checker of a real must pass: the MISC_CHECK failing alone takes the real out (its TCP_CHECK passes)."""
    for i in range(3):
        (tmp_path / f"rs{i + 1}").touch()
    with DrLab(prefix="xh3") as lab:
        health_servers(lab)
        lab.start_xlb(keepalived_conf(tmp_path), log_path=log_path, keepalived=True)
        wait_for(lambda: all(c["has_run"] for s in control.call("health", path=lab.socket_path)
                             for r in s["reals"] for c in r["checkers"]), what="every checker ran")
        (svc,) = control.call("health", path=lab.socket_path)
        assert [[c["kind"] for c in r["checkers"]] for r in svc["reals"]] == [["TCP_CHECK", "MISC_CHECK"]] * 3
        assert pool(lab) == {r: 1 for r in REALS4}
        (tmp_path / "rs3").unlink()
        wait_for(lambda: log_has(log_path, f"Removing service [{REALS4[2]}]:tcp:80 from VS [{VIP4}]:tcp:80"),
                 what="the removal logged")
        wait_for(lambda: REALS4[2] not in pool(lab), what="the real out of the maps")
        assert {lab.ask(c, VIP4, 80) for c in CLIENTS4} == {"rs1", "rs2"}
        (tmp_path / "rs3").touch()
        wait_for(lambda: REALS4[2] in pool(lab), what="the real back in the maps")
