"""The checker spec model: keepalived's keywords and defaults, inheritance virtual_server -> real_server ->
checker, and validation errors that name the field. Pure."""
import pytest

from xlb.errors import ConfigError
from xlb.health import spec as hspec


def service(svc=None, real=None, port=80):
    return hspec.parse_service("[198.51.100.10]:tcp:80", "tcp", svc or {},
                               [("198.18.1.2", port, 1, real or {}, "service[0].real[0]")], "service[0]",
                               source="xlb.toml")


def resolved(svc=None, real=None, port=80):
    s = service(svc, real, port)
    r = s.reals[0]
    return [hspec.resolve(c, r, s) for c in r.checks]


def rejects(field, words, svc=None, real=None, port=80):
    with pytest.raises(ConfigError) as e:
        service(svc, real, port)
    assert e.value.where == field and e.value.source == "xlb.toml", str(e.value)
    assert words in e.value.message, str(e.value)


@pytest.mark.parametrize("kind, retry, dbr", [
    ("TCP_CHECK", 1, 1.0), ("HTTP_GET", 1, 3.0), ("SSL_GET", 1, 3.0), ("MISC_CHECK", 0, 1.0),
    ("DNS_CHECK", 3, 60.0), ("UDP_CHECK", 1, 1.0), ("PING_CHECK", 1, 1.0), ("SMTP_CHECK", 1, 1.0)])
def test_keepalived_defaults_per_kind(kind, retry, dbr):
    extra = {"HTTP_GET": {"url": {"path": "/"}}, "SSL_GET": {"url": {"path": "/"}},
             "MISC_CHECK": {"misc_path": "/bin/true"}}.get(kind, {})
    (c,) = resolved(real={"check": dict(kind=kind, **extra)})
    assert (c.retry, c.delay_before_retry) == (retry, dbr)    # DNS: delay_before_retry = delay_loop
    assert (c.delay_loop, c.connect_timeout, c.warmup, c.alpha) == (60.0, 5.0, 60.0, False)
    assert (c.connect_ip, c.connect_port) == ("198.18.1.2", 80)


def test_dns_and_http_defaults():
    (d, h) = resolved(real={"check": [{"kind": "DNS_CHECK"}, {"kind": "HTTP_GET", "url": {"path": "/x"}}]})
    assert (d.type, d.name) == ("SOA", ".")
    assert h.url[0].status_code == ((200, 299),) and h.http_protocol == "1.0"


def test_inheritance_virtual_server_then_real_server_then_checker():
    svc = {"delay_loop": 10, "retry": 4, "connect_timeout": 2, "alpha": True, "warmup": 0}
    real = {"delay_loop": 5, "delay_before_retry": 0.5,
            "check": [{"kind": "TCP_CHECK"}, {"kind": "TCP_CHECK", "delay_loop": 1, "retry": 0, "alpha": False}]}
    a, b = resolved(svc, real)
    assert (a.delay_loop, a.retry, a.connect_timeout, a.alpha, a.warmup, a.delay_before_retry) == \
        (5.0, 4, 2.0, True, 0.0, 0.5)
    assert (b.delay_loop, b.retry, b.alpha) == (1.0, 0, False)


def test_warmup_defaults_to_the_checkers_own_delay_loop():
    (c,) = resolved({"delay_loop": 10}, {"check": {"kind": "TCP_CHECK", "delay_loop": 3}})
    assert c.warmup == 3.0


def test_service_level_check_is_the_default_for_reals_without_one():
    s = service({"check": {"kind": "TCP_CHECK", "connect_port": 8080}})
    assert [c.connect_port for c in s.reals[0].checks] == [8080]


def test_keepalived_spellings():
    (c, u) = resolved(real={"check": [
        {"kind": "HTTP_GET", "nb_get_retry": 5, "url": {"path": "/", "status_code": [200, "300-302"],
                                                       "digest": "9F86D081884C7D659A2FEAA0C55AD015"}},
        {"kind": "UDP_CHECK", "payload": "de ad", "require_reply": "4f 4b XX"}]})
    assert c.retry == 5 and c.url[0].status_code == ((200, 200), (300, 302))
    assert c.url[0].digest == "9f86d081884c7d659a2feaa0c55ad015"
    assert (u.payload, u.reply, u.reply_mask) == (b"\xde\xad", b"OK\x00", b"\x00\x00\xff")


def test_commands_are_argv():
    s = service({"quorum_up": "/usr/bin/logger 'quorum up'"},
                {"notify_down": ["/bin/echo", "a b"], "check": {"kind": "MISC_CHECK", "misc_path": "/bin/x -v",
                                                                 "user": "nobody nogroup"}})
    assert s.quorum_up == ("/usr/bin/logger", "quorum up")
    assert s.reals[0].notify_down == ("/bin/echo", "a b")
    assert s.reals[0].checks[0].misc_path == ("/bin/x", "-v") and s.reals[0].checks[0].user == ("nobody", "nogroup")


@pytest.mark.parametrize("real, field, words", [
    ({"check": {"kind": "BFD_CHECK"}}, "service[0].real[0].check.kind", "not supported by xlb"),
    ({"check": {"kind": "TPC_CHECK"}}, "service[0].real[0].check.kind", "must be one of"),
    ({"check": {"kind": "TCP_CHECK", "retyr": 2}}, "service[0].real[0].check.retyr", "did you mean 'retry'"),
    ({"check": [{"kind": "TCP_CHECK"}, {"kind": "TCP_CHECK", "connect_port": 0}]},
     "service[0].real[0].check[1].connect_port", "1..65535"),
    ({"check": {"kind": "TCP_CHECK", "connect_ip": "10.0.0.300"}}, "service[0].real[0].check.connect_ip",
     "not an IPv4 or IPv6 address"),
    ({"check": {"kind": "TCP_CHECK", "delay_loop": 0}}, "service[0].real[0].check.delay_loop", ">= 0.001"),
    ({"check": {"kind": "TCP_CHECK", "misc_path": "/bin/true"}}, "service[0].real[0].check.misc_path",
     "unknown key"),
    ({"check": {"kind": "HTTP_GET"}}, "service[0].real[0].check.url", "at least one url"),
    ({"check": {"kind": "HTTP_GET", "url": [{"path": "/"}, {"digest": "00"}]}},
     "service[0].real[0].check.url[1].path", "path is required"),
    ({"check": {"kind": "HTTP_GET", "url": {"path": "/", "digest": "abc"}}},
     "service[0].real[0].check.url.digest", "MD5 digest"),
    ({"check": {"kind": "HTTP_GET", "url": {"path": "/", "status_code": [200, "600-700"]}}},
     "service[0].real[0].check.url.status_code[1]", "HTTP status"),
    ({"check": {"kind": "HTTP_GET", "url": {"path": "/", "regex": "("}}},
     "service[0].real[0].check.url.regex", "invalid regular expression"),
    ({"check": {"kind": "HTTP_GET", "url": {"path": "/"}, "http_protocol": "2"}},
     "service[0].real[0].check.http_protocol", "1.0, 1.0C, 1.1"),
    ({"check": {"kind": "DNS_CHECK", "type": "SRV"}}, "service[0].real[0].check.type", "must be one of"),
    ({"check": {"kind": "DNS_CHECK", "name": "a..b"}}, "service[0].real[0].check.name", "empty labels"),
    ({"check": {"kind": "UDP_CHECK", "payload": "abc"}}, "service[0].real[0].check.payload", "hex digits"),
    ({"check": {"kind": "UDP_CHECK", "min_reply_length": 9, "max_reply_length": 3}},
     "service[0].real[0].check.min_reply_length", "always fail"),
    ({"check": {"kind": "MISC_CHECK"}}, "service[0].real[0].check.misc_path", "needs misc_path"),
    ({"check": {"kind": "MISC_CHECK", "misc_path": "'unclosed"}}, "service[0].real[0].check.misc_path",
     "cannot split"),
    ({"check": {"kind": "FILE_CHECK", "track_file": "/f", "retry": 2}}, "service[0].real[0].check.retry",
     "unknown key"),
    ({"check": {"kind": "TCP_CHECK", "connect_ip": "2001:db8::1", "bindto": "192.0.2.1"}},
     "service[0].real[0].check.bindto", "different address families"),
    ({"notify_up": []}, "service[0].real[0].notify_up", "must be a command"),
    ({"check": "TCP_CHECK"}, "service[0].real[0].check", "must be a table"),
])
def test_bad_checker_blocks_name_the_field(real, field, words):
    rejects(field, words, real=real)


def test_a_fwmark_real_without_a_port_needs_connect_port():
    rejects("service[0].real[0].check.connect_port", "needs connect_port", real={"check": {"kind": "TCP_CHECK"}},
            port=0)
    assert service(real={"check": {"kind": "PING_CHECK"}}, port=0).reals[0].checks[0].kind == "PING_CHECK"


@pytest.mark.parametrize("svc, field, words", [
    ({"quorum": 1, "hysteresis": 1}, "service[0].hysteresis", "below quorum"),
    ({"quorum": 2}, "service[0].quorum", "exceeds the total weight"),
    ({"quorum": 0}, "service[0].quorum", "1.."),
    ({"sorry_server": "nowhere"}, "service[0].sorry_server", "not an IPv4"),
    ({"sorry_server": {"address": "198.18.9.9", "prt": 80}}, "service[0].sorry_server.prt", "unknown key"),
    ({"omega": "yes"}, "service[0].omega", "true or false"),
    ({"retry": -1}, "service[0].retry", "0.."),
])
def test_bad_service_health_keys_name_the_field(svc, field, words):
    rejects(field, words, svc=svc)


def test_the_health_package_imports_only_the_standard_library_xlb_errors_and_itself():
    """The contract in xlb/health/__init__.py: no bcc, no data plane, nothing the layout refactor moves."""
    import ast
    import pathlib
    import sys
    for path in pathlib.Path(hspec.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level == 1 or (node.level == 2 and node.module == "errors"):
                    continue
                mods = [node.module]
            else:
                continue
            for mod in mods:
                assert mod.split(".")[0] in sys.stdlib_module_names or mod == "xlb.errors", (path.name, mod)
