"""State sync between two real `xlb run` daemons in two namespaces over real multicast (xlb/lab/syncpair.py), and
the VRRP active/backup pair: keepalived moves the VIP, xlb on both keeps connections and persistent clients on
their reals through a failover when it syncs. The full measurement is bench/failover.py."""
import os
import shutil

import pytest

from harness import wait_for
from xlb.lab.process import run_in_netns

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

LINES = [f"198.19.1.{10 + i}" for i in range(6)]
PERSISTENT = ["198.19.2.10", "198.19.3.10", "198.19.4.10"]
WARMUP = "198.19.9.10"  # one connection to each service before the measured ones: the master's rr is one ahead


def _scrape(url):
    import urllib.request
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


def pair(prefix, log_dir):
    from xlb.cli import main
    from xlb.lab.syncpair import SyncPair
    return SyncPair(prefix=prefix, xlb_main=main, log_dir=str(log_dir))


def _rows(entries, proto=None):
    return {(e["caddr"], e["cport"], e["vaddr"], e["vport"], e["daddr"], e["state"]) for e in entries
            if proto is None or e["proto"] == proto}


def test_a_backup_loads_the_masters_connections_and_templates(tmp_path):
    """Here over an IPv6 group and another port, as the config's [sync] mcast_group and mcast_port say (the tests
    below sync over the IPVS default, 224.0.0.81:8848)."""
    from xlb.lab.syncpair import LINE_PORT
    group = "ff02::8848"
    keys = f'mcast_group = "{group}"\nmcast_port = 9000\n'
    with pair("xsy", tmp_path) as lab:
        lab.add_clients(LINES + PERSISTENT)
        lab.start_xlb(1, sync="master", sync_keys=keys)
        lab.start_xlb(2, sync="backup", extra=("--metrics", "127.0.0.1:9842"), sync_keys=keys)
        lab.add_vip(1)
        asked = lab.ask_all(PERSISTENT)
        assert all(name.startswith("rs") for name in asked.values()), asked
        with lab.lines(LINES) as fleet:
            assert all(r.startswith("rs") for r in fleet.ask())
            master = lab.call(1, "conns")
            lines = {r for r in _rows(master) if r[3] == LINE_PORT and r[5] == "ESTABLISHED"}
            templates = {r for r in _rows(master) if r[5] == "NONE"}
            assert len(lines) == len(LINES) and len(templates) == len(PERSISTENT)

            def synced():
                return lines | templates <= _rows(lab.call(2, "conns"))
            wait_for(synced, timeout=10, what="the master's connections and templates in the backup's maps")
        status = lab.call(2, "status")["sync"]
        assert status["mode"] == "backup" and status["counts"]["loaded_templates"] >= len(PERSISTENT)
        assert status["group"] == f"[{group}]:9000"
        assert not any(k.startswith("skipped") for k in status["counts"]), status
        metrics = run_in_netns(lab.lbs[2], _scrape, "http://127.0.0.1:9842/metrics")
        assert f'xlb_sync_total{{what="loaded_templates"}} {status["counts"]["loaded_templates"]}' in metrics
        assert 'xlb_sync_total{what="received_messages"}' in metrics
        sent = lab.call(1, "status")["sync"]
        assert sent["sent"]["messages"] >= 1 and sent["ring_lost"] == 0


def test_a_backup_started_late_learns_active_connections_from_the_refresh(tmp_path):
    """The master re-sends the connections active since its last refresh ([sync] refresh, here 1 s): a backup
    that was not there when they opened still gets them, and the master's mode comes from the config."""
    from harness import cli_output
    with pair("xsr", tmp_path) as lab:
        lab.add_clients(LINES)
        lab.start_xlb(1, sync="master", refresh=1)
        lab.add_vip(1)
        with lab.lines(LINES) as fleet:
            assert all(r.startswith("rs") for r in fleet.ask())
            lab.start_xlb(2, sync="backup")

            def learnt():
                fleet.ask()  # keep them active
                return lab.holds(2, len(LINES), 0)
            wait_for(learnt, timeout=20, what="the refreshed connections in the late backup's maps")
        assert lab.call(1, "status")["sync"]["counts"]["refreshed"] >= len(LINES)
        text = cli_output(["status", "--socket", lab.socket(2)])
        assert "state sync backup on eth0, syncid 7: " in text and "loaded_conns" in text, text


@pytest.mark.skipif(shutil.which("keepalived") is None, reason="keepalived is not installed (make setup)")
@pytest.mark.parametrize("sync", ["both", None])
def test_vrrp_failover_keeps_connections_and_clients_with_sync(tmp_path, sync):
    from xlb.lab.syncpair import failover
    with pair("xvr" if sync else "xvn", tmp_path) as lab:
        lab.add_clients(LINES + PERSISTENT + [WARMUP])
        for i in (1, 2):
            lab.start_xlb(i, sync=sync)
        lab.start_keepalived(1, priority=150)
        lab.start_keepalived(2, priority=100)
        wait_for(lambda: lab.vip_holder() == 1, timeout=15, what="lb1 to hold the VIP")
        assert lab.ask_all([WARMUP])[WARMUP].startswith("rs")
        with lab.lines([WARMUP]) as warm:
            assert warm.ask()[0].startswith("rs")

        def backup_has_all():
            return lab.holds(2, len(LINES), len(PERSISTENT) + 1)  # and the warm-up client's template
        res = failover(lab, LINES, PERSISTENT,
                       wait_synced=(lambda: wait_for(backup_has_all, timeout=10, what="synced state")) if sync
                       else None)
        assert res["first_errors"] == 0, res
        if sync:
            assert (res["broken"], res["moved"]) == (0, 0), res
        else:
            # The control: the backup schedules what it has never seen, one rr position behind the master.
            assert res["broken"] + res["moved"] > 0, res
