"""keepalived.conf checker blocks and checker settings become the config's health spec (xlb/health/kaconf.py reads
each block as keepalived does); their problems name file and line; xlb check --keepalived counts them."""
from xlb import cli
from xlb.config import dump
from xlb.config import read as xread
from xlb.importers.keepalived import translate as keepalived
from harness import DR, problems, vs, write

SEVERAL = vs(DR + """\
delay_loop 2
quorum 2
hysteresis 1
sorry_server 198.18.9.9 80
inhibit_on_failure
virtualhost www.example.com
real_server 198.18.0.11 80 {
    weight 2
    notify_down "/usr/local/bin/page down"
    TCP_CHECK {
        connect_timeout 3
    }
    HTTP_GET {
        url {
            path /health
            status_code 200
        }
        nb_get_retry 4
        delay_before_retry 0.5
    }
    MISC_CHECK {
        misc_path /usr/local/bin/ready --quick
        misc_dynamic
    }
}
real_server 198.18.0.12 80 {
    weight 1
}
""")


def test_several_checkers_per_real(tmp_path):
    imp = keepalived.load(write(tmp_path, SEVERAL))
    (svc,) = imp.config.services
    h = svc.health
    assert (h.name, h.delay_loop, h.quorum, h.hysteresis, h.sorry_server, h.inhibit_on_failure) == (
        "[198.51.100.10]:tcp:80", 2.0, 2, 1, ("198.18.9.9", 80), True)
    r11, r12 = h.reals
    assert [c.kind for c in r11.checks] == ["TCP_CHECK", "HTTP_GET", "MISC_CHECK"]
    tcp, http, misc = r11.checks
    assert (tcp.connect_timeout, tcp.connect_port) == (3.0, 80)
    assert (http.retry, http.delay_before_retry, http.virtualhost, http.url[0].path) == (4, 0.5, "www.example.com",
                                                                                       "/health")
    assert (misc.misc_path, misc.misc_dynamic) == (("/usr/local/bin/ready", "--quick"), True)
    assert r11.notify_down == ("/usr/local/bin/page", "down") and r11.weight == 2
    assert r12.checks == ()   # a real without checkers is always up
    assert not any("not run" in w for w in imp.warnings)
    # the imported config written as TOML reads back to the same health spec
    assert xread.parse(dump.dumps(dump.to_tree(imp.config))).services[0].health == h


def test_bfd_check_is_not_supported_with_file_and_line(tmp_path):
    p = write(tmp_path, vs(DR + "real_server 198.18.0.11 80 {\n    BFD_CHECK {\n        name b1\n    }\n}\n"))
    (x,) = problems(p).problems
    assert (x.file, x.line, x.keyword, x.kind) == (p, 6, "BFD_CHECK", "unsupported")
    assert str(x) == f"{p}: line 6: BFD_CHECK: not supported by xlb: BFD health checks"


def test_a_checker_error_names_its_line_as_keepalived_does(tmp_path):
    p = write(tmp_path, vs(DR + "real_server 198.18.0.11 80 {\n    TCP_CHECK {\n        connect_timeout 3\n"
                                "        retyr 2\n    }\n}\n"))
    (x,) = problems(p).problems
    assert (x.line, x.keyword, x.message, x.kind) == (8, "retyr", "Unknown keyword 'retyr'", "error")
    assert cli.main(["check", "--keepalived", p]) == 1


def test_check_counts_the_health_checks(tmp_path, capsys):
    p = write(tmp_path, SEVERAL)
    assert cli.main(["check", "--keepalived", p]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"{p}: OK (1 services, 2 reals, 0 mark rules, 3 health checks)"
