"""xlb.ops.ipvsadm: ipvsadm's command line into operations, and listings in ipvsadm's exact formats (pure).

The expected listings are written column by column from ipvsadm.c's printf formats (print_title,
print_service_entry, print_conn, print_largenum), trailing spaces included.
"""
import pytest

from xlb.ops import admin
from xlb.config import read as xread
from xlb.ops import ipvsadm, ipvslist
from xlb.errors import ConfigError

SOURCE = ipvsadm.SOURCE
TCP80 = {"proto": "tcp", "vip": "198.51.100.10", "port": 80}
FWM1 = {"fwmark": 1, "family": 4}


def ops(line):
    return ipvsadm.parse(line.split()).ops


# --- parsing -------------------------------------------------------------------------------------------------------


def test_add_service_defaults_and_persistence_without_value_is_360():
    assert ops("-A -t 198.51.100.10:80") == [{"op": "service-add", "service": TCP80, "replace": True,
                                              "scheduler": None, "method": None}]
    op = ops("-A -f 1 -s rr -p -M 255.255.255.0")[0]
    assert (op["service"], op["scheduler"], op["persistence"], op["netmask"]) == (FWM1, "rr", 360, "255.255.255.0")
    # -p followed by an option takes no value; -p followed by digits takes them, as popt's optional argument.
    assert ops("-A -t 198.51.100.10:80 -p -s sh")[0]["persistence"] == 360
    assert ops("-A -t 198.51.100.10:80 -p 120")[0]["persistence"] == 120
    assert ops("-A -t 198.51.100.10:80 -p120")[0]["persistence"] == 120
    assert ops("--add-service --tcp-service 198.51.100.10:80 --persistent=30")[0]["persistence"] == 30


def test_bundled_short_options_and_long_forms():
    req = ipvsadm.parse(["-Ln", "--stats", "--exact"])
    assert (req.command, req.fmt) == ("list", {"stats", "exact"})
    assert ipvsadm.parse(["-Lnc"]).fmt == {"connection"}
    assert ipvsadm.parse(["-lnc"]).command == "list"
    assert ipvsadm.parse(["-L", "--timeout"]).fmt == {"timeout"}
    op = ops("-a -t 198.51.100.10:80 -r 198.18.0.11:80 -g -w3")[0]
    assert (op["op"], op["address"], op["port"], op["weight"]) == ("real-add", "198.18.0.11", 80, 3)


def test_server_edit_and_delete_and_thresholds():
    op = ops("-e -f 1 -r 198.18.0.11 -w 0 -x 100 -y 50")[0]
    assert (op["op"], op["replace"], op["weight"], op["uthreshold"], op["lthreshold"]) == \
        ("real-edit", True, 0, 100, 50)
    assert ops("-d -u [2001:db8::1]:53 -r [2001:db8::11]:53")[0] == {
        "op": "real-del", "service": {"proto": "udp", "vip": "2001:db8::1", "port": 53},
        "address": "2001:db8::11", "port": 53}


def test_clear_set_zero_delete_ipv6_fwmark():
    assert ops("-C") == [{"op": "clear"}]
    assert ops("--set 900 0 300") == [{"op": "timeouts", "tcp": 900, "tcpfin": 0, "udp": 300}]
    req = ipvsadm.parse(["-Z", "-f", "2", "-6"])
    assert (req.command, req.service, req.ops) == ("zero", {"fwmark": 2, "family": 6}, [])
    assert ops("-D -f 2 -6") == [{"op": "service-del", "service": {"fwmark": 2, "family": 6}}]


@pytest.mark.parametrize("argv, where, fragment", [
    ("-A", "-t", "needs a service"),
    ("-a -t 198.51.100.10:80", "-r", "give the real server"),
    ("-a -t 198.51.100.10:80 -r 198.18.0.11 -m -g", "-m", "give one forwarding method"),
    ("-A -t 198.51.100.10:80 --tun-type gue", "--tun-type", "applies only to tunnelling"),
    ("-a -t 198.51.100.10:80 -r 198.18.0.11 -i -g", "-g", "give one forwarding method"),
    ("-A -t 198.51.100.10:80 -i --tun-port 0", "--tun-port", "a port 1..65535"),
    ("-A -t 198.51.100.10:80 -i --tun-csum --tun-remcsum", "--tun-remcsum", "give one of"),
    ("-A -D -t 198.51.100.10:80", "-D", "two commands"),
    ("-A -t 198.51.100.10:80 -f 1", "-f", "one of -t, -u, -f"),
    ("-a -t 198.51.100.10:80 -r 198.18.0.11 -w heavy", "-w", "integer"),
    ("-L --bogus", "--bogus", "unknown option"),
    ("--start-daemon master", "--start-daemon", "not supported"),
    ("-A -t 198.51.100.10:80 -s", "-s", "needs a value"),
    # ipvsadm prints the first of --stats --rate --thresholds --persistent-conn and silently drops the others.
    ("-L -n --stats --rate", "--rate", "--stats and --rate each choose the columns of the listing: give one "
                                       "(ipvsadm would silently print only --stats)"),
    ("-L --persistent-conn --thresholds", "--persistent-conn", "--thresholds and --persistent-conn each choose"),
])
def test_parse_errors_name_the_option(argv, where, fragment):
    with pytest.raises(ConfigError) as info:
        ipvsadm.parse(argv.split())
    assert info.value.where == where and fragment in info.value.message, str(info.value)


def test_a_real_world_script_gives_the_expected_config():
    """fwmark with persistence, weights, a deletion and an edit: keepalived-less LVS set-ups look like this."""
    script = """
-A -f 80 -s wlc -p 600 -M 255.255.255.0
-a -f 80 -r 198.18.0.11:0 -g -w 100
-a -f 80 -r 198.18.0.12:0 -g -w 100
-a -f 80 -r 198.18.0.13:0 -g -w 50
-A -t 198.51.100.20:443 -s rr
-a -t 198.51.100.20:443 -r 198.18.0.11:443 -g -w 1
-a -t 198.51.100.20:443 -r 198.18.0.12 -g -w 1
-d -f 80 -r 198.18.0.13
-e -f 80 -r 198.18.0.12:0 -g -w 0
-E -t 198.51.100.20:443 -s sh -p
"""
    empty = xread.parse("", "x")
    cfg = admin.apply_ops(empty, ipvsadm.parse_restore(script), "ipvsadm -R")
    fwm, https = cfg.services
    assert (fwm.fwmark, fwm.scheduler, fwm.persistence_timeout, fwm.persistence_netmask[:4]) == \
        (80, "wlc", 600, b"\xff\xff\xff\0")
    assert [(str(r.address), r.weight) for r in fwm.reals] == [("198.18.0.11", 100), ("198.18.0.12", 0)]
    assert (https.name, https.scheduler, https.persistence_timeout) == ("tcp/198.51.100.20:443", "sh", 360)
    assert [str(r.address) for r in https.reals] == ["198.18.0.11", "198.18.0.12"]


@pytest.mark.parametrize("real, fragment", [("0.0.0.0", 'is in 0.0.0.0/8 ("this network")'),
                                            ("198.51.100.20", "is the VIP of service[0] (tcp/198.51.100.20:443)"),
                                            ("224.0.0.1:443", "is a multicast address")])
def test_a_real_that_cannot_work_is_refused_naming_r(real, fragment):
    cfg = admin.apply_ops(xread.parse("", "x"), ops("-A -t 198.51.100.20:443"), SOURCE)
    with pytest.raises(ConfigError) as info:
        admin.apply_ops(cfg, ops(f"-a -t 198.51.100.20:443 -r {real} -g -w 1"), SOURCE)
    assert (info.value.source, info.value.where) == (SOURCE, "-r") and fragment in info.value.message


def test_restore_names_the_line():
    with pytest.raises(ConfigError) as info:
        ipvsadm.parse_restore("-A -t 198.51.100.10:80\n\n-a -t 198.51.100.10:80 -r nowhere\n")
    assert info.value.source == "ipvsadm -R line 3" and info.value.where == "-r"


def test_restore_takes_lines_that_begin_with_ipvsadm():
    """ipvsadm(8): "Lines read from stdin can optionally begin with ipvsadm"."""
    script = "ipvsadm -A -t 198.51.100.10:80 -s rr\n/sbin/ipvsadm -a -t 198.51.100.10:80 -r 198.18.0.11 -g\n"
    cfg = admin.apply_ops(xread.parse("", "x"), ipvsadm.parse_restore(script), "ipvsadm -R")
    assert [(s.name, s.scheduler, [str(r.address) for r in s.reals]) for s in cfg.services] == [
        ("tcp/198.51.100.10:80", "rr", ["198.18.0.11"])]


RESTORE = """-A -t 198.51.100.10:80 -s rr
-a -t 198.51.100.10:80 -r 198.18.0.11
# a comment
-A -t 198.51.100.20:80 -s rr
{bad}
-a -t 198.51.100.20:80 -r 198.18.0.12
"""


@pytest.mark.parametrize("bad, where, message", [
    ("-a -t 198.51.100.30:80 -r 198.18.0.12", "-t", "no service tcp/198.51.100.30:80"),
    ("-a -t 198.51.100.10:80 -r [2001:db8::1]", "-r", "real 2001:db8::1 is IPv6 but the service is IPv4"),
    ("-E -t 198.51.100.20:80 -s mh -b sh-port", "-b", "unknown flag"),
], ids=["applying", "validating", "validating-flags"])
def test_errors_applying_a_restore_name_the_line(bad, where, message):
    running = xread.parse("", "x")
    with pytest.raises(ConfigError) as info:
        admin.apply_ops(running, ipvsadm.parse_restore(RESTORE.format(bad=bad)), "ipvsadm -R")
    assert (info.value.source, info.value.where) == ("ipvsadm -R line 5", where)
    assert message in info.value.message


# --- listings ------------------------------------------------------------------------------------------------------


def real(address, port, weight=1, active=0, inactive=0, persist=0, stats=None, rate=None, u=0, lo=0):
    return {"address": address, "port": port, "weight": weight, "uthreshold": u, "lthreshold": lo,
            "active": active, "inactive": inactive, "persist": persist,
            "stats": stats or dict.fromkeys(("conns", "inpkts", "outpkts", "inbytes", "outbytes"), 0),
            "rate": rate or dict.fromkeys(("cps", "inpps", "outpps", "inbps", "outbps"), 0)}


def service(**kw):
    s = {"fwmark": None, "family": 4, "proto": None, "vip": None, "port": None, "scheduler": "wlc",
         "sched_flags": [], "method": "dr", "persistence": None, "netmask": "255.255.255.255",
         "stats": dict.fromkeys(("conns", "inpkts", "outpkts", "inbytes", "outbytes"), 0),
         "rate": dict.fromkeys(("cps", "inpps", "outpps", "inbps", "outbps"), 0), "reals": []}
    s.update(kw)
    return s


SNAP = {"size": 4096, "timeouts": {"tcp": 900, "tcpfin": 120, "udp": 300, "syn": 60}, "services": [
    service(fwmark=1, scheduler="rr", persistence=300, netmask="255.255.255.0",
            reals=[real("198.18.0.12", 0, weight=2, active=3, inactive=1, persist=2),
                   real("198.18.0.11", 0, active=10)]),
    service(proto="udp", vip="198.51.100.10", port=53, scheduler="sh", sched_flags=["sh-port"]),
    service(proto="tcp", vip="198.51.100.10", port=80, reals=[real("198.18.0.11", 80, weight=0)]),
    service(proto="tcp", vip="2001:db8:100::10", port=443, family=6, persistence=60, netmask="64",
            reals=[real("2001:db8::11", 443)]),
    service(fwmark=2, family=6, scheduler="mh"),
]}


def test_list_numeric_matches_ipvsadm():
    assert ipvslist.render_list(SNAP) == (
        "IP Virtual Server version 1.2.1 (size=4096)\n"
        "Prot LocalAddress:Port Scheduler Flags\n"
        "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n"
        "TCP  198.51.100.10:80 wlc\n"
        "  -> 198.18.0.11:80               Route   0      0          0         \n"
        "UDP  198.51.100.10:53 sh (sh-port)\n"
        "TCP  [2001:db8:100::10]:443 wlc persistent 60 mask 64\n"
        "  -> [2001:db8::11]:443           Route   1      0          0         \n"
        "FWM  1 rr persistent 300 mask 255.255.255.0\n"
        "  -> 198.18.0.11:0                Route   1      10         0         \n"
        "  -> 198.18.0.12:0                Route   2      3          1         \n"
        "FWM  2 IPv6 mh\n")


def test_list_one_service_has_no_version_line():
    assert ipvslist.render_list(SNAP, service=TCP80) == (
        "Prot LocalAddress:Port Scheduler Flags\n"
        "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n"
        "TCP  198.51.100.10:80 wlc\n"
        "  -> 198.18.0.11:80               Route   0      0          0         \n")
    with pytest.raises(ConfigError):
        ipvslist.render_list(SNAP, service={"proto": "tcp", "vip": "198.51.100.99", "port": 80})


def test_stats_and_largenum():
    snap = {"size": 4096, "timeouts": SNAP["timeouts"], "services": [service(
        proto="tcp", vip="198.51.100.10", port=80,
        stats={"conns": 12, "inpkts": 345, "outpkts": 0, "inbytes": 123456789012, "outbytes": 0},
        reals=[real("198.18.0.11", 80, stats={"conns": 12, "inpkts": 345, "outpkts": 0, "inbytes": 987654321,
                                             "outbytes": 0})])]}
    assert ipvslist.render_list(snap, {"stats"}) == (
        "IP Virtual Server version 1.2.1 (size=4096)\n"
        "Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes\n"
        "  -> RemoteAddress:Port\n"
        "TCP  198.51.100.10:80                   12      345        0     123G        0\n"
        "  -> 198.18.0.11:80                     12      345        0  987654K        0\n")
    assert ipvslist.render_list(snap, {"stats", "exact"}).splitlines()[3] == \
        "TCP  198.51.100.10:80                   12      345        0 123456789012        0"


@pytest.mark.parametrize("i, text", [(0, "        0"), (99999999, " 99999999"), (100000000, "  100000K"),
                                     (999999999, "  999999K"), (10**9, "    1000M"), (10**11 - 1, "   99999M"),
                                     (10**11, "     100G"), (10**14, "     100T"), (10**17, "  100000T")])
def test_largenum(i, text):
    assert ipvslist.largenum(i) == text


def test_rate_thresholds_persistent_conn_and_timeout():
    snap = {"size": 4096, "timeouts": SNAP["timeouts"], "services": [service(
        fwmark=1, rate={"cps": 5, "inpps": 50, "outpps": 0, "inbps": 5000, "outbps": 0},
        reals=[real("198.18.0.11", 0, weight=3, active=4, inactive=2, persist=7, u=100, lo=75,
                    rate={"cps": 5, "inpps": 50, "outpps": 0, "inbps": 5000, "outbps": 0})])]}
    assert ipvslist.render_list(snap, {"rate"}).splitlines()[1:] == [
        "Prot LocalAddress:Port                 CPS    InPPS   OutPPS    InBPS   OutBPS",
        "  -> RemoteAddress:Port",
        "FWM  1                                   5       50        0     5000        0",
        "  -> 198.18.0.11:0                       5       50        0     5000        0"]
    assert ipvslist.render_list(snap, {"thresholds"}).splitlines()[1:] == [
        "Prot LocalAddress:Port            Uthreshold Lthreshold ActiveConn InActConn ",
        "  -> RemoteAddress:Port",
        "FWM  1 wlc",
        "  -> 198.18.0.11:0                100        75         4          2         "]
    assert ipvslist.render_list(snap, {"persistent-conn"}).splitlines()[1:] == [
        "Prot LocalAddress:Port            Weight    PersistConn ActiveConn InActConn ",
        "  -> RemoteAddress:Port",
        "FWM  1 wlc",
        "  -> 198.18.0.11:0                3         7           4          2         "]
    assert ipvslist.render_list(snap, {"timeout"}) == "Timeout (tcp tcpfin udp): 900 120 300\n"


def test_save_format_and_restore_round_trip():
    text = ipvslist.render_save(SNAP)
    assert text == (
        "-A -t 198.51.100.10:80 -s wlc\n"
        "-a -t 198.51.100.10:80 -r 198.18.0.11:80 -g -w 0\n"
        "-A -u 198.51.100.10:53 -s sh -b sh-port\n"
        "-A -t [2001:db8:100::10]:443 -s wlc -p 60 -M 64\n"
        "-a -t [2001:db8:100::10]:443 -r [2001:db8::11]:443 -g -w 1\n"
        "-A -f 1 -s rr -p 300 -M 255.255.255.0\n"
        "-a -f 1 -r 198.18.0.11:0 -g -w 1\n"
        "-a -f 1 -r 198.18.0.12:0 -g -w 2\n"
        "-A -f 2 -6 -s mh\n")
    cfg = admin.apply_ops(xread.parse("", "x"), ipvsadm.parse_restore(text), "ipvsadm -R")
    assert [s.name for s in cfg.services] == ["tcp/198.51.100.10:80", "udp/198.51.100.10:53",
                                              "tcp/[2001:db8:100::10]:443", "fwm/1", "fwm6/2"]
    assert cfg.services[2].persistence_netmask == bytes([255] * 8 + [0] * 8)


def test_ops_parsed_listed_saved_and_restored():
    """-o / --ops: one-packet scheduling. -L shows ' ops' after the persistence (ipvsadm's print_service_entry);
    -S writes -o, which -R reads back; -E without -o turns it off (ipvsadm's -E sets every flag anew)."""
    assert ops("-A -u 198.51.100.10:53 -s rr -o")[0]["ops"] is True
    assert ops("--add-service --udp-service 198.51.100.10:53 --ops")[0]["ops"] is True
    assert "ops" not in ops("-E -u 198.51.100.10:53 -s rr")[0]
    snap = {"size": 4096, "timeouts": SNAP["timeouts"], "services": [
        service(proto="udp", vip="198.51.100.10", port=53, scheduler="rr", ops=True, persistence=30,
                reals=[real("198.18.0.11", 53)])]}
    assert ipvslist.render_list(snap).splitlines()[3:] == [
        "UDP  198.51.100.10:53 rr persistent 30 ops",
        "  -> 198.18.0.11:53               Route   1      0          0         "]
    text = ipvslist.render_save(snap)
    assert text.splitlines()[0] == "-A -u 198.51.100.10:53 -s rr -p 30 -o"
    cfg = admin.apply_ops(xread.parse("", "x"), ipvsadm.parse_restore(text), "ipvsadm -R")
    assert cfg.services[0].ops and cfg.services[0].persistence_timeout == 30
    cfg = admin.apply_ops(cfg, ops("-E -u 198.51.100.10:53 -s rr"), "ipvsadm")
    assert not cfg.services[0].ops
    with pytest.raises(ConfigError) as e:
        admin.apply_ops(cfg, ops("-A -t 198.51.100.10:80 -o"), "ipvsadm")
    assert e.value.where == "-o" and "only to UDP" in e.value.message


def test_tunnel_reals_set_the_service_method_and_save_writes_them_back():
    """ipvsadm puts -i on each real; xlb's method is the service's: the first real's -i sets it (with --tun-*),
    a real forwarded otherwise is refused while others are there; -E without -g/-i keeps it; -L says Tunnel and -S
    writes the options back, which -R reads to the same config."""
    cfg = admin.apply_ops(xread.parse("", "x"), ops("-A -t 198.51.100.10:80 -s rr")
                          + ops("-a -t 198.51.100.10:80 -r 198.18.0.11 -i --tun-type gue --tun-port 6080 --tun-csum")
                          + ops("-a -t 198.51.100.10:80 -r 2001:db8::11 -i --tun-type gue --tun-port 6080 --tun-csum")
                          + ops("-E -t 198.51.100.10:80 -s wlc"), SOURCE)
    svc = cfg.services[0]
    assert (svc.method, svc.tunnel.type, svc.tunnel.port, svc.tunnel.csum) == ("tun", "gue", 6080, "csum")
    for other in ("-g", "-i", "-i --tun-type gue --tun-port 6080"):
        with pytest.raises(ConfigError, match=r"every real of a service uses the service's method") as info:
            admin.apply_ops(cfg, ops(f"-a -t 198.51.100.10:80 -r 198.18.0.12 {other}"), SOURCE)
        assert info.value.where == other.split()[0]
    snap = {"size": 4096, "services": [{
        "fwmark": None, "family": 4, "proto": "tcp", "vip": "198.51.100.10", "port": 80, "scheduler": "wlc",
        "sched_flags": [], "method": "tun", "persistence": None, "netmask": "255.255.255.255",
        "tunnel": {"tunnel_type": "gue", "tunnel_port": 6080, "tunnel_csum": "csum"},
        "reals": [{"address": "198.18.0.11", "port": 80, "weight": 1, "uthreshold": 0, "lthreshold": 0,
                   "active": 0, "inactive": 0, "persist": 0}]}]}
    assert "  -> 198.18.0.11:80               Tunnel  1 " in ipvslist.render_list(snap)
    text = ipvslist.render_save(snap)
    assert text.splitlines()[1] == "-a -t 198.51.100.10:80 -r 198.18.0.11:80 -i --tun-type gue --tun-port 6080 " \
                                   "--tun-csum -w 1"
    back = admin.apply_ops(xread.parse("", "x"), ipvsadm.parse_restore(text), "ipvsadm -R")
    assert back.services[0].tunnel == svc.tunnel
    plain = admin.apply_ops(xread.parse("", "x"), ops("-A -t 198.51.100.10:80 -i"), SOURCE).services[0]
    assert (plain.method, plain.tunnel.type, plain.tunnel.csum) == ("tun", "ipip", "nocsum")


def test_conns_listing_with_template():
    entries = [
        {"proto": "TCP", "family": 4, "state": "ESTABLISHED", "expire": 899, "caddr": "198.19.1.10",
         "cport": 40000, "vaddr": "198.51.100.10", "vport": 80, "daddr": "198.18.0.11", "dport": 80},
        {"proto": "IP", "family": 4, "state": "NONE", "expire": 299, "caddr": "198.19.1.0", "cport": 0,
         "vaddr": "0.0.0.1", "vport": 0, "daddr": "198.18.0.11", "dport": 0},
    ]
    assert ipvslist.render_conns(entries) == (
        "IPVS connection entries\n"
        "pro expire state       source             virtual            destination\n"
        "TCP 14:59  ESTABLISHED 198.19.1.10:40000  198.51.100.10:80   198.18.0.11:80\n"
        "IP  04:59  NONE        198.19.1.0:0       0.0.0.1:0          198.18.0.11:0\n")


# --- against a running daemon ----------------------------------------------------------------------------------

import io  # noqa: E402
import re  # noqa: E402

from conftest import needs_root  # noqa: E402

from xlb.ops import control  # noqa: E402
from xlb.admincli import run_ipvsadm  # noqa: E402
from xlb.lab.demo import CLIENTS4, DEMO_CONFIG, REALS4, VIP4  # noqa: E402
from harness import DrLab  # noqa: E402
from clients import LineConnection  # noqa: E402

NAME_OF = {r: f"rs{i + 1}" for i, r in enumerate(REALS4)}
ADDR_OF = {v: k for k, v in NAME_OF.items()}
LINE = 8080


def ipvsadm_out(lab, line, stdin=None):
    out = io.StringIO()
    assert run_ipvsadm(line.split(), socket=lab.socket_path, stdin=stdin, out=out) == 0
    return out.getvalue()


LAB_CONFIG = DEMO_CONFIG + f"""
[[service]]
vip = "{VIP4}"
port = {LINE}
proto = "tcp"
scheduler = "rr"
""" + "".join(f'\n  [[service.real]]\n  address = "{r}"\n' for r in REALS4)


def test_without_a_daemon_commands_fail_clearly(tmp_path, capsys):
    from xlb.cli import main
    assert main(["ipvsadm", "--socket", str(tmp_path / "none.sock"), "-L", "-n"]) == 1
    assert main(["list", "--socket", str(tmp_path / "none.sock")]) == 1
    err = capsys.readouterr().err
    assert err.count("no xlb daemon answers at") == 2 and "is `xlb run` running?" in err


def _commands_as_nobody(run_dir, argvs):
    """Each `xlb ARGV` run as uid 65534 with control.RUN_DIR = run_dir: (exit code, stderr) per command."""
    import contextlib
    import os
    import sys
    from xlb.cli import main
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
    control.RUN_DIR = run_dir
    out = []
    for argv in argvs:
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = main(argv)
        out.append((rc, err.getvalue()))
    sys.stderr.flush()
    return out


@needs_root
def test_without_root_commands_say_root_is_needed(tmp_path):
    """/run/xlb is root's and 0700: a non-root `xlb list` cannot see the socket a running daemon serves there,
    and must say that it needs root, not that no daemon runs."""
    import os
    import socket
    from xlb.lab.process import run_in_netns
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listening.bind(str(run_dir / "eth0.sock"))
        listening.listen(1)
        results = run_in_netns(None, _commands_as_nobody, run_dir,
                               [["list", "-n"], ["ipvsadm", "-L", "-n"], ["status"],
                                ["list", "--socket", str(run_dir / "eth0.sock")]])
    finally:
        listening.close()
    for rc, err in results[:3]:
        assert (rc, err) == (1, f"xlb: error: cannot look for xlb's control socket in {run_dir}/: permission "
                                "denied; the control socket is root-only, run this as root (e.g. with sudo)\n")
    assert results[3] == (1, f"xlb: error: {run_dir}/eth0.sock: permission denied; the control socket is "
                             "root-only, run this as root (e.g. with sudo)\n")


@needs_root
def test_ipvsadm_script_on_a_live_daemon_keeps_connections_and_templates():
    with DrLab(prefix="xa1", ports=(80, 443, 8443), line_ports=(LINE,)) as lab:
        lab.start_xlb(LAB_CONFIG)
        client = CLIENTS4[0]
        sticky = lab.ask(client, VIP4, 80)  # makes a template for 198.19.1.0/24 under mark 1
        with LineConnection(lab.cl, CLIENTS4[3], VIP4, LINE) as live:
            serving = live.ask()
            others = [r for r in REALS4 if NAME_OF[r] != serving]
            script = (f"-A -t {VIP4}:8443 -s rr\n"
                      f"-a -t {VIP4}:8443 -r {REALS4[0]}:8443 -g -w 1\n"
                      f"-e -t {VIP4}:{LINE} -r {others[0]} -g -w 0\n"
                      f"-d -t {VIP4}:{LINE} -r {others[1]}\n")
            assert ipvsadm_out(lab, "-R", stdin=io.StringIO(script)) == ""

            # Edited service: its established connection keeps its real. Untouched service: the template holds.
            assert live.ask() == serving
            assert lab.ask(client, VIP4, 443) == sticky
            assert lab.ask(CLIENTS4[4], VIP4, 8443) == "rs1"
            listing = ipvsadm_out(lab, "-L -n")
            fwm_reals = sorted(REALS4)
            lines = ["IP Virtual Server version 1.2.1 (size=1048576)",
                     "Prot LocalAddress:Port Scheduler Flags",
                     "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn",
                     f"TCP  {VIP4}:{LINE} rr"]
            line_reals = sorted([ADDR_OF[serving], others[0]])
            for r in line_reals:
                weight = 0 if r == others[0] else 1
                active = 1 if NAME_OF[r] == serving else 0
                lines.append(f"  -> {r + ':' + str(LINE):<28} Route   {weight:<6} {active:<10} {0:<10}")
            lines.append(f"TCP  {VIP4}:8443 rr")
            lines.append(f"  -> {REALS4[0] + ':8443':<28} Route   {1:<6} {0:<10} {1:<10}")
            lines.append("FWM  1 rr persistent 300 mask 255.255.255.0")
            for r in fwm_reals:
                inactive = 2 if NAME_OF[r] == sticky else 0  # the two closed connections of the sticky client
                lines.append(f"  -> {r + ':0':<28} Route   {1:<6} {0:<10} {inactive:<10}")
            assert listing == "\n".join(lines) + "\n"

            conns = ipvsadm_out(lab, "-L -n -c").splitlines()
            assert conns[:2] == ["IPVS connection entries",
                                 "pro expire state       source             virtual            destination"]
            template = [c for c in conns if c.startswith("IP ")]
            assert len(template) == 1
            assert re.fullmatch(rf"IP  0[45]:\d\d  NONE        {'198.19.1.0:0':<18} {'0.0.0.1:0':<18} "
                                rf"{re.escape(ADDR_OF[sticky])}:0", template[0]), template[0]
            est = [c for c in conns if "ESTABLISHED" in c]
            assert len(est) == 1 and f"{ADDR_OF[serving]}:{LINE}" in est[0] and CLIENTS4[3] in est[0]

            # A refused edit changes nothing and says why.
            with pytest.raises(control.ControlError, match=r"ipvsadm: -r: real 198.18.0.11 already exists"):
                ipvsadm_out(lab, f"-a -t {VIP4}:8443 -r {REALS4[0]}")
            assert ipvsadm_out(lab, "-L -n") == listing
            saved = ipvsadm_out(lab, "-S -n")
            assert f"-A -t {VIP4}:8443 -s rr\n-a -t {VIP4}:8443 -r {REALS4[0]}:8443 -g -w 1\n" in saved

            # Counters, then zero.
            stats = ipvsadm_out(lab, "-L -n --stats --exact").splitlines()
            fwm = next(line for line in stats if line.startswith("FWM  1"))
            assert fwm.split()[2] == "2"  # conns of the sticky client (80 and 443)
            ipvsadm_out(lab, "-Z")
            zeroed = ipvsadm_out(lab, "-L -n --stats").splitlines()
            assert all(line.split()[-5:] == ["0"] * 5 for line in zeroed[3:]), zeroed
            assert live.ask() == serving
            # New connections of the edited service go only to the real left with a weight.
            for c in CLIENTS4[:3]:
                with LineConnection(lab.cl, c, VIP4, LINE) as conn:
                    assert conn.ask() == serving


# --- NAT (-m) ---------------------------------------------------------------------------------------------------

NAT_SNAP = {"size": 4096, "timeouts": SNAP["timeouts"], "services": [
    service(proto="tcp", vip="198.51.100.10", port=80, method="nat",
            stats={"conns": 2, "inpkts": 10, "outpkts": 8, "inbytes": 1000, "outbytes": 9000},
            reals=[real("198.18.0.11", 8080, stats={"conns": 2, "inpkts": 10, "outpkts": 8, "inbytes": 1000,
                                                     "outbytes": 9000}),
                   real("198.18.0.12", 80)]),
    service(proto="tcp", vip="198.51.100.10", port=443, reals=[real("198.18.0.11", 443)])]}


def test_nat_lists_masq_counts_out_and_saves_m_restorably():
    """-m on a real makes its (new) service NAT with the real's own port; listings say Masq and show OutPkts;
    -S writes -m back, and -R of it gives the same services (one NAT beside one DR)."""
    assert ipvslist.render_list(NAT_SNAP).splitlines()[3:6] == [
        "TCP  198.51.100.10:80 wlc",
        "  -> 198.18.0.11:8080             Masq    1      0          0         ",
        "  -> 198.18.0.12:80               Masq    1      0          0         "]
    assert ipvslist.render_list(NAT_SNAP, {"stats"}).splitlines()[3:5] == [
        "TCP  198.51.100.10:80                    2       10        8     1000     9000",
        "  -> 198.18.0.11:8080                    2       10        8     1000     9000"]
    text = ipvslist.render_save(NAT_SNAP)
    assert text == ("-A -t 198.51.100.10:80 -s wlc\n"
                    "-a -t 198.51.100.10:80 -r 198.18.0.11:8080 -m -w 1\n"
                    "-a -t 198.51.100.10:80 -r 198.18.0.12:80 -m -w 1\n"
                    "-A -t 198.51.100.10:443 -s wlc\n"
                    "-a -t 198.51.100.10:443 -r 198.18.0.11:443 -g -w 1\n")
    cfg = admin.apply_ops(xread.parse("", "x"), ipvsadm.parse_restore(text), "ipvsadm -R")
    nat, dr = cfg.services
    assert (nat.method, [(str(r.address), r.port) for r in nat.reals]) == (
        "nat", [("198.18.0.11", 8080), ("198.18.0.12", None)])
    assert (dr.method, [r.port for r in dr.reals]) == ("dr", [None])


def test_nat_real_method_must_be_the_services():
    ops = ipvsadm.parse_restore("-A -t 198.51.100.10:80 -s rr\n-a -t 198.51.100.10:80 -r 198.18.0.11:8080 -m\n"
                                "-a -t 198.51.100.10:80 -r 198.18.0.12 -g\n")
    with pytest.raises(ConfigError) as info:
        admin.apply_ops(xread.parse("", "x"), ops, "ipvsadm -R")
    assert "by nat (-m): every real of a service uses the service's method" in info.value.message
    with pytest.raises(ConfigError) as info:  # DR still cannot change the port
        admin.apply_ops(xread.parse("", "x"), ipvsadm.parse_restore(
            "-A -t 198.51.100.10:80 -s rr\n-a -t 198.51.100.10:80 -r 198.18.0.11:8080 -g\n"), "ipvsadm -R")
    assert "direct routing keeps the destination port" in info.value.message
