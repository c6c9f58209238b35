"""Tunnel forwarding with real traffic: the DR lab (xlb/lab/demo.py: clients, the balancer, real servers on one
bridge) whose reals run `xlb decap` instead of taking frames for the VIP, and `xlb run` forwarding a persistent
fwmark service by GUE (IPVS's header), then, after a reload, by IPIP. Real TCP from the clients reaches the reals'
sockets and their answers go straight back; kill -9 and a restart keep the persistence templates; each real's decap
counters say which encapsulation it received."""
import re
import signal
from pathlib import Path

from conftest import needs_root
from harness import DrLab, log_has, read_until, start_decap, stop_proc, wait_for
from xlb.lab.demo import CLIENTS4, REALS4, VIP4

GUE_PORT = 5555
START_TIMEOUT = 120.0
NAME_OF = {r: f"rs{i + 1}" for i, r in enumerate(REALS4)}


def config(tunnel):
    reals = "".join(f'  [[service.real]]\n  address = "{r}"\n' for r in REALS4[:2])
    return (f'[[mark]]\nmark = 1\nproto = "tcp"\ndst = "{VIP4}/32"\nports = [80, 443]\n\n'
            f'[[service]]\nfwmark = 1\nscheduler = "rr"\nmethod = "tun"\n{tunnel}'
            f'persistence_timeout = 300\npersistence_netmask = "255.255.255.0"\n{reals}')


GUE = f'tunnel_type = "gue"\ntunnel_port = {GUE_PORT}\ntunnel_csum = "csum"\n'
IPIP = 'tunnel_type = "ipip"\n'


def decap_counts(proc):
    """The decap's verdict counters (SIGUSR1 prints them): {reason: packets}."""
    proc.send_signal(signal.SIGUSR1)
    text = read_until(proc, "xlb decap verdicts:", 20)
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^\s+(\w+)\s+(\d+) packets", text, re.M)}


@needs_root
def test_persistent_fwmark_tun_service_through_restart_and_reload(tmp_path):
    log_path = tmp_path / "xlb.log"
    decaps = []
    with DrLab(prefix="xtn", reals=2) as lab:
        try:
            for ns in lab.rs:
                proc = start_decap(ns, "--iface", "eth0", "--gue-port", str(GUE_PORT), "--xdp-mode", "generic")
                decaps.append(proc)
                assert read_until(proc, "xlb decap: on eth0", START_TIMEOUT), f"decap: {stop_proc(proc)}"
            lab.start_xlb(config(GUE), log_path=str(log_path))

            # One client /24, both ports of the mark: one real (persistence); another /24 gets the other real (rr).
            first = lab.ask(CLIENTS4[0], VIP4, 80)
            assert first in ("rs1", "rs2")
            assert lab.ask(CLIENTS4[1], VIP4, 443) == first
            second = lab.ask(CLIENTS4[3], VIP4, 80)
            assert second != first
            gue = [decap_counts(p).get("gue", 0) for p in decaps]
            assert all(n > 0 for n in gue), gue  # each real received GUE (a handshake and a request at least)

            # kill -9: the program keeps forwarding without a daemon; a restart adopts the templates.
            lab.kill_xlb()
            assert lab.ask(CLIENTS4[2], VIP4, 443) == first
            lab.restart_xlb(log_path=str(log_path))
            assert lab.ask(CLIENTS4[0], VIP4, 80) == first
            assert lab.ask(CLIENTS4[4], VIP4, 443) == second

            # Reload to IPIP: the same service (its templates stay), now IPIP on the wire.
            lab.rewrite_config(config(IPIP))
            lab.signal_xlb(signal.SIGHUP)
            wait_for(lambda: log_has(log_path, "xlb: reloaded"), what="reload logged")
            before = [decap_counts(p).get("ipip", 0) for p in decaps]
            assert lab.ask(CLIENTS4[1], VIP4, 80) == first
            assert lab.ask(CLIENTS4[5], VIP4, 80) in ("rs1", "rs2")
            after = [decap_counts(p).get("ipip", 0) for p in decaps]
            assert after[int(first[-1]) - 1] > before[int(first[-1]) - 1], (before, after)
            assert "drop_" not in " ".join(decap_counts(decaps[0])), Path(log_path).read_text()
        finally:
            for proc in decaps:
                stop_proc(proc)
