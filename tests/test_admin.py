"""xlb.ops.admin: runtime edits as pure Config -> Config functions, and `xlb save`'s round trip (no root, no bcc)."""
import dataclasses
import ipaddress

import pytest

from xlb.ops import admin
from xlb.ops.parse import parse_ports, parse_service
from xlb.config import model as xconfig
from xlb.config import read as xread
from xlb.errors import ConfigError

BASE = """\
[timeouts]
tcp = 900

[[mark]]
mark = 1
proto = "tcp"
dst = "198.51.100.10/32"
ports = [80, 443, "8000-8099"]

[[service]]
fwmark = 1
scheduler = "rr"
persistence_timeout = 300
persistence_netmask = "255.255.255.0"

  [[service.real]]
  address = "198.18.0.11"

  [[service.real]]
  address = "198.18.0.12"
  weight = 3
  uthreshold = 100
  lthreshold = 50

[[service]]
vip = "2001:db8:100::10"
port = 53
proto = "udp"
scheduler = "mh"
mh_table_size = 251
sched_flags = ["mh-port"]
persistence_timeout = 60
persistence_netmask = "64"
persistence_mode = "timeout"
expire_quiescent_template = true

  [[service.real]]
  address = "2001:db8::11"
"""

TCP80 = {"proto": "tcp", "vip": "198.51.100.10", "port": 80}
FWM1 = {"fwmark": 1, "family": 4}


def base():
    return xread.parse(BASE, "base.toml")


def strip_where(cfg):
    """Config with every `where` blanked: what a round trip must keep is the meaning, not the field paths."""
    svcs = tuple(dataclasses.replace(s, where="", reals=tuple(dataclasses.replace(r, where="") for r in s.reals))
                 for s in cfg.services)
    marks = tuple(dataclasses.replace(m, where="") for m in cfg.marks)
    return dataclasses.replace(cfg, services=svcs, marks=marks, source="")


def edit(ops, cfg=None):
    return admin.apply_ops(cfg or base(), ops, "test")


def rejected(ops, cfg=None):
    with pytest.raises(ConfigError) as info:
        edit(ops, cfg)
    return info.value


# --- save / round trip -----------------------------------------------------------------------------------------


def test_save_round_trip_keeps_every_setting():
    cfg = base()
    text = admin.save_text(cfg, "header line")
    assert text.startswith("# header line\n")
    again = xread.parse(text, "saved.toml")
    assert again == dataclasses.replace(cfg, source="saved.toml")


def test_round_trip_of_defaults_and_empty():
    for text in ("", '[[service]]\nvip = "198.51.100.10"\nport = 80\nproto = "tcp"\n'):
        cfg = xread.parse(text, "x")
        assert xread.parse(admin.save_text(cfg), "x") == cfg


def test_round_trip_after_edits_reproduces_the_edited_state():
    cfg = edit([{"op": "service-add", "service": TCP80, "scheduler": "wrr"},
                {"op": "real-add", "service": TCP80, "address": "198.18.0.13", "weight": 0},
                {"op": "mark-add", "mark": 7, "proto": "udp", "dst": "2001:db8:7::/48", "ports": [53, "1000-1001"]}])
    assert strip_where(xread.parse(admin.save_text(cfg), "x")) == strip_where(cfg)


# --- services ----------------------------------------------------------------------------------------------------


def test_service_add_defaults_to_wlc_without_persistence():
    cfg = edit([{"op": "service-add", "service": TCP80}])
    svc = cfg.services[-1]
    assert (svc.proto, str(svc.vip), svc.port, svc.scheduler, svc.persistence_timeout, svc.reals) == \
        ("tcp", "198.51.100.10", 80, "wlc", None, ())
    assert cfg.services[:2] == base().services  # the others untouched, where included


def test_service_add_persistent_with_netmask():
    cfg = edit([{"op": "service-add", "service": TCP80, "scheduler": "sh", "persistence": 360,
                 "netmask": "255.255.0.0"}])
    svc = cfg.services[-1]
    assert (svc.scheduler, svc.persistence_timeout, svc.persistence_netmask[:4]) == ("sh", 360, b"\xff\xff\0\0")


def test_service_add_existing_is_refused():
    err = rejected([{"op": "service-add", "service": FWM1}])
    assert (err.where, "already exists" in err.message) == ("-f", True)


def test_native_edit_changes_only_what_is_given():
    cfg = edit([{"op": "service-edit", "service": FWM1, "scheduler": "wrr"}])
    old, new = base().services[0], cfg.services[0]
    assert new == dataclasses.replace(old, scheduler="wrr")


def test_ipvsadm_edit_replaces_settings_but_keeps_reals():
    cfg = edit([{"op": "service-edit", "service": FWM1, "replace": True}])
    old, new = base().services[0], cfg.services[0]
    assert (new.scheduler, new.persistence_timeout) == ("wlc", None)
    assert new.reals == old.reals


def test_edit_dropping_persistence_drops_its_settings():
    cfg = edit([{"op": "service-edit", "service": {"proto": "udp", "vip": "2001:db8:100::10", "port": 53},
                 "persistence": False, "scheduler": "rr"}])
    svc = cfg.services[1]
    assert (svc.persistence_timeout, svc.expire_quiescent_template, svc.sched_flags, svc.scheduler) == \
        (None, False, (), "rr")


def test_native_ops_on_and_off_keeps_the_rest():
    """`xlb service edit --ops / --no-ops` (ops true / false); None leaves it; TCP is refused naming -o."""
    udp53 = {"proto": "udp", "vip": "2001:db8:100::10", "port": 53}
    on = edit([{"op": "service-edit", "service": udp53, "ops": True}])
    assert on.services[1] == dataclasses.replace(base().services[1], ops=True)
    assert edit([{"op": "service-edit", "service": udp53, "ops": None}], on).services[1].ops is True
    assert edit([{"op": "service-edit", "service": udp53, "ops": False}], on).services[1] == base().services[1]
    err = rejected([{"op": "service-add", "service": TCP80, "ops": True}])
    assert err.where == "-o" and "only to UDP" in err.message


def test_service_del_and_missing_service():
    cfg = edit([{"op": "service-del", "service": FWM1}])
    assert [s.name for s in cfg.services] == ["udp/[2001:db8:100::10]:53"]
    err = rejected([{"op": "service-del", "service": TCP80}])
    assert (err.where, err.message) == ("-t", "no service tcp/198.51.100.10:80")


def test_clear_keeps_mark_rules():
    cfg = edit([{"op": "clear"}])
    assert (cfg.services, len(cfg.marks)) == ((), 1)


@pytest.mark.parametrize("op, where, fragment", [
    ({"op": "service-add", "service": TCP80, "netmask": "255.255.255.0"}, "-M", "no effect without"),
    ({"op": "service-add", "service": TCP80, "persistence": 60, "netmask": "64"}, "-M", "dotted mask"),
    ({"op": "service-add", "service": TCP80, "scheduler": "bogus"}, "-s", "unknown scheduler"),
    ({"op": "service-add", "service": {"proto": "tcp", "vip": "198.51.100.10", "port": 0}}, "-t",
     "requires persistence_timeout"),
    ({"op": "service-add", "service": TCP80, "sched_flags": ["sh-port"]}, "-b", "takes no flags"),
])
def test_service_errors_name_the_option(op, where, fragment):
    err = rejected([op])
    assert err.where == where and fragment in err.message, str(err)
    assert err.source == "test"


# --- reals ---------------------------------------------------------------------------------------------------


def test_real_add_edit_del():
    cfg = edit([{"op": "real-add", "service": FWM1, "address": "198.18.0.13", "weight": 5, "uthreshold": 10}])
    r = cfg.services[0].reals[-1]
    assert (str(r.address), r.weight, r.uthreshold) == ("198.18.0.13", 5, 10)
    cfg = edit([{"op": "real-edit", "service": FWM1, "address": "198.18.0.12", "weight": 0}], cfg)
    r = cfg.services[0].reals[1]
    assert (r.weight, r.uthreshold, r.lthreshold) == (0, 100, 50)  # thresholds kept: native edit
    cfg = edit([{"op": "real-edit", "service": FWM1, "address": "198.18.0.12", "replace": True}], cfg)
    r = cfg.services[0].reals[1]
    assert (r.weight, r.uthreshold, r.lthreshold) == (1, 0, 0)  # ipvsadm -e: defaults again
    cfg = edit([{"op": "real-del", "service": FWM1, "address": "198.18.0.11"}], cfg)
    assert [str(r.address) for r in cfg.services[0].reals] == ["198.18.0.12", "198.18.0.13"]


@pytest.mark.parametrize("op, where, fragment", [
    ({"op": "real-add", "service": FWM1, "address": "198.18.0.11"}, "-r", "already exists"),
    ({"op": "real-add", "service": FWM1, "address": "2001:db8::11"}, "-r", "is IPv6 but the service is IPv4"),
    ({"op": "real-add", "service": FWM1, "address": "198.18.0.13", "weight": 70000}, "-w", "0..65535"),
    ({"op": "real-add", "service": FWM1, "address": "198.18.0.13", "lthreshold": 5}, "-y", "without uthreshold"),
    ({"op": "real-edit", "service": FWM1, "address": "198.18.0.99", "weight": 1}, "-r", "no real 198.18.0.99"),
    ({"op": "real-add", "service": TCP80, "address": "198.18.0.13"}, "-t", "no service"),
    ({"op": "real-add", "service": FWM1, "address": "127.0.0.1"}, "-r", "real 127.0.0.1 is a loopback address"),
    ({"op": "real-add", "service": FWM1, "address": "255.255.255.255"}, "-r", "is the broadcast address"),
    ({"op": "real-add", "service": FWM1, "address": "198.51.100.10"}, "-r", "is the dst of mark[0] (mark 1)"),
])
def test_real_errors_name_the_option(op, where, fragment):
    err = rejected([op])
    assert err.where == where and fragment in err.message, str(err)


def test_real_port_under_direct_routing():
    cfg = edit([{"op": "service-add", "service": TCP80}])
    ok = edit([{"op": "real-add", "service": TCP80, "address": "198.18.0.11", "port": 80}], cfg)
    assert str(ok.services[-1].reals[0].address) == "198.18.0.11"
    err = rejected([{"op": "real-add", "service": TCP80, "address": "198.18.0.11", "port": 8080}], cfg)
    assert err.where == "-r" and "keeps the destination port" in err.message
    # A mark service has no port of its own: the real's port is ignored, as under IPVS DR.
    edit([{"op": "real-add", "service": FWM1, "address": "198.18.0.14", "port": 80}])


def test_batch_is_all_or_nothing():
    cfg = base()
    err = rejected([{"op": "service-add", "service": TCP80},
                    {"op": "real-add", "service": TCP80, "address": "198.18.0.11", "weight": -1}], cfg)
    assert err.where == "-w"
    assert cfg == base()


# --- marks and timeouts ------------------------------------------------------------------------------------------


def test_mark_add_and_del():
    cfg = edit([{"op": "mark-add", "mark": 2, "proto": "udp", "dst": "198.51.100.0/24", "ports": ["53"]}])
    rule = cfg.marks[-1]
    assert (rule.mark, rule.proto, rule.dst, rule.ports) == (2, "udp", ipaddress.ip_network("198.51.100.0/24"),
                                                             ((53, 53),))
    cfg = edit([{"op": "mark-del", "mark": 1}], cfg)
    assert [m.mark for m in cfg.marks] == [2]


def test_mark_del_matches_given_fields_only():
    cfg = edit([{"op": "mark-add", "mark": 1, "dst": "198.51.100.11/32"}])
    after = edit([{"op": "mark-del", "mark": 1, "dst": "198.51.100.11/32"}], cfg)
    assert [str(m.dst) for m in after.marks] == ["198.51.100.10/32"]
    err = rejected([{"op": "mark-del", "mark": 1, "ports": [22]}], cfg)
    assert err.where == "--mark" and "no mark rule matches" in err.message


@pytest.mark.parametrize("op, where, fragment", [
    ({"op": "mark-add", "mark": 1, "proto": "tcp", "dst": "198.51.100.10/32", "ports": [443, 80, "8000-8099"]},
     "--mark", "already exists"),
    ({"op": "mark-add", "mark": 2, "proto": "tcp", "dst": "198.51.100.10/32", "ports": [443]}, "--mark",
     "conflicts with"),
    ({"op": "mark-add", "mark": 2, "dst": "198.51.100.10/24"}, "--dst", "host bits"),
    ({"op": "mark-add", "mark": 2, "dst": "198.51.100.0/24", "ports": [70000]}, "--ports", "1..65535"),
])
def test_mark_errors_name_the_option(op, where, fragment):
    err = rejected([op])
    assert err.where == where and fragment in err.message, str(err)


def test_timeouts_zero_means_unchanged():
    cfg = edit([{"op": "timeouts", "tcp": 0, "tcpfin": 30, "udp": 0}])
    assert cfg.timeouts == xconfig.Timeouts(tcp=900, tcpfin=30, udp=300, syn=60)


# --- what operators type -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind, text, ipv6, ident", [
    ("tcp", "198.51.100.10:80", False, TCP80),
    ("tcp", "198.51.100.10:http", False, TCP80),
    ("udp", "[2001:db8::1]:53", False, {"proto": "udp", "vip": "2001:db8::1", "port": 53}),
    ("tcp", "198.51.100.10", False, {"proto": "tcp", "vip": "198.51.100.10", "port": 0}),
    ("fwmark", "1", False, FWM1),
    ("fwmark", "0x10", True, {"fwmark": 16, "family": 6}),
])
def test_parse_service(kind, text, ipv6, ident):
    assert parse_service(kind, text, ipv6) == ident


@pytest.mark.parametrize("kind, text, fragment", [
    ("tcp", "www.example.com:80", "does not resolve host names"),
    ("tcp", "198.51.100.10:nosuchport", "unknown port name"),
    ("tcp", "198.51.100.10:70000", "0..65535"),
    ("fwmark", "one", "firewall mark is a number"),
])
def test_parse_service_rejects(kind, text, fragment):
    with pytest.raises(ConfigError) as info:
        parse_service(kind, text)
    assert fragment in info.value.message


def test_parse_ports():
    assert parse_ports("80,443,1000-2000") == [80, 443, "1000-2000"]
    with pytest.raises(ConfigError):
        parse_ports("80,http")


# --- the native commands against a running daemon ---------------------------------------------------------------

import json  # noqa: E402
import os  # noqa: E402

from conftest import needs_root  # noqa: E402

from xlb.cli import main as cli_main  # noqa: E402
from xlb.lab.demo import CLIENTS4, REALS4, VIP4  # noqa: E402
from harness import DrLab  # noqa: E402


def xlb(capsys, lab, *argv):
    """`xlb ARGV --socket LAB`; returns stdout, asserts exit 0."""
    rc = cli_main([*argv, "--socket", lab.socket_path])
    out, err = capsys.readouterr()
    assert rc == 0, err
    return out


@needs_root
def test_native_commands_and_save_round_trip(capsys, tmp_path):
    with DrLab(prefix="xa4") as lab:
        lab.start_xlb("")
        xlb(capsys, lab, "mark", "add", "--mark", "5", "--proto", "tcp", "--dst", f"{VIP4}/32", "--ports", "80,443")
        xlb(capsys, lab, "service", "add", "-f", "5", "-s", "rr", "-p", "120", "-M", "255.255.255.0")
        for r in REALS4[:2]:
            xlb(capsys, lab, "real", "add", "-f", "5", "-r", r, "-w", "2")
        xlb(capsys, lab, "real", "edit", "-f", "5", "-r", REALS4[1], "-w", "0")
        xlb(capsys, lab, "set-timeouts", "0", "60", "0")
        # The only real with weight serves; its template groups the /24.
        assert lab.ask(CLIENTS4[0], VIP4, 80) == "rs1"
        assert lab.ask(CLIENTS4[1], VIP4, 443) == "rs1"
        listing = xlb(capsys, lab, "list", "-n")
        assert listing.splitlines()[3:] == [
            "FWM  5 rr persistent 120 mask 255.255.255.0",
            f"  -> {REALS4[0] + ':0':<28} Route   2      0          2         ",
            f"  -> {REALS4[1] + ':0':<28} Route   0      0          0         "]
        persist = xlb(capsys, lab, "list", "--persist")
        assert persist.splitlines()[4] == f"  -> {REALS4[0] + ':0':<28} 2         1           0          2         "

        # A bad edit names its option and changes nothing.
        assert cli_main(["service", "edit", "-f", "5", "-M", "255.0.255.0.1", "--socket", lab.socket_path]) == 1
        assert "xlb service edit: -M: persistence_netmask: an IPv4 netmask must be a dotted mask" \
            in capsys.readouterr().err
        assert xlb(capsys, lab, "list", "-n") == listing

        # save -> run --config reproduces the running state.
        saved = xlb(capsys, lab, "save")
        before = json.loads(xlb(capsys, lab, "list", "--json"))
        lab.stop_xlb()
        lab.start_xlb(saved)
        after = json.loads(xlb(capsys, lab, "list", "--json"))
        for snap in (before, after):
            for s in snap["services"]:
                s.pop("stats"), s.pop("rate")
                for r in s["reals"]:
                    for k in ("stats", "rate", "active", "inactive", "persist"):
                        r.pop(k)
        assert after == before
        assert after["timeouts"] == {"tcp": 900, "tcpfin": 60, "udp": 300, "syn": 60}
        status = json.loads(xlb(capsys, lab, "status", "--json"))
        assert status["runtime_edits"] == 0 and status["pin_dir"].endswith("/eth0")


@needs_root
def test_a_real_on_the_balancer_itself_is_refused_at_start_reload_and_runtime(capsys, tmp_path):
    """Only the daemon knows its own addresses: a real equal to one (or to a subnet broadcast of its interfaces)
    is refused when it starts, on SIGHUP and by runtime edits, naming the field or option; nothing changes."""
    import signal
    import time

    from harness import DAEMON_START_CONFIG, lb_host
    from harness import run_xlb_logged
    own = DAEMON_START_CONFIG + '\n  [[service.real]]\n  address = "198.18.0.2"\n'
    with lb_host(tmp_path) as host:
        for address, what in (("198.18.0.2", "address"), ("198.18.0.255", "broadcast address")):
            host.config.write_text(own.replace("198.18.0.2", address))
            out = tmp_path / f"refused-{address}.log"
            refused = host.topo.spawn(host.lb, run_xlb_logged, str(out), host.argv("generic"))
            refused.proc.join(120)  # a start that wrongly went through keeps running: the topology stops it
            assert not refused.is_alive(), out.read_text()
            assert (f"xlb: error: {host.config}: service[0].real[1].address: real {address} is the {what} of eth0 "
                    "on this balancer (xlb runs on eth0): xlb forwards out of the interface and cannot deliver to "
                    "the balancer itself (IPVS can); give a real server's address") in out.read_text()
            assert host.xdp() == (None, None)

        host.config.write_text(DAEMON_START_CONFIG)
        log = tmp_path / "xlb.log"
        daemon = host.spawn(log, host.argv("generic"))
        sock = ["--socket", str(tmp_path / "xlb.sock")]
        before = cli_main(["list", "-n", *sock]), capsys.readouterr().out
        assert cli_main(["real", "add", "-t", "198.51.100.10:80", "-r", "198.18.0.2", *sock]) == 1
        assert "xlb: error: xlb real add: -r: real 198.18.0.2 is the address of eth0 on this balancer" \
            in capsys.readouterr().err
        assert cli_main(["ipvsadm", *sock, "-a", "-t", "198.51.100.10:80", "-r", "198.18.0.2"]) == 1
        assert "xlb: error: ipvsadm: -r: real 198.18.0.2 is the address of eth0" in capsys.readouterr().err
        # Zeroing a service that does not exist names the command and the option (not "xlb: -t").
        assert cli_main(["ipvsadm", *sock, "-Z", "-t", "198.51.100.99:80"]) == 1
        assert capsys.readouterr().err == "xlb: error: ipvsadm: -t: no service tcp/198.51.100.99:80\n"
        assert cli_main(["zero", "-u", "198.51.100.99:53", *sock]) == 1
        assert capsys.readouterr().err == "xlb: error: xlb zero: -u: no service udp/198.51.100.99:53\n"
        # A real the config already has is not the edit's fault: other edits go through.
        assert cli_main(["real", "edit", "-t", "198.51.100.10:80", "-r", "198.18.0.11", "-w", "3", *sock]) == 0
        capsys.readouterr()

        host.config.write_text(own)
        os.kill(daemon.pid, signal.SIGHUP)
        deadline = time.monotonic() + 30
        while "reload rejected" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        assert (f"xlb: reload rejected, running config unchanged: {host.config}: service[0].real[1].address: real "
                "198.18.0.2 is the address of eth0 on this balancer") in log.read_text()
        after = cli_main(["list", "-n", *sock]), capsys.readouterr().out
        assert after == (before[0], before[1].replace("Route   1 ", "Route   3 "))
        daemon.stop()
