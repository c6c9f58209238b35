"""TOML health keys ([service.real.check], service-level defaults) become xlb.health's spec; errors name the
field and the line; the keys survive a dump and re-read (what a runtime edit does)."""
import pytest

from xlb.config import dump, read
from xlb.errors import ConfigError
from xlb.health.spec import resolve

BASE = """
[[service]]
vip = "198.51.100.10"
port = 80
proto = "tcp"
delay_loop = 5
inhibit_on_failure = true
sorry_server = { address = "198.18.9.9", port = 8080 }
  [service.check]
  kind = "TCP_CHECK"
  [[service.real]]
  address = "198.18.1.2"
  notify_down = ["/bin/true", "down"]
    [[service.real.check]]
    kind = "HTTP_GET"
    retry = 2
    url = [{ path = "/health", status_code = ["200-299", 418] }]
    [[service.real.check]]
    kind = "MISC_CHECK"
    misc_path = ["/bin/true"]
  [[service.real]]
  address = "198.18.1.3"
  weight = 3
"""


def test_checks_become_the_health_spec():
    h = read.parse(BASE, "xlb.toml").services[0].health
    assert h.name == "[198.51.100.10]:tcp:80" and h.delay_loop == 5.0 and h.inhibit_on_failure
    assert h.sorry_server == ("198.18.9.9", 8080)
    r0, r1 = h.reals
    assert (r0.address, r0.port, r0.weight) == ("198.18.1.2", 80, 1)
    assert [c.kind for c in r0.checks] == ["HTTP_GET", "MISC_CHECK"]
    assert r0.checks[0].retry == 2 and r0.checks[0].url[0].status_code == ((200, 299), (418, 418))
    assert r0.notify_down == ("/bin/true", "down")
    # a real without its own check takes the service's
    assert (r1.weight, [c.kind for c in r1.checks]) == (3, ["TCP_CHECK"])


def test_a_service_without_health_keys_has_no_spec():
    cfg = read.parse('[[service]]\nvip = "198.51.100.10"\nport = 80\nproto = "tcp"\n'
                     '[[service.real]]\naddress = "198.18.1.2"\n')
    assert cfg.services[0].health is None


def test_a_real_with_a_check_alone_gives_the_service_a_spec():
    text = BASE.split("  [[service.real]]\n  address = \"198.18.1.3\"")[0]
    text = text.replace("delay_loop = 5\ninhibit_on_failure = true\n", "").replace(
        'sorry_server = { address = "198.18.9.9", port = 8080 }\n  [service.check]\n  kind = "TCP_CHECK"\n', "")
    h = read.parse(text).services[0].health
    assert h.delay_loop == 60.0 and [c.kind for c in h.reals[0].checks] == ["HTTP_GET", "MISC_CHECK"]


@pytest.mark.parametrize("old, new, where, line, words", [
    ("retry = 2", "retyr = 2", "service[0].real[0].check[0].retyr", 16, "did you mean 'retry'?"),
    ('kind = "MISC_CHECK"', 'kind = "BFD_CHECK"', "service[0].real[0].check[1].kind", 19,
     "BFD_CHECK is not supported by xlb"),
    ("delay_loop = 5", "delay_loop = -1", "service[0].delay_loop", 6, "must be a number of seconds"),
    ('misc_path = ["/bin/true"]', "", "service[0].real[0].check[1].misc_path", 18, "MISC_CHECK needs misc_path"),
    ('notify_down = ["/bin/true", "down"]', "notify_down = 3", "service[0].real[0].notify_down", 13, ""),
])
def test_errors_name_the_field_and_line(old, new, where, line, words):
    with pytest.raises(ConfigError) as e:
        read.parse(BASE.replace(old, new), "xlb.toml")
    assert f"xlb.toml: line {line}: {where}:" in str(e.value) and words in str(e.value)


def test_health_keys_survive_a_dump():
    cfg = read.parse(BASE)
    again = read.parse(dump.dumps(dump.to_tree(cfg)))
    assert again.services[0].health == cfg.services[0].health


def test_on_real_failure_and_check_via_vip():
    text = BASE.replace("delay_loop = 5\n", 'delay_loop = 5\non_real_failure = "reset"\n').replace(
        '  address = "198.18.1.3"\n', '  address = "198.18.1.3"\n  check_via_vip = true\n')
    cfg = read.parse(text, "xlb.toml")
    h = cfg.services[0].health
    assert h.on_real_failure == "reset" and h.vip == "198.51.100.10" and not h.check_via_vip
    plain = resolve(h.reals[0].checks[0], h.reals[0], h)
    via = resolve(h.reals[1].checks[0], h.reals[1], h)
    assert (plain.connect_ip, plain.via) == ("198.18.1.2", None)
    assert (via.connect_ip, via.connect_port, via.via) == ("198.51.100.10", 80, "198.18.1.3")
    again = read.parse(dump.dumps(dump.to_tree(cfg)))
    assert again.services[0].health == h
    with pytest.raises(ConfigError, match=r"service\[0\].on_real_failure: must be one of: keep, reschedule, reset"):
        read.parse(text.replace('"reset"', '"drop"'), "xlb.toml")


def test_check_via_vip_on_a_fwmark_service_needs_connect_ip():
    text = ('[[mark]]\nmark = 1\nproto = "tcp"\ndst = "198.51.100.10/32"\nports = [80]\n[[service]]\nfwmark = 1\n'
            'check_via_vip = true\n  [service.check]\n  kind = "TCP_CHECK"\n  connect_port = 80\n'
            '  [[service.real]]\n  address = "198.18.1.2"\n')
    with pytest.raises(ConfigError, match=r"check.connect_ip: check_via_vip on a fwmark service needs connect_ip"):
        read.parse(text, "xlb.toml")
    h = read.parse(text.replace("connect_port = 80\n", 'connect_port = 80\n  connect_ip = "198.51.100.10"\n'),
                   "xlb.toml").services[0].health
    assert resolve(h.reals[0].checks[0], h.reals[0], h).via == "198.18.1.2"


@pytest.mark.parametrize("tunnel, kind", [
    ("", "ipip"),
    ('tunnel_type = "gue"\ntunnel_port = 5555\ntunnel_csum = "csum"\n', "gue"),
    ('tunnel_type = "gue"\ntunnel_gue_header = false\n', "gue"),
    ('tunnel_type = "gre"\ntunnel_csum = "csum"\n', "gre"),
])
@pytest.mark.parametrize("real", ["198.18.1.2", "2001:db8::2"])
def test_check_via_vip_on_a_tun_service_carries_its_tunnel(tunnel, kind, real):
    """A tun service's checks via the VIP carry its tunnel, every type, to a real of either family (the daemon
    wraps them as the data plane wraps a client's packets, bpf/hcencap.c); a real with no check_via_vip none."""
    tun = f'check_via_vip = true\nmethod = "tun"\n{tunnel}'
    text = BASE.replace("delay_loop = 5\n", f"delay_loop = 5\n{tun}").replace('address = "198.18.1.2"',
                                                                             f'address = "{real}"')
    h = read.parse(text, "xlb.toml").services[0].health
    via = resolve(h.reals[0].checks[0], h.reals[0], h)
    assert (via.connect_ip, via.via, via.via_tunnel.type) == ("198.51.100.10", real, kind)
    assert via.via_tunnel == read.parse(text, "xlb.toml").services[0].tunnel
    plain = read.parse(BASE.replace("delay_loop = 5\n", 'delay_loop = 5\nmethod = "tun"\n'), "xlb.toml")
    assert resolve(plain.services[0].health.reals[0].checks[0], plain.services[0].health.reals[0],
                   plain.services[0].health).via_tunnel is None
