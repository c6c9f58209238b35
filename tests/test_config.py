"""xlb.config.model: TOML loading and validation (no root, no bcc)."""

import ipaddress

import pytest

from xlb.config import model as config
from xlb.config import read as xread
from xlb.config.model import Config, MarkRule, Real, Service, Tables, Timeouts
from xlb.errors import ConfigError

EXAMPLE = """\
[timeouts]
tcp = 900
tcpfin = 120
udp = 300

[[mark]]
mark = 1
proto = "tcp"
dst = "198.51.100.10/32"
ports = [80, 443]

[[service]]
fwmark = 1
family = "ipv4"
scheduler = "rr"
method = "dr"
persistence_timeout = 300
persistence_netmask = "255.255.255.0"
persistence_mode = "lvs"
expire_quiescent_template = false

  [[service.real]]
  address = "198.18.1.2"
  weight = 1
"""

V4 = '[[service]]\nvip = "198.51.100.10"\nport = 80\nproto = "tcp"\n'
V6 = '[[service]]\nvip = "2001:db8::1"\nport = 53\nproto = "udp"\n'


def reject(text):
    with pytest.raises(ConfigError) as info:
        xread.parse(text, "test.toml")
    return info.value


def test_example_loads_from_file(tmp_path):
    path = tmp_path / "xlb.toml"
    path.write_text(EXAMPLE)
    cfg = xread.load(path)
    assert cfg == Config(
        timeouts=Timeouts(tcp=900, tcpfin=120, udp=300, syn=60),
        tables=Tables(conns=1048576, templates=262144, sweep_interval=1.0),
        marks=(MarkRule(mark=1, proto="tcp", dst=ipaddress.ip_network("198.51.100.10/32"),
                        ports=((80, 80), (443, 443)), where="mark[0]"),),
        services=(Service(fwmark=1, vip=None, port=None, proto=None, family=4, scheduler="rr", method="dr",
                          persistence_timeout=300, persistence_netmask=bytes([255, 255, 255, 0]) + bytes(12),
                          persistence_mode="lvs", expire_quiescent_template=False, mh_table_size=4093,
                          reals=(Real(ipaddress.ip_address("198.18.1.2"), 1, "service[0].real[0]"),),
                          where="service[0]"),),
        source=str(path),
    )
    assert cfg.services[0].name == "fwm/1"
    assert cfg.services[0].key == ("fwm", 4, 1)


def test_load_missing_file_is_config_error(tmp_path):
    err = pytest.raises(ConfigError, xread.load, tmp_path / "nope.toml").value
    assert err.source == str(tmp_path / "nope.toml")
    assert "cannot read" in err.message


def test_empty_config_gets_defaults():
    cfg = xread.parse("")
    assert cfg.timeouts == Timeouts() and cfg.tables == Tables()
    assert cfg.marks == () and cfg.services == () and cfg.source == "<config>"


def test_vip_service_defaults():
    (s,) = xread.parse(V4 + '[[service.real]]\naddress = "198.18.1.2"\n').services
    assert (s.scheduler, s.method, s.persistence_timeout, s.persistence_mode) == ("wlc", "dr", None, "lvs")
    assert s.persistence_netmask == b"\xff" * 4 + bytes(12)
    assert s.reals[0].weight == 1 and s.family == 4 and s.fwmark is None


def test_connection_schedulers_flags_and_thresholds():
    text = (V4 + 'scheduler = "sh"\nsched_flags = ["sh-port", "sh-fallback", "sh-port"]\n'
            '[[service.real]]\naddress = "198.18.1.2"\nuthreshold = 100\nlthreshold = 50\n')
    (s,) = xread.parse(text).services
    assert s.sched_flags == ("sh-fallback", "sh-port")
    assert (s.reals[0].uthreshold, s.reals[0].lthreshold) == (100, 50)
    for name in ("lc", "wlc", "sed", "nq", "fo", "ovf"):
        (s,) = xread.parse(V4 + f'scheduler = "{name}"\n').services
        assert s.scheduler == name and s.sched_flags == ()


def test_tables_and_syn_timeout():
    cfg = xread.parse("[timeouts]\nsyn = 30\n[tables]\nconns = 2048\ntemplates = 1024\nsweep_interval = 2\n"
                       "flow_cache = 0\n")
    assert cfg.timeouts == Timeouts(syn=30)
    assert cfg.tables == Tables(conns=2048, templates=1024, sweep_interval=2.0, flow_cache=0)
    assert isinstance(cfg.tables.sweep_interval, float)


@pytest.mark.parametrize("text, name, key", [
    (V4, "tcp/198.51.100.10:80", ("tcp", ipaddress.ip_address("198.51.100.10"), 80)),
    (V6, "udp/[2001:db8::1]:53", ("udp", ipaddress.ip_address("2001:db8::1"), 53)),
    ('[[service]]\nfwmark = 80\n', "fwm/80", ("fwm", 4, 80)),
    ('[[service]]\nfwmark = 80\nfamily = "ipv6"\n', "fwm6/80", ("fwm", 6, 80)),
])
def test_name_and_key(text, name, key):
    (s,) = xread.parse(text).services
    assert s.name == name
    assert s.key == key
    assert hash(s.key) == hash(key)


def test_ipv4_noncontiguous_netmask():
    (s,) = xread.parse(V4 + 'persistence_timeout = 60\npersistence_netmask = "255.255.0.255"\n').services
    assert s.persistence_netmask == bytes([255, 255, 0, 255]) + bytes(12)


@pytest.mark.parametrize("spec", ['"64"', "64"])
def test_ipv6_prefix_netmask(spec):
    (s,) = xread.parse(V6 + f"persistence_timeout = 60\npersistence_netmask = {spec}\n").services
    assert s.persistence_netmask == b"\xff" * 8 + bytes(8)
    assert s.family == 6


def test_port_zero_with_persistence_ok():
    (s,) = xread.parse(V4.replace("port = 80", "port = 0") + "persistence_timeout = 300\n").services
    assert s.port == 0 and s.name == "tcp/198.51.100.10:0"


def test_ports_merged_and_sorted():
    cfg = xread.parse('[[mark]]\nmark = 7\ndst = "10.0.0.0/8"\nports = ["8000-8080", 443, 80, "81-90", 8080, '
                       '"8081"]\n')
    assert cfg.marks[0].ports == ((80, 90), (443, 443), (8000, 8081))
    assert cfg.marks[0].proto == "any"


def test_mark_without_ports_is_every_port_and_ipv6():
    (m,) = xread.parse('[[mark]]\nmark = 2\nproto = "udp"\ndst = "2001:db8::/64"\n').marks
    assert m.ports == () and m.dst == ipaddress.ip_network("2001:db8::/64")


@pytest.mark.parametrize("marks", [
    # specific proto next to "any" on the same prefix and ports: the specific proto wins
    [("tcp", "10.0.0.0/24", [80]), ("any", "10.0.0.0/24", [80])],
    # same proto, disjoint ports
    [("tcp", "10.0.0.0/24", [80]), ("tcp", "10.0.0.0/24", ["81-90"])],
    # different prefixes (longest prefix wins)
    [("tcp", "10.0.0.0/24", [80]), ("tcp", "10.0.0.1/32", [80])],
    # ported rule vs no-ports rule on the same prefix
    [("tcp", "10.0.0.0/24", [80]), ("tcp", "10.0.0.0/24", None)],
    # tcp vs udp
    [("tcp", "10.0.0.0/24", None), ("udp", "10.0.0.0/24", None)],
])
def test_mark_rules_that_do_not_conflict(marks):
    text = ""
    for i, (proto, dst, ports) in enumerate(marks):
        text += f'[[mark]]\nmark = {i + 1}\nproto = "{proto}"\ndst = "{dst}"\n'
        if ports is not None:
            text += f"ports = {ports!r}\n".replace("'", '"')
    assert len(xread.parse(text).marks) == len(marks)


def test_same_mark_overlap_is_fine():
    text = '[[mark]]\nmark = 1\ndst = "10.0.0.0/24"\nports = [80]\n' * 2
    assert len(xread.parse(text).marks) == 2


MARK = '[[mark]]\nmark = 1\nproto = "tcp"\ndst = "198.51.100.0/24"\n'
SVC_REAL = V4 + '[[service.real]]\naddress = "198.18.1.2"\n'

# (description, config text, expected where, fragment of the message)
REJECTS = [
    ("unknown top-level key", "servce = 1\n", "servce", "unknown key 'servce'"),
    ("unknown service key", V4 + 'schedular = "rr"\n', "service[0].schedular", "did you mean 'scheduler'"),
    ("unknown real key", V4 + '[[service.real]]\naddress = "198.18.1.2"\nwieght = 2\n',
     "service[0].real[0].wieght", "unknown key"),
    ("unknown timeouts key", "[timeouts]\ntcpfn = 3\n", "timeouts.tcpfn", "unknown key"),
    ("unknown mark key", MARK + "port = 80\n", "mark[0].port", "did you mean 'ports'"),
    ("negative weight", V4 + '[[service.real]]\naddress = "198.18.1.2"\nweight = -1\n',
     "service[0].real[0].weight", "weight must be an integer 0..65535, got -1"),
    ("weight too big", V4 + '[[service.real]]\naddress = "198.18.1.2"\nweight = 65536\n',
     "service[0].real[0].weight", "0..65535, got 65536"),
    ("bool weight", V4 + '[[service.real]]\naddress = "198.18.1.2"\nweight = true\n',
     "service[0].real[0].weight", "got true"),
    ("timeout zero", "[timeouts]\nudp = 0\n", "timeouts.udp", "udp must be an integer 1.."),
    ("conns too small", "[tables]\nconns = 10\n", "tables.conns", "1024..67108864, got 10"),
    ("conns too big", "[tables]\nconns = 67108865\n", "tables.conns", "1024..67108864"),
    ("templates too small", "[tables]\ntemplates = 1023\n", "tables.templates", "1024.."),
    ("sweep too small", "[tables]\nsweep_interval = 0.01\n", "tables.sweep_interval", "0.05..60, got 0.01"),
    ("sweep string", '[tables]\nsweep_interval = "1s"\n', "tables.sweep_interval", 'got "1s"'),
    ("flow cache not a power of two", "[tables]\nflow_cache = 1000\n", "tables.flow_cache", "power of two"),
    ("flow cache too big", "[tables]\nflow_cache = 33554432\n", "tables.flow_cache", "0..16777216"),
    ("flow cache too small", "[tables]\nflow_cache = 512\n", "tables.flow_cache", "power of two from 1024"),
    ("mark zero", '[[mark]]\nmark = 0\ndst = "10.0.0.0/8"\n', "mark[0].mark", "1..4294967295, got 0"),
    ("mark missing dst", "[[mark]]\nmark = 3\n", "mark[0].dst", "dst is required"),
    ("mark host bits", '[[mark]]\nmark = 3\ndst = "10.0.0.1/8"\n', "mark[0].dst", 'did you mean "10.0.0.0/8"'),
    ("mark bad proto", '[[mark]]\nmark = 3\nproto = "sctp"\ndst = "10.0.0.0/8"\n', "mark[0].proto",
     'tcp, udp, any; got "sctp"'),
    ("empty ports", MARK + "ports = []\n", "mark[0].ports", "omit the key"),
    ("port zero in ports", MARK + "ports = [80, 0]\n", "mark[0].ports[1]", "got 0"),
    ("reversed range", MARK + 'ports = [80, "90-81"]\n', "mark[0].ports[1]", 'got "90-81"'),
    ("garbage range", MARK + 'ports = ["http"]\n', "mark[0].ports[0]", 'got "http"'),
    ("range past 65535", MARK + 'ports = ["1-65536"]\n', "mark[0].ports[0]", "65535"),
    ("conflict same proto overlapping ports",
     MARK + 'ports = ["80-90"]\n' + MARK.replace("mark = 1", "mark = 2").replace('"tcp"', '"udp"')
     + MARK.replace("mark = 1", "mark = 3") + 'ports = [85]\n',
     "mark[2]", "conflicts with mark[0]: both match tcp 198.51.100.0/24 port 85 but give mark 3 and mark 1"),
    ("conflict two any rules",
     '[[mark]]\nmark = 1\ndst = "2001:db8::/64"\nports = [53]\n[[mark]]\nmark = 2\ndst = "2001:db8::/64"\n'
     'ports = ["1-100"]\n', "mark[1]", "conflicts with mark[0]"),
    ("conflict two no-ports rules", MARK + MARK.replace("mark = 1", "mark = 9"), "mark[1]",
     "conflicts with mark[0]: both match tcp 198.51.100.0/24 every port"),
    ("fwmark and vip", V4 + "fwmark = 1\n", "service[0]", "not both"),
    ("neither fwmark nor vip", "[[service]]\nscheduler = \"rr\"\n", "service[0]", "either fwmark"),
    ("fwmark with port", "[[service]]\nfwmark = 1\nport = 80\n", "service[0].port", "only to vip services"),
    ("vip missing port", '[[service]]\nvip = "198.51.100.10"\nproto = "tcp"\n', "service[0].port", "port is required"),
    ("vip missing proto", '[[service]]\nvip = "198.51.100.10"\nport = 80\n', "service[0].proto",
     "proto is required"),
    ("vip bad", '[[service]]\nvip = "198.51.100.0/24"\nport = 80\nproto = "tcp"\n', "service[0].vip",
     "vip must be an IPv4 or IPv6 address"),
    ("vip family mismatch", V4 + 'family = "ipv6"\n', "service[0].family", "does not match vip"),
    ("bad family", '[[service]]\nfwmark = 1\nfamily = "inet"\n', "service[0].family", "ipv4, ipv6"),
    ("port zero without persistence", V4.replace("port = 80", "port = 0"), "service[0].port",
     "port 0 (all ports) requires persistence_timeout"),
    ("port out of range", V4.replace("port = 80", "port = 65536"), "service[0].port", "0..65535"),
    ("scheduler unknown", V4 + 'scheduler = "fast"\n', "service[0].scheduler",
     "unknown scheduler \"fast\" (supported: rr, wrr, lc, wlc, sed, nq, fo, ovf, sh, dh, mh, lblc, lblcr)"),
    ("flags on rr", V4 + 'scheduler = "rr"\nsched_flags = ["sh-port"]\n', "service[0].sched_flags",
     'scheduler "rr" takes no flags'),
    ("mh flag on sh", V4 + 'scheduler = "sh"\nsched_flags = ["mh-port"]\n', "service[0].sched_flags[0]",
     'unknown flag "mh-port" for scheduler "sh"'),
    ("flags not a list", V4 + 'scheduler = "sh"\nsched_flags = "sh-port"\n', "service[0].sched_flags",
     "must be a list"),
    ("lthreshold alone", V4 + '[[service.real]]\naddress = "198.18.1.2"\nlthreshold = 5\n',
     "service[0].real[0].lthreshold", "without uthreshold"),
    ("lthreshold above", V4 + '[[service.real]]\naddress = "198.18.1.2"\nuthreshold = 5\nlthreshold = 5\n',
     "service[0].real[0].lthreshold", "must be below uthreshold 5"),
    ("dr real port differs", V4 + '[[service.real]]\naddress = "198.18.0.11"\nport = 8080\n',
     "service[0].real[0].port", 'port 8080 differs from the service\'s port 80: only method = "nat" rewrites'),
    ("nat real port zero", V4 + 'method = "nat"\n[[service.real]]\naddress = "198.18.0.11"\nport = 0\n',
     "service[0].real[0].port", "1..65535, got 0"),
    ("tunnel keys on dr", V4 + 'tunnel_type = "gue"\n', "service[0].tunnel_type", 'applies only to method "tun"'),
    ("gue needs a port", V4 + 'method = "tun"\ntunnel_type = "gue"\n', "service[0].tunnel_port", "required"),
    ("gre has no remcsum", V4 + 'method = "tun"\ntunnel_type = "gre"\ntunnel_csum = "remcsum"\n',
     "service[0].tunnel_csum", "one of: nocsum, csum"),
    ("ipip has no csum", V4 + 'method = "tun"\ntunnel_csum = "csum"\n', "service[0].tunnel_csum", "one of: nocsum"),
    ("port on ipip", V4 + 'method = "tun"\ntunnel_port = 6080\n', "service[0].tunnel_port", 'only to tunnel_type "gue"'),
    ("bare gue has no remcsum", V4 + 'method = "tun"\ntunnel_type = "gue"\ntunnel_gue_header = false\n'
     'tunnel_csum = "remcsum"\n', "service[0].tunnel_csum", "needs GUE's header"),
    ("bad tunnel source", V4 + 'method = "tun"\ntunnel_source = "198.18.5.1/24"\n', "service[0].tunnel_source",
     "host bits set"),
    ("two sources of a family", V4 + 'method = "tun"\ntunnel_source = ["198.18.5.0/24", "198.18.6.1"]\n',
     "service[0].tunnel_source[1]", "one per family"),
    ("method unknown", V4 + 'method = "gre"\n', "service[0].method", "unknown method"),
    ("netmask without timeout", V4 + 'persistence_netmask = "255.255.255.0"\n',
     "service[0].persistence_netmask", "without persistence_timeout"),
    ("mode without timeout", V4 + 'persistence_mode = "lvs"\n', "service[0].persistence_mode",
     "without persistence_timeout"),
    ("eqt without timeout", V4 + "expire_quiescent_template = true\n", "service[0].expire_quiescent_template",
     "without persistence_timeout"),
    ("timeout zero", V4 + "persistence_timeout = 0\n", "service[0].persistence_timeout", "got 0"),
    ("v4 netmask as prefix", V4 + "persistence_timeout = 60\npersistence_netmask = 24\n",
     "service[0].persistence_netmask", "dotted mask"),
    ("v4 netmask garbage", V4 + 'persistence_timeout = 60\npersistence_netmask = "255.255.255.256"\n',
     "service[0].persistence_netmask", "dotted mask"),
    ("v6 prefix 0", V6 + "persistence_timeout = 60\npersistence_netmask = 0\n", "service[0].persistence_netmask",
     "prefix length 1..128"),
    ("v6 prefix 129", V6 + 'persistence_timeout = 60\npersistence_netmask = "129"\n',
     "service[0].persistence_netmask", "got \"129\""),
    ("v6 dotted mask", V6 + 'persistence_timeout = 60\npersistence_netmask = "255.255.255.0"\n',
     "service[0].persistence_netmask", "prefix length"),
    ("bad persistence mode", V4 + 'persistence_timeout = 60\npersistence_mode = "sticky"\n',
     "service[0].persistence_mode", "lvs, timeout"),
    ("eqt not bool", V4 + 'persistence_timeout = 60\nexpire_quiescent_template = "yes"\n',
     "service[0].expire_quiescent_template", "true or false"),
    ("mh size not prime", V4 + 'scheduler = "mh"\nmh_table_size = 4096\n', "service[0].mh_table_size",
     "must be a prime number, got 4096"),
    ("mh size too big", V4 + 'scheduler = "mh"\nmh_table_size = 1000033\n', "service[0].mh_table_size",
     "2..1000003"),
    ("mh size below reals", V4 + 'scheduler = "mh"\nmh_table_size = 2\n'
     + "".join(f'[[service.real]]\naddress = "198.18.1.{i}"\n' for i in range(1, 4)),
     "service[0].mh_table_size", "smaller than the number of reals (3)"),
    ("mh size without mh", V4 + "mh_table_size = 4093\n", "service[0].mh_table_size", 'only to scheduler "mh"'),
    ("real family mismatch", V4 + '[[service.real]]\naddress = "2001:db8::2"\n', "service[0].real[0].address",
     "is IPv6 but the service is IPv4"),
    ("real family mismatch fwmark v6", '[[service]]\nfwmark = 1\nfamily = "ipv6"\n[[service.real]]\n'
     'address = "198.18.1.2"\n', "service[0].real[0].address", "is IPv4 but the service is IPv6"),
    ("real missing address", V4 + "[[service.real]]\nweight = 2\n", "service[0].real[0].address",
     "address is required"),
    ("real bad address", V4 + '[[service.real]]\naddress = "host.example"\n', "service[0].real[0].address",
     'got "host.example"'),
    ("duplicate real", V4 + "".join(f'[[service.real]]\naddress = "{a}"\n'
                                    for a in ("198.18.1.2", "198.18.1.3", "198.18.1.2")),
     "service[0].real[2].address", "duplicate real 198.18.1.2: already given as service[0].real[0]"),
    ("real not array", V4 + 'real = {address = "198.18.1.2"}\n', "service[0].real",
     "must be an array of tables (write [[service.real]])"),
    ("service not array", '[service]\nfwmark = 1\n', "service", "write [[service]]"),
    ("duplicate vip service", SVC_REAL + V6 + V4, "service[2]",
     "duplicate service tcp/198.51.100.10:80: already defined as service[0]"),
    ("duplicate fwmark service", '[[service]]\nfwmark = 5\n[[service]]\nfwmark = 5\nfamily = "ipv4"\n',
     "service[1]", "duplicate service fwm/5: already defined as service[0]"),
    # A zone index names no other address (the maps hold 16 bytes): "%a" and "%b" would be two services on one key.
    ("vip with a zone index", V6.replace('"2001:db8::1"', '"2001:db8::1%a"') + V6.replace('"2001:db8::1"',
     '"2001:db8::1%b"'), "service[0].vip", 'a zone index ("%a") has no meaning here; write "2001:db8::1"'),
    ("real with a zone index", V6 + '[[service.real]]\naddress = "2001:db8::2%eth0"\n[[service.real]]\n'
     'address = "2001:db8::2"\n', "service[0].real[0].address", 'a zone index ("%eth0") has no meaning here'),
    ("ops on a tcp service", V4 + "ops = true\n", "service[0].ops",
     "ops (one-packet scheduling) applies only to UDP, as in IPVS"),
    ("ops not a boolean", V6 + 'ops = "yes"\n', "service[0].ops", 'ops must be true or false, got "yes"'),
    ("icmp echo_reply not a boolean", "[icmp]\necho_reply = 1\n", "icmp.echo_reply",
     "echo_reply must be true or false, got 1"),
    ("icmp unknown key", "[icmp]\necho = false\n", "icmp.echo", "unknown key 'echo'"),
    ("mark dst with a zone index", '[[mark]]\nmark = 1\ndst = "2001:db8::%eth0/64"\n[[mark]]\nmark = 2\n'
     'dst = "2001:db8::/64"\n', "mark[0].dst", 'a zone index ("%eth0") has no meaning here; write "2001:db8::/64"'),
]


@pytest.mark.parametrize("desc, text, where, fragment", REJECTS, ids=[r[0] for r in REJECTS])
def test_rejects(desc, text, where, fragment):
    err = reject(text)
    assert err.source == "test.toml"
    assert err.where == where
    assert fragment in err.message
    line = f"line {err.line}: " if err.line is not None else ""
    assert str(err) == f"test.toml: {line}{where}: {err.message}"


def test_fwmark_services_differ_by_family():
    cfg = xread.parse('[[service]]\nfwmark = 5\n[[service]]\nfwmark = 5\nfamily = "ipv6"\n')
    assert [s.name for s in cfg.services] == ["fwm/5", "fwm6/5"]


@pytest.mark.parametrize("text, line", [
    ("[timeouts]\ntcp = 900\nudp = = 3\n", 3),
    ('[[service]]\nvip = "1.2.3.4\nport = 80\n', 2),
    ("a = 1\nb = ", 2),
])
def test_toml_syntax_error_gives_line(text, line):
    err = reject(text)
    assert err.where == f"line {line}"
    assert err.message.startswith("TOML syntax error: ")


# --- public helpers -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("family, spec, expected", [
    (4, None, b"\xff" * 4 + bytes(12)),
    (4, "255.255.0.255", bytes([255, 255, 0, 255]) + bytes(12)),
    (4, "0.0.0.0", bytes(16)),
    (6, None, b"\xff" * 16),
    (6, 64, b"\xff" * 8 + bytes(8)),
    (6, "64", b"\xff" * 8 + bytes(8)),
    (6, 1, b"\x80" + bytes(15)),
    (6, 127, b"\xff" * 15 + b"\xfe"),
    (6, 128, b"\xff" * 16),
])
def test_netmask_bytes(family, spec, expected):
    assert config.netmask_bytes(family, spec) == expected


@pytest.mark.parametrize("family, spec", [(4, 24), (4, "255.0.0"), (6, 0), (6, "ff::"), (6, True), (5, None)])
def test_netmask_bytes_rejects(family, spec):
    with pytest.raises(ValueError):
        config.netmask_bytes(family, spec)


def test_addr_bytes_and_mask_address():
    assert config.addr_bytes("198.51.100.7") == bytes([198, 51, 100, 7]) + bytes(12)
    assert config.addr_bytes(ipaddress.ip_address("2001:db8::1")) == bytes.fromhex("20010db8" + "0" * 22 + "01")
    masked = config.mask_address(config.addr_bytes("198.51.100.7"), config.netmask_bytes(4, "255.255.0.255"))
    assert masked == bytes([198, 51, 0, 7]) + bytes(12)
    v6 = config.mask_address(config.addr_bytes("2001:db8:1:2:3:4:5:6"), config.netmask_bytes(6, 64))
    assert v6 == config.addr_bytes("2001:db8:1:2::")


# --- where a field is written: semantic errors name the line as well as the field ------------------------------

LINED = """# comment [[service]]
[tables]
conns = 4096

[[mark]]
mark = 1
dst = "198.51.100.0/24"
ports = [
  80,        # a comment with [[service]] and x = 1
  "443",
]

[[mark]]
mark = 2
dst = "198.51.100.0/25"
proto = "udp"

[[service]]
vip = "198.51.100.10"
port = 80
proto = "tcp"
  [[service.real]]
  address = "198.18.0.11"

[[service]]
fwmark = 1
scheduler = "mh"
  [[service.real]]
  address = "198.18.0.11"
  [[service.real]]
  address = "198.18.0.12"
  weight = 2
  [[service.real]]
  address = "198.18.0.13"
"""


@pytest.mark.parametrize("old, new, where, line", [
    ('weight = 2', 'weight = 70000', "service[1].real[1].weight", 32),
    ('address = "198.18.0.13"', 'address = "198.18.0.12"', "service[1].real[2].address", 34),
    ('scheduler = "mh"', 'scheduler = "lblcx"', "service[1].scheduler", 27),
    ('port = 80', 'port = 0', "service[0].port", 20),
    ('  "443",', '  "443-80",', "mark[0].ports[1]", 8),
    ('proto = "udp"', 'proto = "sctp"', "mark[1].proto", 16),
    ('conns = 4096', 'conns = 1', "tables.conns", 3),
    ('fwmark = 1\n', 'fwmark = 1\nvip = "198.51.100.9"\n', "service[1]", 25),
])
def test_semantic_errors_name_the_line(old, new, where, line):
    e = reject(LINED.replace(old, new))
    assert (e.where, e.line) == (where, line)
    assert str(e).startswith(f"test.toml: line {line}: {where}: ")


def test_line_of_a_key_in_an_inline_table_is_its_array():
    e = reject(V4 + 'real = [{ address = "198.18.0.11" },\n        { address = "198.18.0.11" }]\n')
    assert (e.where, e.line) == ("service[0].real[1].address", 5)


def test_utf8_bom_is_accepted(tmp_path):
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf" + V4.encode())
    assert xread.load(path).services[0].port == 80
    e = reject("\ufeff" + V4 + "port2 = 1\n")
    assert e.line == 5


def test_nesting_too_deep_is_a_config_error():
    e = reject("a = " + "[" * 10000 + "]" * 10000 + "\n")
    assert "nested too deeply" in e.message


# --- reals that cannot work (xlb/config/realcheck.py) ------------------------------------------------------------------

def _with_real(address):
    """A service of the address's family with a good real, then a real at ``address`` (service[0].real[1])."""
    svc, good = (V4, "198.18.1.2") if ipaddress.ip_address(address).version == 4 else (V6, "2001:db8::2")
    return svc + f'[[service.real]]\naddress = "{good}"\n[[service.real]]\naddress = "{address}"\n'


@pytest.mark.parametrize("address, fragment", [
    ("0.0.0.0", 'is in 0.0.0.0/8 ("this network")'),
    ("0.1.2.3", 'is in 0.0.0.0/8 ("this network")'),
    ("255.255.255.255", "is the broadcast address"),
    ("127.0.0.1", "is a loopback address: xlb forwards out of the interface and cannot deliver to the balancer"),
    ("127.1.2.3", "is a loopback address"),
    ("224.0.0.5", "is a multicast address"),
    ("239.255.255.250", "is a multicast address"),
    ("::", "is the unspecified address"),
    ("::1", "is a loopback address"),
    ("ff02::1", "is a multicast address"),
    ("fe80::1", "is link-local (IPVS refuses it too"),
    ("::ffff:198.18.1.3", "is an IPv4-mapped address"),
    ("198.51.100.10", "is the VIP of service[0] (tcp/198.51.100.10:80): a real must be another host"),
])
def test_reals_that_cannot_work_are_refused(address, fragment):
    err = reject(_with_real(address))
    assert err.where == "service[0].real[1].address"
    assert err.message.startswith(f"real {ipaddress.ip_address(address)} ")
    assert fragment in err.message


def test_a_real_that_is_another_services_vip_or_a_single_address_mark_dst():
    other = V6.replace('"udp"', '"tcp"') + '[[service.real]]\naddress = "2001:db8::1"\n'
    err = reject(V6 + '[[service.real]]\naddress = "2001:db8::2"\n' + other)
    assert err.where == "service[1].real[0].address"
    assert err.message.startswith("real 2001:db8::1 is the VIP of service[0] (udp/[2001:db8::1]:53)")
    err = reject(V4.replace("port = 80", "port = 443") + '[[service.real]]\naddress = "198.18.1.2"\n'
                 + V4.replace("198.51.100.10", "198.51.100.11") + '[[service.real]]\naddress = "198.51.100.10"\n')
    assert err.where == "service[1].real[0].address" and "is the VIP of service[0] (tcp/198.51.100.10:443)" \
        in err.message
    marked = '[[mark]]\nmark = 1\ndst = "198.51.100.20/32"\n[[service]]\nfwmark = 1\n'
    err = reject(marked + '[[service.real]]\naddress = "198.51.100.20"\n')
    assert (err.where, "is the dst of mark[0] (mark 1)" in err.message) == ("service[0].real[0].address", True)


@pytest.mark.parametrize("address", ["169.254.1.2", "198.51.100.11", "240.0.0.1"])
def test_reals_ipvs_takes_stay_allowed(address):
    """IPv4 link-local and class E are unicast to IPVS; an address inside a wider mark prefix is not a VIP."""
    text = ('[[mark]]\nmark = 1\ndst = "198.51.100.0/24"\n[[service]]\nfwmark = 1\n'
            f'[[service.real]]\naddress = "{address}"\n')
    assert str(xread.parse(text).services[0].reals[0].address) == address


def test_check_local_names_the_real_and_the_interface():
    from xlb.config import realcheck
    cfg = xread.parse(SVC_REAL, "x.toml")
    local = {ipaddress.ip_address("198.18.1.2"): "address of eth0"}
    with pytest.raises(ConfigError) as info:
        realcheck.check_local(cfg, local, "eth0")
    assert str(info.value) == ("x.toml: service[0].real[0].address: real 198.18.1.2 is the address of eth0 on this "
                               "balancer (xlb runs on eth0): xlb forwards out of the interface and cannot deliver "
                               "to the balancer itself (IPVS can); give a real server's address")
    realcheck.check_local(cfg, {ipaddress.ip_address("198.18.1.3"): "address of eth0"}, "eth0")


def test_icmp_and_ops_read_and_written_back():
    """[icmp] echo_reply (default on) and a service's ops survive dump and read."""
    from xlb.config import dump
    assert xread.parse("").icmp.echo_reply is True
    cfg = xread.parse("[icmp]\necho_reply = false\n" + V6 + "ops = true\n" + '[[service]]\nfwmark = 2\nops = true\n')
    assert cfg.icmp.echo_reply is False and [s.ops for s in cfg.services] == [True, True]
    again = xread.parse(dump.dumps(dump.to_tree(cfg)))
    assert again.icmp == cfg.icmp and [s.ops for s in again.services] == [True, True]
    assert xread.parse(V6).services[0].ops is False


def test_tunnel_service_reads_and_dumps_back():
    """method = "tun": its keys, reals of either family (4in6, 6in4), and dump writes what read takes back."""
    from xlb.config import dump as xdump
    text = (V4 + 'method = "tun"\ntunnel_type = "gue"\ntunnel_gue_header = false\n'
            'tunnel_source = ["198.18.5.0/24", "2001:db8:5::1"]\n'
            '  [[service.real]]\n  address = "2001:db8::11"\n  [[service.real]]\n  address = "198.18.0.11"\n')
    svc = xread.parse(text).services[0]
    t = svc.tunnel
    assert (t.type, t.port, t.csum, t.gue_header) == ("gue", 6080, "nocsum", False)
    assert t.source_for(4) == ipaddress.ip_network("198.18.5.0/24")
    assert t.source_for(6) == ipaddress.ip_network("2001:db8:5::1/128")
    assert xread.parse(xdump.dumps(xdump.to_tree(xread.parse(text)))).services[0] == svc
    with pytest.raises(ConfigError, match=r'only method "tun" carries'):
        xread.parse(V4 + '  [[service.real]]\n  address = "2001:db8::11"\n')
