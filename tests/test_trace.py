"""`xlb trace` (xlb/observe/trace.py, bpf/trace.h): the trace build, relinked to the live maps, answers exactly what the real
program then does with the same packet — service, real, reason — and leaves every map byte-identical."""
import ctypes as ct
import ipaddress
import json

import pytest
from conftest import needs_root
from harness import in_netns, real_of, tcp4, tcp6, udp4
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from xlb.dataplane import structs as S
from xlb.observe import trace as T
from xlb.dataplane.bpfsys import lookup_batch
from xlb.errors import KernelError, XlbError

CONFIG = """
[[mark]]
mark = 9
proto = "tcp"
dst = "198.51.100.30/32"
ports = [80, 443]

[[service]]
fwmark = 9
scheduler = "rr"
persistence_timeout = 300
persistence_netmask = "255.255.255.0"
  [[service.real]]
  address = "198.18.0.12"
  [[service.real]]
  address = "198.18.0.13"

[[service]]
vip = "198.51.100.10"
port = 80
proto = "tcp"
scheduler = "rr"
  [[service.real]]
  address = "198.18.0.11"
  [[service.real]]
  address = "198.18.0.12"
  [[service.real]]
  address = "198.18.0.13"

[[service]]
vip = "198.51.100.10"
port = 53
proto = "udp"
scheduler = "sh"
  [[service.real]]
  address = "198.18.0.11"
  [[service.real]]
  address = "198.18.0.12"

[[service]]
vip = "198.51.100.11"
port = 80
proto = "tcp"
scheduler = "rr"
  [[service.real]]
  address = "198.18.0.11"
  weight = 0

[[service]]
vip = "2001:db8:100::10"
port = 80
proto = "tcp"
scheduler = "mh"
  [[service.real]]
  address = "2001:db8::11"
  [[service.real]]
  address = "2001:db8::12"
"""


# -- pure ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text,need_port,want", [
    ("203.0.113.7", False, ("203.0.113.7", None)),
    ("203.0.113.7:40000", False, ("203.0.113.7", 40000)),
    ("[2001:db8::7]:443", True, ("2001:db8::7", 443)),
    ("2001:db8::7", False, ("2001:db8::7", None)),
    ("[2001:db8::7]", False, ("2001:db8::7", None)),
])
def test_parse_endpoint(text, need_port, want):
    addr, port = T.parse_endpoint(text, "source", need_port)
    assert (str(addr), port) == want


@pytest.mark.parametrize("text,need_port,msg", [
    ("203.0.113.7", True, "a port is required"),
    ("example.com:80", True, "not an IP address"),
    ("203.0.113.7:0", True, "port must be 1..65535"),
    ("203.0.113.7:http", True, "port must be 1..65535"),
    ("[2001:db8::7]443", True, "expected [IPv6]:PORT"),
])
def test_parse_endpoint_rejects(text, need_port, msg):
    with pytest.raises(XlbError, match=msg.replace("[", r"\[").replace("]", r"\]")):
        T.parse_endpoint(text, "destination", need_port)


@pytest.mark.parametrize("src,dst,proto", [("203.0.113.7", "198.51.100.10", "tcp"),
                                           ("203.0.113.7", "198.51.100.10", "udp"),
                                           ("2001:db8::7", "2001:db8:100::10", "tcp"),
                                           ("2001:db8::7", "2001:db8:100::10", "udp")])
def test_built_packet_is_valid(src, dst, proto):
    """The synthesized frame is what a client sends: checksums right (scapy recomputes and compares)."""
    frame = T.build_packet(src, 40000, dst, 80, proto)
    pkt = Ether(frame)
    ip = pkt[IP] if IP in pkt else pkt[IPv6]
    assert (ip.src, ip.dst) == (src, dst)
    l4 = pkt[TCP] if proto == "tcp" else pkt[UDP]
    assert (l4.sport, l4.dport) == (40000, 80)
    if proto == "tcp":
        assert l4.flags == "S"
    fresh = Ether(frame)
    for layer in (IP, TCP, UDP):
        if layer in fresh:
            del fresh[layer].chksum
    assert bytes(Ether(bytes(fresh))) == frame


def test_built_packet_rejects_mixed_families():
    with pytest.raises(XlbError, match="different IP versions"):
        T.build_packet("203.0.113.7", 1, "2001:db8::1", 80)


# -- against the loaded program -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tracer(bench):
    t = T.Tracer(bench.prog, None, bench.ifindex)
    yield t
    t.close()


def map_bytes(prog):
    """Every map except trace_out as bytes: arrays and hashes read in batches, LPM tries entry by entry."""
    out = {}
    for name in S.MAP_TYPES:
        if name == "trace_out":
            continue
        table = prog[name]
        ksz, vsz = ct.sizeof(table.Key), ct.sizeof(table.Leaf)
        try:
            keys, values, n = lookup_batch(table.map_fd, ksz, vsz, table.max_entries)
            rows = sorted((keys[i * ksz:(i + 1) * ksz], values[i * vsz:(i + 1) * vsz]) for i in range(n))
        except KernelError:  # LPM tries have no batch operations
            rows = sorted((bytes(k), bytes(v)) for k, v in table.items())
        out[name] = rows
    return out


def trace_then_run(bench, tracer, pkt):
    """Trace pkt (maps must not change), then run it for real: (answer, (action, real, reason, service))."""
    tracer.dp = bench.dp
    before = map_bytes(bench.prog)
    with in_netns(bench.ns):
        rec, res = tracer.run(bytes(pkt))
    answer = T.explain(rec, res, bench.dp)
    after = map_bytes(bench.prog)
    changed = [name for name in before if before[name] != after[name]]
    assert not changed, f"trace changed live maps: {changed}"
    verdicts0 = bench.verdicts()
    svc0 = {st.svc.name: bench.dp.counters("svc_stats", st.id).packets for st in bench.dp.services.values()}
    action, out = bench.run(pkt)
    reason = next(k for k, v in bench.verdicts().items() if v != verdicts0.get(k, 0))
    svc = [name for name, st in ((st.svc.name, st) for st in bench.dp.services.values())
           if bench.dp.counters("svc_stats", st.id).packets != svc0[name]]
    real = real_of(out) if action in ("XDP_TX", "XDP_REDIRECT") else None
    return answer, (action, real, reason, svc[0] if svc else None)


def assert_agrees(answer, actual):
    action, real, reason, svc = actual
    assert (answer["action"], answer["real"], answer["verdict"]) == (action, real, reason), answer
    if svc is not None:
        assert answer["service"] == svc, answer


@needs_root
def test_new_connection_rr_agrees_and_keeps_rr_position(bench, tracer):
    bench.reset(CONFIG)
    pkt = tcp4(sport=40001)
    # Traced three times: rr's position is live state the trace must not advance.
    for _ in range(3):
        tracer.dp = bench.dp
        with in_netns(bench.ns):
            answer = T.explain(*tracer.run(bytes(pkt)), bench.dp)
        assert answer["why"] == "scheduler" and answer["scheduler"]["slot"] == 0
    answer, actual = trace_then_run(bench, tracer, pkt)
    assert_agrees(answer, actual)
    assert answer["service"] == "tcp/198.51.100.10:80"
    assert answer["scheduler"] == {"name": "rr", "slot": 0, "slots": 3}
    assert answer["connection"] is None and answer["template"] is None
    # The next new connection: the next slot, for trace and program alike.
    answer, actual = trace_then_run(bench, tracer, tcp4(sport=40002))
    assert_agrees(answer, actual)
    assert answer["scheduler"]["slot"] == 1


@needs_root
def test_established_connection_agrees(bench, tracer):
    bench.reset(CONFIG)
    bench.run(tcp4(sport=40003))
    bench.run(tcp4(sport=40004))
    answer, actual = trace_then_run(bench, tracer, tcp4(sport=40004, flags="A"))
    assert_agrees(answer, actual)
    assert answer["why"] == "connection"
    assert answer["connection"]["followed"] and answer["connection"]["state"] == "syn"
    assert 59 <= answer["connection"]["expires_in"] <= 60
    assert answer["service"] == "tcp/198.51.100.10:80"
    # The program moved it to established; the trace now sees that.
    answer, actual = trace_then_run(bench, tracer, tcp4(sport=40004, flags="A"))
    assert answer["connection"]["state"] == "est"
    assert 899 <= answer["connection"]["expires_in"] <= 900


@needs_root
def test_persistence_template_agrees(bench, tracer):
    bench.reset(CONFIG)
    first = bench.run(tcp4(src="203.0.113.7", dst="198.51.100.30", sport=40005))
    answer, actual = trace_then_run(bench, tracer, tcp4(src="203.0.113.99", dst="198.51.100.30", sport=40006,
                                                        dport=443))
    assert_agrees(answer, actual)
    assert answer["why"] == "persistence" and answer["real"] == real_of(first[1])
    assert answer["mark_rule"] == {"rule": "mark[0]", "mark": 9}
    assert answer["service"] == "fwm/9"
    assert answer["template"]["used"] and 299 <= answer["template"]["expires_in"] <= 300


@needs_root
def test_removed_real_is_rescheduled(bench, tracer):
    dp = bench.reset(CONFIG)
    bench.run(tcp4(sport=40007))                          # rr slot 0: 198.18.0.11
    dp.apply(bench.config(CONFIG.replace('  [[service.real]]\n  address = "198.18.0.11"\n  [[service.real]]\n'
                                         '  address = "198.18.0.12"\n  [[service.real]]\n  address = "198.18.0.13"',
                                         '  [[service.real]]\n  address = "198.18.0.12"')))
    answer, actual = trace_then_run(bench, tracer, tcp4(sport=40007, flags="A"))
    assert_agrees(answer, actual)
    assert answer["connection"]["followed"] is False
    assert answer["connection"]["not_followed"].startswith("its real was removed")
    assert answer["why"] == "scheduler" and answer["real"] == "198.18.0.12"


@needs_root
@pytest.mark.parametrize("pkt,want", [
    (tcp4(dst="198.51.100.99"), ("XDP_PASS", None, "pass_no_service", None)),
    (tcp4(dst="198.51.100.11"), ("XDP_DROP", None, "drop_no_real", "tcp/198.51.100.11:80")),
    (tcp4(flags="R"), ("XDP_DROP", None, "drop_rst_no_conn", None)),
    (udp4(src="203.0.113.50"), ("XDP_TX", "sh", "fwd_tx", "udp/198.51.100.10:53")),
    (tcp6(), ("XDP_TX", "mh", "fwd_tx", "tcp/[2001:db8:100::10]:80")),
], ids=["no-service", "no-real", "rst", "udp-sh", "ipv6-mh"])
def test_other_verdicts_agree(bench, tracer, pkt, want):
    bench.reset(CONFIG)
    answer, actual = trace_then_run(bench, tracer, pkt)
    assert_agrees(answer, actual)
    assert answer["verdict"] == want[2] and answer["action"] == want[0]
    if want[3]:
        assert answer["service"] == want[3]
    if want[1]:
        assert answer["scheduler"]["name"] == want[1] and answer["why"] == "scheduler"


@needs_root
def test_trace_api_picks_a_free_source_port(bench, tracer):
    dp = bench.reset(CONFIG)
    tracer.dp = dp
    bench.run(tcp4(sport=T.FIRST_SPORT))                  # the first candidate port is taken
    with in_netns(bench.ns):
        answer = tracer.trace(ipaddress.ip_address("203.0.113.7"), ipaddress.ip_address("198.51.100.10"), 80)
    assert answer["packet"] == f"tcp 203.0.113.7:{T.FIRST_SPORT + 1} -> 198.51.100.10:80 (SYN)"
    assert answer["connection"] is None and answer["why"] == "scheduler"
    text = T.render(answer)
    assert "service:    tcp/198.51.100.10:80" in text and "(by the scheduler)" in text


# -- through the daemon -----------------------------------------------------------------------------------------------
@needs_root
def test_xlb_trace_cli_against_a_running_daemon():
    from harness import REALS_TOML, cli_output
    from xlb.lab.demo import CLIENTS4, REALS4, VIP4
    from harness import DrLab
    from xlb.lab.process import run_in_netns
    name_of = {r: f"rs{i + 1}" for i, r in enumerate(REALS4)}
    cfg = (f'[[service]]\nvip = "{VIP4}"\nport = 80\nproto = "tcp"\nscheduler = "sh"\n{REALS_TOML}'
           f'[[service]]\nvip = "{VIP4}"\nport = 443\nproto = "tcp"\nscheduler = "rr"\n'
           f'persistence_timeout = 300\n{REALS_TOML}')
    with DrLab(prefix="xot") as lab:
        lab.start_xlb(cfg)
        sock = lab.socket_path
        # sh: the trace's real is where the connection then goes.
        for c in CLIENTS4[:3]:
            res = json.loads(run_in_netns(lab.lb, cli_output, ["trace", c, f"{VIP4}:80", "--json", "--socket", sock]))
            assert res["why"] == "scheduler" and res["service"] == f"tcp/{VIP4}:80"
            assert lab.ask(c, VIP4, 80) == name_of[res["real"]]
        # A persistent service: after one connection, the trace names the template and its real.
        served = lab.ask(CLIENTS4[0], VIP4, 443)
        text = run_in_netns(lab.lb, cli_output, ["trace", CLIENTS4[0], f"{VIP4}:443", "--socket", sock])
        real = next(r for r, n in name_of.items() if n == served)
        assert f"real:       {real} (by the persistence template)" in text
        assert "template:   -> " + real in text
        # Bad input: a clear error, exit status 1.
        rc = run_in_netns(lab.lb, _cli_rc, ["trace", CLIENTS4[0], VIP4, "--socket", sock])
        assert rc == 1


def _cli_rc(argv):
    import contextlib
    import io
    from xlb.cli import main
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(argv)
    assert "a port is required" in err.getvalue(), err.getvalue()
    return rc

