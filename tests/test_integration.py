"""End to end: `xlb run` in generic XDP mode in a DR lab of namespaces (xlb.lab.demo.DrLab), real TCP traffic.

Each test builds its own lab with a unique prefix and tears it down whatever happens. Starting xlb takes a few
seconds (bcc compiles the program).
"""
import ipaddress
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import needs_root

from xlb.lab.demo import CLIENTS4, CLIENTS6, DEMO_CONFIG, REALS4, REALS6, VIP4, VIP6, xdp_prog_id
from harness import NAMES, cli_captured, DrLab, log_has, run_xlb_logged, wait_for
from clients import LineConnection
from xlb.lab.servers import tcp_ask
from xlb.lab.process import run_in_netns

REPO = Path(__file__).resolve().parent.parent
XLB = REPO / ".venv" / "bin" / "xlb"
NAME_OF = {**{r: f"rs{i + 1}" for i, r in enumerate(REALS4)}, **{r: f"rs{i + 1}" for i, r in enumerate(REALS6)}}


def service(vip, port, reals, scheduler="rr", weights=None, extra=""):
    weights = weights or [1] * len(reals)
    body = "".join(f'\n  [[service.real]]\n  address = "{r}"\n  weight = {w}\n' for r, w in zip(reals, weights))
    return (f'[[service]]\nvip = "{vip}"\nport = {port}\nproto = "tcp"\nscheduler = "{scheduler}"\n{extra}'
            f'{body}\n')


# ---------------------------------------------------------------------------------------------------------------


@needs_root
def test_fwmark_80_443_grouped_with_24_persistence():
    with DrLab(prefix="xit1") as lab:
        lab.start_xlb(DEMO_CONFIG)
        by_subnet = {}
        for c in CLIENTS4:
            first = lab.ask(c, VIP4, 80)
            assert first in NAMES
            assert lab.ask(c, VIP4, 443) == first, c
            assert lab.ask(c, VIP4, 80) == first, c
            subnet = ipaddress.ip_network(f"{c}/24", strict=False)
            by_subnet.setdefault(subnet, set()).add(first)
        assert sorted(map(str, by_subnet)) == ["198.19.1.0/24", "198.19.2.0/24", "198.19.3.0/24"]
        for subnet, reals in by_subnet.items():
            assert len(reals) == 1, f"{subnet} spread over {reals}"
        # rr is one rotation per service (not one per CPU): the three subnets' first connections take rs1, rs2, rs3.
        assert {str(s): r.pop() for s, r in by_subnet.items()} == {
            "198.19.1.0/24": "rs1", "198.19.2.0/24": "rs2", "198.19.3.0/24": "rs3"}


@needs_root
def test_ipv6_64_persistence():
    cfg = service(VIP6, 80, REALS6, extra='persistence_timeout = 300\npersistence_netmask = "64"\n')
    with DrLab(prefix="xit2") as lab:
        lab.start_xlb(cfg)
        a, b = CLIENTS6[0], CLIENTS6[1]
        assert ipaddress.ip_network(f"{a}/64", strict=False) == ipaddress.ip_network(f"{b}/64", strict=False)
        first = lab.ask(a, VIP6, 80)
        assert first in NAMES
        for _ in range(4):
            assert lab.ask(b, VIP6, 80) == first
            assert lab.ask(a, VIP6, 80) == first


@needs_root
def test_sighup_reload_keeps_live_connection(log_path):
    line_port = 8080
    with DrLab(prefix="xit3", line_ports=(line_port,)) as lab:
        lab.start_xlb(service(VIP4, line_port, REALS4), log_path=log_path)
        client = CLIENTS4[0]
        with LineConnection(lab.cl, client, VIP4, line_port) as live:
            serving = live.ask()
            assert serving in NAMES
            assert live.ask() == serving
            idx = sorted(NAMES).index(serving)
            dropped = REALS4[(idx + 1) % 3]
            kept = [r for r in REALS4 if r != dropped]
            other = next(r for r in kept if NAME_OF[r] != serving)
            # Port 443 has no service yet: the LB does not answer it.
            with pytest.raises(OSError):
                run_in_netns(lab.cl, tcp_ask, CLIENTS4[3], VIP4, 443, 1.0)

            new_cfg = (service(VIP4, line_port, kept, scheduler="wrr", weights=[3, 2])
                       + service(VIP4, 443, [other]))
            lab.rewrite_config(new_cfg)
            lab.signal_xlb(signal.SIGHUP)
            wait_for(lambda: log_has(log_path, "xlb: reloaded"), what="reload logged")
            assert "xlb: reloaded " + lab.config_path + ": 2 services, 3 reals, 0 mark rules" \
                in Path(log_path).read_text()
            # The live connection stays on its real; the new service serves; new connections avoid the dropped real.
            for _ in range(3):
                assert live.ask() == serving
            assert lab.ask(CLIENTS4[3], VIP4, 443) == NAME_OF[other]
            fresh = set()
            for c in CLIENTS4:
                with LineConnection(lab.cl, c, VIP4, line_port) as conn:
                    fresh.add(conn.ask())
            assert fresh <= {NAME_OF[r] for r in kept}, fresh
            assert NAME_OF[dropped] not in fresh

            # A config with a typo is rejected and the running one stays in force.
            bad = new_cfg.replace("weight = 2", "wieght = 2")
            lab.rewrite_config(bad)
            lab.signal_xlb(signal.SIGHUP)
            wait_for(lambda: log_has(log_path, "reload rejected"), what="rejection logged")
            text = Path(log_path).read_text()
            assert (f"xlb: reload rejected, running config unchanged: {lab.config_path}: line 13: "
                    "service[0].real[1].wieght: unknown key 'wieght'; did you mean 'weight'? "
                    "allowed here: address, port, weight") in text
            assert lab.daemon.is_alive()
            assert live.ask() == serving
            assert lab.ask(CLIENTS4[3], VIP4, 443) == NAME_OF[other]
            for c in CLIENTS4[:3]:
                with LineConnection(lab.cl, c, VIP4, line_port) as conn:
                    assert conn.ask() != NAME_OF[dropped]


@needs_root
def test_run_refuses_busy_interface_unless_force(log_path):
    with DrLab(prefix="xit4") as lab:
        lab.start_xlb(DEMO_CONFIG)
        first_id = xdp_prog_id(lab.lb, "eth0")
        assert first_id is not None
        # Maps and socket of its own: a second daemon on the same pinned maps is refused outright
        # (tests/test_restart.py), and /run/xlb/eth0.sock may serve another test's lab.
        argv = ["run", "--iface", "eth0", "--config", lab.config_path, "--xdp-mode", "generic",
                "--pin-dir", str(lab.pin_root / "second"), "--socket", lab.socket_path + ".second"]
        rc = run_in_netns(lab.lb, cli_captured, log_path, argv)
        out = Path(log_path).read_text()
        assert rc == 1
        assert "xlb: error: eth0 already has an XDP program attached; use --force to replace it" in out
        assert xdp_prog_id(lab.lb, "eth0") == first_id
        assert lab.daemon.is_alive()

        second = lab.topo.spawn(lab.lb, run_xlb_logged, log_path, argv + ["--force"])
        new_id = wait_for(lambda: (xdp_prog_id(lab.lb, "eth0") or first_id) != first_id
                          and xdp_prog_id(lab.lb, "eth0"), timeout=60, what="forced replacement")
        assert new_id != first_id
        assert lab.ask(CLIENTS4[0], VIP4, 80) in NAMES
        second.stop()


@needs_root
def test_sigterm_detaches(log_path):
    with DrLab(prefix="xit6") as lab:
        lab.start_xlb(DEMO_CONFIG, log_path=log_path)
        assert xdp_prog_id(lab.lb, "eth0") is not None
        assert lab.ask(CLIENTS4[0], VIP4, 80) in NAMES
        proc = lab.daemon.proc
        lab.stop_xlb()
        assert proc.exitcode == 0
        assert xdp_prog_id(lab.lb, "eth0") is None
        assert "xlb: detached from eth0" in Path(log_path).read_text()


def test_cli_check(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text(DEMO_CONFIG)
    r = subprocess.run([str(XLB), "check", str(good)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"{good}: OK (1 services, 3 reals, 1 mark rules)\n"
    assert r.stderr == ""

    bad = tmp_path / "bad.toml"
    bad.write_text(DEMO_CONFIG.replace(f'address = "{REALS4[0]}"', f'address = "{REALS4[0]}"\n  weight = -1'))
    r = subprocess.run([str(XLB), "check", str(bad)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert r.stdout == ""
    assert r.stderr == (f"xlb: error: {bad}: line 17: service[0].real[0].weight: weight must be an integer "
                        "0..65535, got -1\n")



@needs_root
def test_control_socket_status_and_stats():
    """The daemon answers on its control socket; clients get its state, and a clear error without a daemon."""
    from xlb.ops import control
    with DrLab(prefix="xit7") as lab:
        lab.start_xlb(DEMO_CONFIG)
        st = control.call("status", path=lab.socket_path)
        assert st["iface"] == "eth0" and st["summary"] == "1 services, 3 reals, 1 mark rules"
        lab.ask(CLIENTS4[0], VIP4, 80)
        snap = control.call("stats", path=lab.socket_path)
        assert snap["services"][0]["service"] == "fwm/1" and snap["services"][0]["conns"] == 1
        with pytest.raises(control.ControlError, match="unknown command 'nope'"):
            control.call("nope", path=lab.socket_path)
        sock = lab.socket_path
        lab.stop_xlb()
        with pytest.raises(control.ControlError, match="is `xlb run` running"):
            control.call("status", path=sock)


def _real_loads(lab):
    """{real name: (active, inactive)} from the daemon's stats."""
    from xlb.ops import control
    (svc,) = control.call("stats", path=lab.socket_path)["services"]
    return {NAME_OF[r["address"]]: (r["active"], r["inactive"]) for r in svc["reals"]}


LOAD_TIMERS = "[timeouts]\ntcpfin = 1\n[tables]\nsweep_interval = 0.2\n"


@needs_root
def test_wlc_splits_long_lived_connections_by_weight_and_counts_return_to_zero():
    port = 8080
    with DrLab(prefix="xs1", line_ports=(port,)) as lab:
        lab.start_xlb(LOAD_TIMERS + service(VIP4, port, REALS4[:2], scheduler="wlc", weights=[1, 2]))
        conns = [LineConnection(lab.cl, CLIENTS4[i % len(CLIENTS4)], VIP4, port) for i in range(6)]
        try:
            served = [c.ask() for c in conns]
            # IPVS wlc, each connection established before the next: rs1, rs2, rs2, rs1, rs2, rs2.
            assert sorted(served) == ["rs1", "rs1", "rs2", "rs2", "rs2", "rs2"], served
            assert wait_for(lambda: _real_loads(lab) == {"rs1": (2, 0), "rs2": (4, 0)} or None,
                            what="2 and 4 active connections")
        finally:
            for c in conns:
                c.close()
        wait_for(lambda: _real_loads(lab) == {"rs1": (0, 0), "rs2": (0, 0)}, timeout=15,
                 what="counts back to zero once the closed connections expire")


@needs_root
def test_fo_threshold_takes_real_out_and_brings_it_back(log_path):
    port = 8080
    base = LOAD_TIMERS + service(VIP4, port, REALS4[:2], scheduler="fo", weights=[2, 1])
    cfg = base.replace("weight = 2\n", "weight = 2\n  uthreshold = 2\n  lthreshold = 1\n")
    with DrLab(prefix="xs2", line_ports=(port,)) as lab:
        lab.start_xlb(cfg, log_path=log_path)
        first = [LineConnection(lab.cl, CLIENTS4[i], VIP4, port) for i in range(2)]
        try:
            assert [c.ask() for c in first] == ["rs1", "rs1"]         # fo: the highest weight
            with LineConnection(lab.cl, CLIENTS4[2], VIP4, port) as spill:
                assert spill.ask() == "rs2"                          # rs1 reached uthreshold 2: overloaded
        finally:
            for c in first:
                c.close()
        # Below lthreshold (0 < 1) once rs1's closed connections expire: it takes connections again.
        wait_for(lambda: _real_loads(lab)["rs1"] == (0, 0), timeout=15, what="rs1's connections to expire")
        with LineConnection(lab.cl, CLIENTS4[3], VIP4, port) as back:
            assert back.ask() == "rs1"
        # Weight 0 on rs1: fo moves to the next highest weight.
        lab.rewrite_config(cfg.replace("weight = 2\n", "weight = 0\n"))
        lab.signal_xlb(signal.SIGHUP)
        wait_for(lambda: log_has(log_path, "reloaded"), what="reload")
        with LineConnection(lab.cl, CLIENTS4[4], VIP4, port) as moved:
            assert moved.ask() == "rs2"


@needs_root
def test_lc_sends_new_connections_away_from_a_loaded_real(log_path):
    port = 8080
    one = LOAD_TIMERS + service(VIP4, port, REALS4[:1], scheduler="lc")
    two = LOAD_TIMERS + service(VIP4, port, REALS4[:2], scheduler="lc")
    with DrLab(prefix="xs3", line_ports=(port,)) as lab:
        lab.start_xlb(one, log_path=log_path)
        held = [LineConnection(lab.cl, CLIENTS4[i], VIP4, port) for i in range(3)]
        try:
            assert [c.ask() for c in held] == ["rs1"] * 3
            lab.rewrite_config(two)
            lab.signal_xlb(signal.SIGHUP)
            wait_for(lambda: log_has(log_path, "reloaded"), what="reload")
            fresh = [LineConnection(lab.cl, CLIENTS4[3 + i], VIP4, port) for i in range(3)]
            try:
                # rs1 holds 3 established (cost 768): rs2 takes the next three (0, 256, 512).
                assert [c.ask() for c in fresh] == ["rs2"] * 3
                # The counts are the data plane's running ones, rewritten from the table by every sweep: a sweep
                # whose scan began before the last connection opened leaves it uncounted until the next one.
                wait_for(lambda: _real_loads(lab) == {"rs1": (3, 0), "rs2": (3, 0)}, timeout=5,
                         what="rs1 and rs2 at 3 established connections each")
            finally:
                for c in fresh:
                    c.close()
        finally:
            for c in held:
                c.close()


@needs_root
def test_ovf_fills_to_weight_then_spills_then_refuses():
    port = 8080
    with DrLab(prefix="xs4", line_ports=(port,)) as lab:
        lab.start_xlb(LOAD_TIMERS + service(VIP4, port, REALS4[:2], scheduler="ovf", weights=[2, 1]))
        conns = []
        try:
            for i in range(3):
                conns.append(LineConnection(lab.cl, CLIENTS4[i], VIP4, port))
            assert [c.ask() for c in conns] == ["rs1", "rs1", "rs2"]   # rs1 up to its weight, then rs2
            with pytest.raises(Exception):
                LineConnection(lab.cl, CLIENTS4[3], VIP4, port, timeout=2.0).ask()   # every real is full
        finally:
            for c in conns:
                c.close()
