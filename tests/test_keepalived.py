"""keepalived.conf import: the same Config and the same forwarding as the native config; errors name file and line."""
import dataclasses
import os

import pytest

from xlb import cli
from xlb.config import read as xread
from xlb.importers.keepalived import translate as keepalived
from xlb.errors import ConfigError
from harness import DR, problems, vs, write

DATA = os.path.join(os.path.dirname(__file__), "data")
KA = os.path.join(DATA, "rhel-fwmark.conf")
MARKS = os.path.join(DATA, "rhel-fwmark.marks")
NATIVE = os.path.join(DATA, "rhel-fwmark.toml")


def strip_where(cfg):
    """A Config without the fields that only say where things came from."""
    def s(obj):
        if dataclasses.is_dataclass(obj):
            kw = {f.name: s(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                  if f.name not in ("where", "source", "health_keys") and not (f.name == "health" and
                                                                           isinstance(getattr(obj, f.name), dict))}
            return (type(obj).__name__, tuple(sorted(kw.items())))
        if isinstance(obj, tuple):
            return tuple(s(x) for x in obj)
        return obj
    return s(cfg)


def test_documented_fwmark_config_equals_native():
    imp = keepalived.load(KA, MARKS)
    assert strip_where(imp.config) == strip_where(xread.load(NATIVE))


def test_skipped_sections_warn_once_with_file_and_line():
    imp = keepalived.load(KA, MARKS)
    vrrp = [w for w in imp.warnings if "vrrp_instance" in w]
    assert vrrp == [f"{KA}: line 11: skipped vrrp_instance: VRRP is not part of xlb "
                    "(run keepalived for VRRP, or another VRRP daemon)"]
    assert any(w.startswith(f"{KA}: line 3: skipped global_defs settings other than lvs_timeouts "
                            "(notification_email, router_id)") for w in imp.warnings)


def test_health_checks_are_kept():
    imp = keepalived.load(KA, MARKS)
    assert [(h.kind, h.service, h.real, h.line) for h in imp.health_checks] == [
        ("TCP_CHECK", "fwm/80", "198.18.0.11", 30), ("TCP_CHECK", "fwm/80", "198.18.0.12", 37)]
    assert [(n.keyword, n.args) for n in imp.health_checks[0].body] == [("connect_port", ("80",)),
                                                                        ("connect_timeout", ("3",))]
    settings = {(c.service, c.real): c.settings for c in imp.check_settings}
    assert settings[("fwm/80", None)] == (("delay_loop", ("6",), KA, 22),)


def test_include_parameters_conditionals_and_comments():
    imp = keepalived.load(os.path.join(DATA, "ka-include", "main.conf"))
    (svc,) = imp.config.services
    assert (str(svc.vip), svc.port, svc.proto, svc.scheduler) == ("198.51.100.30", 443, "tcp", "wrr")
    assert [(str(r.address), r.weight) for r in svc.reals] == [("198.18.0.11", 3), ("198.18.0.12", 1)]
    assert imp.files[-1].endswith("services/web.conf")


def test_fwmark_ipv6_with_prefix_granularity(tmp_path):
    p = write(tmp_path, vs("lb_algo mh\nmh-fallback\nlb_kind DR\npersistence_granularity 64\n"
                           "real_server 2001:db8::11 { }\nreal_server 2001:db8::12 { weight 2 }\n",
                           head="virtual_server fwmark 6"))
    (svc,) = keepalived.load(p).config.services
    assert (svc.fwmark, svc.family, svc.scheduler, svc.sched_flags) == (6, 6, "mh", ("mh-fallback",))
    assert svc.persistence_timeout == 360  # keepalived: granularity alone makes the service persistent
    assert svc.persistence_netmask == b"\xff" * 8 + b"\0" * 8


def test_group_expands_to_one_service_per_address_and_mark(tmp_path):
    p = write(tmp_path, """\
        virtual_server_group web {
            198.51.100.1-3 80
            198.51.100.8/31 443
            fwmark 7
        }
        virtual_server group web {
            protocol TCP
            lb_algo rr
            lb_kind DR
            persistence_timeout 60
            real_server 198.18.0.11 { }
            real_server 198.18.0.12 { weight 0 }
        }
        """)
    svcs = keepalived.load(p).config.services
    assert [s.name for s in svcs] == ["tcp/198.51.100.1:80", "tcp/198.51.100.2:80", "tcp/198.51.100.3:80",
                                      "tcp/198.51.100.8:443", "tcp/198.51.100.9:443", "fwm/7"]
    assert {tuple((str(r.address), r.weight) for r in s.reals) for s in svcs} == {
        (("198.18.0.11", 1), ("198.18.0.12", 0))}
    assert {s.persistence_timeout for s in svcs} == {60}


def test_a_service_defined_twice_gets_the_second_virtual_servers_reals(tmp_path):
    """keepalived's add of a service IPVS already has fails with EEXIST, which it ignores, and adds the reals: the
    same group twice (or the same fwmark) is one service with both blocks' reals and the first block's settings, a
    real both name kept once. A warning names the second block and the first's line; field errors in a joined real
    still name its own line."""
    group = "virtual_server_group g {\n  198.51.100.10 80\n  fwmark 7\n}\n"
    first = vs(DR + "real_server 198.18.0.11 { }\nreal_server 198.18.0.12 { }\n", head="virtual_server group g")
    second = vs("protocol TCP\nlb_algo wlc\nlb_kind DR\nreal_server 198.18.0.12 { weight 5 }\n"
                "real_server 198.18.0.13 { weight 3 }\n", head="virtual_server group g")
    p = write(tmp_path, group + first + second + vs("lb_algo rr\nlb_kind DR\nreal_server 198.18.0.14 { }\n",
                                                     head="virtual_server fwmark 7"))
    imp = keepalived.load(p)
    svcs = imp.config.services
    assert [(s.name, s.scheduler, [(str(r.address), r.weight) for r in s.reals]) for s in svcs] == [
        ("tcp/198.51.100.10:80", "rr", [("198.18.0.11", 1), ("198.18.0.12", 1), ("198.18.0.13", 3)]),
        ("fwm/7", "rr", [("198.18.0.11", 1), ("198.18.0.12", 1), ("198.18.0.13", 3), ("198.18.0.14", 1)])]
    assert [(x.line, x.kind, x.message.split(" is already")[0]) for x in imp.reported] == [
        (12, "warning", "service tcp/198.51.100.10:80"), (12, "warning", "service fwm/7"),
        (19, "warning", "service fwm/7")]
    assert "defined by the virtual server at line 5: its real servers join that service" in imp.reported[0].message
    bad = second.replace("weight 3 }", "weight 3\n    uthreshold 10\n    lthreshold 20\n  }")
    with pytest.raises(ConfigError) as ei:
        keepalived.load(write(tmp_path, group + first + bad))
    assert (ei.value.where, ei.value.message.split(":")[0]) == ("line 19", "lthreshold")


def test_group_fwmark_with_real_port_is_reported(tmp_path):
    p = write(tmp_path, "virtual_server_group g {\n  fwmark 7\n}\n" + vs(
        "lb_algo rr\nlb_kind DR\nreal_server 198.18.0.11 80 { }\n", head="virtual_server group g"))
    (x,) = keepalived.load(p).reported
    assert (x.line, x.keyword, x.kind) == (7, "real_server", "warning") and "specified - clearing" in x.message


def test_errors_list_every_problem_with_file_line_and_keyword(tmp_path):
    p = write(tmp_path, vs("protocol TCP\nlb_algo fastest\nlb_kind DR\npersistence_timeout 0\n"
                           "real_server 198.18.0.11 80 {\n    weight 70000\n}\n"))
    e = problems(p)
    assert [(x.line, x.keyword) for x in e.problems] == [(3, "lb_algo"), (5, "persistence_timeout"),
                                                         (7, "weight")]
    assert str(e).startswith(f"{p}: line 3: lb_algo: invalid lvs_scheduler 'fastest' (and 2 more problems)")
    assert not e.only_unsupported


def test_keepalived_corrections_are_errors(tmp_path):
    # keepalived -t reports each of these and then guesses; xlb asks instead.
    p = write(tmp_path, vs("lb_algo rr\nreal_server 198.18.0.11 8080 { }\n"))
    msgs = [(x.line, x.message) for x in problems(p).problems]
    assert msgs == [(1, "no protocol set (keepalived defaults to UDP): add 'protocol TCP' or 'protocol UDP'")]
    # keepalived resets a real's port to a plain virtual server's, but not within a group: there it is an error.
    p = write(tmp_path, "virtual_server_group g {\n  198.51.100.10 80\n}\n"
              + vs(DR + "real_server 198.18.0.11 8080 { }\n", head="virtual_server group g"))
    (x,) = problems(p).problems
    assert (x.line, x.keyword, x.kind) == (8, "real_server", "error") and "don't match" in x.message


def test_nat_virtual_servers(tmp_path):
    """lb_kind NAT / lvs_method NAT (and no lb_kind: keepalived's default is NAT) give NAT services; a NAT real's
    port may differ from the virtual server's; the reals of one virtual server must share a method."""
    p = write(tmp_path, vs("protocol TCP\nlb_algo rr\nlb_kind NAT\nreal_server 198.18.0.11 8080 { }\n"
                           "real_server 198.18.0.12 80 { }\n")
              + vs("protocol UDP\nlb_algo rr\nreal_server 198.18.0.13 5353 { }\n", head="virtual_server 198.51.100.10 53")
              + vs("protocol TCP\nlb_algo rr\nlvs_method DR\nreal_server 198.18.0.11 443 { }\n",
                   head="virtual_server 198.51.100.10 443"))
    cfg = keepalived.load(p).config
    assert [(s.name, s.method, [(str(r.address), r.port) for r in s.reals]) for s in cfg.services] == [
        ("tcp/198.51.100.10:80", "nat", [("198.18.0.11", 8080), ("198.18.0.12", None)]),
        ("udp/198.51.100.10:53", "nat", [("198.18.0.13", 5353)]),
        ("tcp/198.51.100.10:443", "dr", [("198.18.0.11", None)])]
    p = write(tmp_path, vs("protocol TCP\nlb_algo rr\nlb_kind NAT\nreal_server 198.18.0.11 80 {\n  lvs_method DR\n}\n"
                           "real_server 198.18.0.12 80 { }\n"))
    (x,) = problems(p).problems
    assert (x.line, x.kind) == (1, "unsupported") and "different forwarding methods (dr, nat)" in x.message


def test_unsupported_features_are_named_apart(tmp_path):
    p = write(tmp_path, vs("protocol TCP\nlb_algo rr\npersistence_engine h323\nlb_kind DR\n"
                           "real_server 127.0.0.1 80 { }\n"))
    e = problems(p)
    assert e.only_unsupported
    assert [(x.line, x.kind) for x in e.problems] == [(4, "unsupported"), (6, "unsupported")]
    assert "h323" in e.problems[0].message and "loopback" in e.problems[1].message
    assert str(e).count("not supported by xlb") == 2


def test_ops_imported_for_udp_and_fwmark_skipped_for_tcp(tmp_path):
    """keepalived's `ops`: one-packet scheduling on UDP and fwmark services; on TCP keepalived sets it and IPVS
    ignores it ("inactive due to not UDP"), so xlb skips it with a warning."""
    udp = vs("protocol UDP\nlb_algo rr\nlb_kind DR\nops\nreal_server 198.18.0.11 53 { }\n",
             head="virtual_server 198.51.100.10 53")
    fwm = vs("lb_algo rr\nlb_kind DR\nops\nreal_server 198.18.0.12 { }\n", head="virtual_server fwmark 7")
    tcp = vs(DR + "ops\nreal_server 198.18.0.11 80 { }\n")
    imp = keepalived.load(write(tmp_path, udp + fwm + tcp))
    assert [(s.name, s.ops) for s in imp.config.services] == [
        ("udp/198.51.100.10:53", True), ("fwm/7", True), ("tcp/198.51.100.10:80", False)]
    assert [w for w in imp.warnings if "ops" in w] == [
        f"{tmp_path}/keepalived.conf: line 18: ops has no effect on a TCP service (one-packet scheduling is for "
        "UDP); skipped"]


def test_shared_validation_errors_name_the_keepalived_line(tmp_path):
    # lthreshold >= uthreshold is a rule of xlb/config/read.py; the error still points into keepalived.conf.
    p = write(tmp_path, vs(DR + "real_server 198.18.0.11 80 {\n    uthreshold 10\n    lthreshold 20\n}\n"))
    with pytest.raises(ConfigError) as ei:
        keepalived.load(p)
    assert (ei.value.source, ei.value.where) == (p, "line 7")
    assert ei.value.message.startswith("lthreshold: lthreshold 20 must be below uthreshold 10")


def test_marks_file_errors_name_its_line(tmp_path):
    p = write(tmp_path, vs(DR + "real_server 198.18.0.11 { }\n", head="virtual_server fwmark 1"))
    m = write(tmp_path, "# marks\niptables -t mangle -A PREROUTING -s 192.0.2.0/24 -j MARK --set-mark 1\n",
              "marks.sh")
    with pytest.raises(ConfigError) as ei:
        keepalived.load(p, m)
    assert (ei.value.source, ei.value.where) == (m, "line 2")


def test_stray_virtual_server_keyword_at_top_level(tmp_path):
    p = write(tmp_path, "virtual_server 198.51.100.10 80\n    lb_algo rr\n")
    assert [(x.line, x.keyword) for x in problems(p).problems] == [(1, "virtual_server"), (2, "lb_algo")]


def test_cli_check_exit_codes(tmp_path, capsys):
    assert cli.main(["check", "--keepalived", KA, "--marks", MARKS]) == 0
    assert "OK (2 services, 4 reals, 1 mark rules, 2 health checks)" in capsys.readouterr().out
    local = write(tmp_path, vs("protocol TCP\nlb_algo rr\nlb_kind DR\nreal_server 127.0.0.1 80 { }\n"))
    assert cli.main(["check", "--keepalived", local]) == 3
    bad = write(tmp_path, vs("protocol TCP\nlb_algo rr\nlb_kind DR\n"), "bad.conf")
    assert cli.main(["check", "--keepalived", bad]) == 1
    assert "has no real servers" in capsys.readouterr().err
    for argv in (["check", NATIVE, "--keepalived", KA], ["check", NATIVE, "--marks", MARKS]):
        with pytest.raises(SystemExit):
            cli.main(argv)


def test_daemon_takes_its_config_from_the_load_callable():
    from xlb.ops.daemon import Daemon
    cfg = keepalived.load(KA, MARKS).config
    d = Daemon("lo", KA, load=lambda: cfg)
    assert d.load() is cfg


# --- the same forwarding through the packet bench -------------------------------------------------------------


def test_same_forwarding_as_native_config(bench):
    from harness import TEST_TABLES, real_of, tcp4, udp4

    def decisions(cfg):
        bench.reset("")
        bench.dp.apply(dataclasses.replace(cfg, tables=TEST_TABLES))
        pkts = [tcp4(src="203.0.113.7", dport=80), tcp4(src="203.0.113.7", sport=40001, dport=443),
                tcp4(src="203.0.113.99", dport=443), tcp4(src="203.0.113.7", dport=8080),
                udp4(src="203.0.113.5", dst="198.51.100.20", dport=53),
                udp4(src="203.0.113.6", dst="198.51.100.20", sport=999, dport=53)]
        out = []
        for p in pkts:
            act, data = bench.run(p)
            out.append((act, real_of(data) if act == "XDP_TX" else None, data))
        return out, bench.verdicts()

    native = decisions(xread.load(NATIVE))
    imported = decisions(keepalived.load(KA, MARKS).config)
    assert imported == native
    acts = [(a, r) for a, r, _ in native[0]]
    assert acts[0][0] == "XDP_TX" and acts[1] == acts[0]  # 443 follows 80: one mark, one template
    assert acts[2][0] == "XDP_TX" and acts[2] == acts[0]  # same /24: same template
    assert acts[3] == ("XDP_PASS", None)  # port 8080 is not marked
    assert {r for _, r in acts[4:]} <= {"198.18.0.12", "198.18.0.13"}


# --- keepalived's warnings: keepalived -t reports them (exit 5), corrects them and runs; so does xlb -------------

TEXTBOOK = """virtual_server fwmark 1 {
    delay_loop 6
    lb_algo rr
    lb_kind DR
    protocol TCP
    real_server 198.18.1.2 80 {
        TCP_CHECK {
            connect_timeout 3
        }
    }
}
"""


def test_textbook_fwmark_block_runs_after_keepalived_warnings(tmp_path):
    p = write(tmp_path, TEXTBOOK)
    imp = keepalived.load(p)
    assert [(x.line, x.keyword, x.kind) for x in imp.reported] == [(5, "protocol", "warning"),
                                                                  (6, "real_server", "warning")]
    assert imp.warnings[:2] == (
        f"{p}: line 5: protocol: protocol specified for fwmark - protocol will be ignored (as keepalived does: "
        "the mark rules choose protocols)",
        f"{p}: line 6: real_server: fwmark virtual server, real server 198.18.1.2 has port 80 specified - "
        "clearing (as keepalived does: direct routing keeps the packet's port)")
    (svc,) = imp.config.services
    assert (svc.name, [str(r.address) for r in svc.reals]) == ("fwm/1", ["198.18.1.2"])


def test_port_mismatch_of_a_plain_virtual_server_is_reset_with_a_warning(tmp_path):
    p = write(tmp_path, vs(DR + "real_server 198.18.0.11 8080 { }\n"))
    (x,) = keepalived.load(p).reported
    assert (x.line, x.kind) == (5, "warning") and "don't match - resetting" in x.message


def test_check_exits_4_on_keepalived_warnings(tmp_path, capsys):
    p = write(tmp_path, TEXTBOOK)
    assert cli.main(["check", "--keepalived", p]) == 4
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"warning: {p}: line 5: protocol: protocol specified for fwmark")
    assert out[-1] == (f"{p}: OK (1 services, 1 reals, 0 mark rules, 1 health checks); keepalived -t "
                       "reports 2 problems that keepalived and xlb correct (warnings above)")


@pytest.mark.parametrize("weight, kind, code", [(65536, "unsupported", 3), (2147483647, "unsupported", 3),
                                                (2147483648, "error", 1)])
def test_weights_above_65535(tmp_path, capsys, weight, kind, code):
    p = write(tmp_path, vs(DR + f"real_server 198.18.0.11 80 {{\n    weight {weight}\n}}\n"))
    (x,) = problems(p).problems
    assert (x.line, x.keyword, x.kind) == (6, "weight", kind)
    assert cli.main(["check", "--keepalived", p]) == code
    err = capsys.readouterr().err
    assert (f"not supported by xlb: weight {weight}: xlb's data plane holds weights up to 65535" if code == 3
            else f"real server weight {weight} is outside range 0-2147483647") in err


def test_tunnel_forwarding_with_keepalived_keywords(tmp_path):
    """lb_kind TUN with keepalived's type/port/checksum words becomes method "tun" and its tunnel keys; a real's own
    lvs_method TUN may be of the other family (keepalived's rule for tunnels)."""
    p = write(tmp_path, vs("protocol TCP\nlb_algo rr\nlb_kind TUN type gue port 6080 csum\n"
                           "real_server 198.18.0.11 80 { }\nreal_server 2001:db8::11 80 { }\n")
              + vs("protocol UDP\nlb_algo rr\nreal_server 2001:db8::12 53 {\n    lvs_method TUN type gre\n}\n",
                   head="virtual_server 198.51.100.10 53"))
    gue, gre = keepalived.load(p).config.services
    assert (gue.method, gue.tunnel.type, gue.tunnel.port, gue.tunnel.csum) == ("tun", "gue", 6080, "csum")
    assert [str(r.address) for r in gue.reals] == ["198.18.0.11", "2001:db8::11"]
    assert (gre.method, gre.tunnel.type, gre.tunnel.csum) == ("tun", "gre", "nocsum")


@pytest.mark.parametrize("line,message", [
    ("lb_kind TUN type gue", "gue tunnels require port, otherwise cannot have port"),
    ("lb_kind TUN port 6080", "gue tunnels require port, otherwise cannot have port"),
    ("lb_kind TUN type ipip csum", "ipip tunnels do not support checksum option"),
    ("lb_kind TUN type gre remcsum", "gre tunnels do not support remote checksum option"),
    ("lb_kind TUN type vxlan", "unknown tunnel type vxlan"),
    ("lb_kind TUN type gue port 70000", "invalid gue tunnel port 70000"),
    ("lb_kind TUN fast", "invalid tunnel option fast"),
])
def test_tunnel_option_errors_at_their_line(tmp_path, line, message):
    p = write(tmp_path, vs(f"protocol TCP\nlb_algo rr\n{line}\nreal_server 198.18.0.11 80 {{ }}\n"))
    (x,) = problems(p).problems
    assert (x.line, x.keyword, x.message, x.kind) == (4, "lb_kind", message, "error")


def test_reals_forwarded_by_different_methods_are_an_error(tmp_path):
    p = write(tmp_path, vs("protocol TCP\nlb_algo rr\nlb_kind TUN\nreal_server 198.18.0.11 80 { }\n"
                           "real_server 198.18.0.12 80 {\n    lvs_method DR\n}\n"))
    (x,) = problems(p).problems
    assert x.line == 1 and "different forwarding methods (dr, tun)" in x.message
