"""Prometheus metrics (xlb/observe/metrics.py): exact counter values after known traffic, through BPF_PROG_TEST_RUN and through
a live `xlb run --metrics` in a DR lab; every metric the Grafana dashboard queries exists in a live scrape."""
import ctypes as ct
import gzip
import json
import re
import signal
import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import needs_root
from harness import BENCH_CONFIG, REALS_TOML, cli_output, DrLab, tcp_exchange, wait_for
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from xlb.observe import metrics
from xlb.lab.demo import CLIENTS4, REALS4, VIP4
from xlb.errors import XlbError
from xlb.lab.process import run_in_netns

REPO = Path(__file__).resolve().parent.parent


def samples(text):
    """{(sample name, frozenset(labels)): value} of an exposition text."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(scrape, name, **labels):
    return scrape[(name, frozenset(labels.items()))]


def scrape_dp(dp, daemon_state=None):
    """One scrape two ways, the served exposition and prometheus_client's generate_latest: the same samples."""
    collector = metrics.XlbCollector(dp, daemon_state)
    reg = CollectorRegistry()
    reg.register(collector)
    fast = samples(collector.exposition().decode())
    slow = samples(generate_latest(reg).decode())
    for m in (fast, slow):
        del m[("xlb_scrape_duration_seconds", frozenset())]
    assert fast == slow
    return fast


# -- pure ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text,want", [
    ("9842", ("127.0.0.1", 9842)),
    ("0.0.0.0:9100", ("0.0.0.0", 9100)),
    ("[::1]:9100", ("::1", 9100)),
    ("198.18.0.2:80", ("198.18.0.2", 80)),
])
def test_parse_listen(text, want):
    assert metrics.parse_listen(text) == want


@pytest.mark.parametrize("text,msg", [
    ("0", "port must be 1..65535"), ("localhost:9100", "is not an IP address"), ("[::1]9100", "[IPv6]:PORT"),
    ("1.2.3.4:99999", "port must be 1..65535"),
])
def test_parse_listen_rejects(text, msg):
    with pytest.raises(XlbError, match=re.escape(msg)):
        metrics.parse_listen(text)


def test_cli_default_port_is_the_modules():
    from xlb import cli
    assert cli.DEFAULT_METRICS_PORT == metrics.DEFAULT_PORT
    args = cli.build_parser().parse_args(["run", "-i", "eth0", "-c", "x.toml", "--metrics"])
    assert args.metrics == f"127.0.0.1:{metrics.DEFAULT_PORT}"
    args = cli.build_parser().parse_args(["run", "-i", "eth0", "-c", "x.toml"])
    assert args.metrics is None


def test_register_does_not_read_maps():
    """describe() names the families, so registering needs no data plane at all."""
    collector = metrics.XlbCollector(dp=None)   # any map read would fail on None
    CollectorRegistry().register(collector)
    suffix = {"counter": "_total", "info": "_info"}
    names = {fam.name + suffix.get(fam.type, "") for fam in collector.describe()}
    assert {"xlb_service_packets_total", "xlb_real_active_connections", "xlb_verdict_packets_total",
            "xlb_config_reloads_total", "xlb_build_info"} <= names


@needs_root
def test_exact_counters_after_known_packets(bench):
    dp = bench.reset(BENCH_CONFIG)
    svc80 = "tcp/198.51.100.10:80"
    # 4 connections to :80 (rr over two reals with weight): SYN (54 B) then an ACK with 10 bytes (64 B) each.
    for i in range(4):
        assert bench.run(tcp_exchange("198.51.100.10", 41000 + i))[0] == "XDP_TX"
        assert bench.run(tcp_exchange("198.51.100.10", 41000 + i, flags="A", payload=b"0123456789"))[0] == "XDP_TX"
    # 3 connections through mark 5 (80 and 443 of .20), two clients of one /24 and one of another.
    for src, port in (("203.0.113.7", 80), ("203.0.113.8", 443), ("192.0.2.9", 443)):
        assert bench.run(tcp_exchange("198.51.100.20", 42000, dport=port, src=src))[0] == "XDP_TX"
    # One malformed packet: TCP data offset 4.
    bad = Ether(bytes(tcp_exchange("198.51.100.10", 43000)))
    bad[TCP].dataofs = 4
    assert bench.run(bad)[0] == "XDP_DROP"

    m = scrape_dp(dp)
    assert value(m, "xlb_service_connections_total", service=svc80) == 4
    assert value(m, "xlb_service_packets_total", service=svc80) == 8
    assert value(m, "xlb_service_bytes_total", service=svc80) == 4 * 54 + 4 * 64
    by_real = {r: value(m, "xlb_real_connections_total", service=svc80, real=r)
               for r in ("198.18.0.11", "198.18.0.12", "198.18.0.13")}
    assert by_real == {"198.18.0.11": 2, "198.18.0.12": 2, "198.18.0.13": 0}
    assert value(m, "xlb_real_packets_total", service=svc80, real="198.18.0.11") == 4
    assert value(m, "xlb_real_bytes_total", service=svc80, real="198.18.0.12") == 2 * 54 + 2 * 64
    assert value(m, "xlb_service_connections_total", service="fwm/5") == 3
    assert value(m, "xlb_mark_rule_hits_total", mark="5", proto="tcp", dst="198.51.100.20/32", ports="80,443") == 3
    assert value(m, "xlb_service_persistence_templates", service="fwm/5") == 2   # 203.0.113.0/24, 192.0.2.0/24
    assert value(m, "xlb_service_persistence_templates", service=svc80) == 0
    # The ACKs made the :80 connections established; the fwm ones are still at SYN.
    assert value(m, "xlb_real_active_connections", service=svc80, real="198.18.0.11") == 2
    assert value(m, "xlb_real_inactive_connections", service=svc80, real="198.18.0.11") == 0
    assert value(m, "xlb_real_inactive_connections", service="fwm/5", real="198.18.0.13") == 3
    assert value(m, "xlb_table_entries", table="connections") == 7
    assert value(m, "xlb_table_entries", table="templates") == 2
    assert value(m, "xlb_table_capacity", table="connections") == dp.m["conns"].max_entries
    assert value(m, "xlb_verdict_packets_total", verdict="fwd", reason="fwd_tx") == 11
    assert value(m, "xlb_verdict_packets_total", verdict="drop", reason="drop_bad_tcp") == 1
    assert value(m, "xlb_verdict_bytes_total", verdict="drop", reason="drop_bad_tcp") == len(bytes(bad))
    assert value(m, "xlb_verdict_packets_total", verdict="pass", reason="pass_no_service") == 0
    assert value(m, "xlb_real_weight", service=svc80, real="198.18.0.13") == 0
    assert value(m, "xlb_real_state", service=svc80, real="198.18.0.13", state="quiescent") == 1
    assert value(m, "xlb_real_state", service=svc80, real="198.18.0.13", state="available") == 0
    assert value(m, "xlb_real_state", service=svc80, real="198.18.0.11", state="available") == 1
    # Every reason is exported, counted or not.
    reasons = {dict(labels)["reason"] for name, labels in m if name == "xlb_verdict_packets_total"}
    from xlb.dataplane.structs import REASONS
    assert reasons == set(REASONS.values())


THRESHOLD_CONFIG = ('[timeouts]\nsyn = 5\n[[service]]\nvip = "198.51.100.10"\nport = 80\nproto = "tcp"\nscheduler = "rr"\n'
                    '[[service.real]]\naddress = "198.18.0.11"\nuthreshold = 2\nlthreshold = 1\n'
                    '[[service.real]]\naddress = "198.18.0.12"\nweight = 0\n')


@needs_root
def test_real_state_overloaded(bench):
    """xlb_real_state says "overloaded" for a real flagged RC_F_OVERLOAD in real_conns: set by the data plane when
    the real's connections reach uthreshold, cleared by the sweep's reconcile once they fall below lthreshold."""
    from xlb.dataplane.mapkeys import now_ns, NS
    from xlb.dataplane.structs import RC_F_OVERLOAD
    dp = bench.reset(THRESHOLD_CONFIG)
    svc = "tcp/198.51.100.10:80"

    def states(m, real):
        return {s: value(m, "xlb_real_state", service=svc, real=real, state=s) for s in metrics.REAL_STATES}

    assert states(scrape_dp(dp), "198.18.0.11") == {"available": 1, "quiescent": 0, "overloaded": 0}
    for i in range(2):                                  # two SYNs: the second reaches uthreshold 2
        assert bench.run(tcp_exchange("198.51.100.10", 45000 + i))[0] == "XDP_TX"
    (rid,) = [r for (key, addr, _port), r in dp.real_ids.ids.items() if str(addr) == "198.18.0.11"]
    assert dp.m["real_conns"][ct.c_uint32(rid)].flags & RC_F_OVERLOAD
    m = scrape_dp(dp)
    assert states(m, "198.18.0.11") == {"available": 0, "quiescent": 0, "overloaded": 1}
    assert states(m, "198.18.0.12") == {"available": 0, "quiescent": 1, "overloaded": 0}
    dp.sweep()                                          # 2 connections: still at uthreshold
    assert states(scrape_dp(dp), "198.18.0.11")["overloaded"] == 1
    assert now_ns() > 10 * NS
    conns = dp.m["conns"]
    for k, v in list(conns.items()):                    # 10 s pass: the SYN-state entries (5 s) expire
        v.seen_ns -= 10 * NS
        conns[k] = v
    dp.sweep()
    assert states(scrape_dp(dp), "198.18.0.11") == {"available": 1, "quiescent": 0, "overloaded": 0}


@needs_root
def test_exposition_sums_past_64_bits_exactly_and_follows_reloads(bench):
    """Per-CPU sums past 2**64 are written exactly (not as floats); a reload's services and reals replace the
    old ones in the next scrape (the per-config formats are rebuilt)."""
    one = '[[service]]\nvip = "198.51.100.10"\nport = 80\nproto = "tcp"\n  [[service.real]]\n  address = "%s"\n'
    dp = bench.reset(one % "198.18.0.11")
    collector = metrics.XlbCollector(dp)
    collector.exposition()
    (st,) = dp.services.values()
    (rid,) = dp.real_ids.ids.values()
    for name, idx in (("svc_stats", st.id), ("real_stats", rid)):
        table = dp.m[name]
        leaf = table.Leaf()
        for i in range(len(leaf)):
            leaf[i].packets, leaf[i].bytes, leaf[i].conns = 2**64 - 1, 10 + i, 1
        table[ct.c_uint32(idx)] = leaf
    ncpu = len(dp.m["svc_stats"].Leaf())
    text = collector.exposition().decode()
    svc = 'service="tcp/198.51.100.10:80"'
    assert f'xlb_service_packets_total{{{svc}}} {ncpu * (2**64 - 1)}\n' in text
    assert f'xlb_real_packets_total{{real="198.18.0.11",{svc}}} {ncpu * (2**64 - 1)}\n' in text
    assert f'xlb_real_connections_total{{real="198.18.0.11",{svc}}} {ncpu}\n' in text
    dp.apply(bench.config(one % "198.18.0.12"))
    text = collector.exposition().decode()
    assert f'xlb_real_packets_total{{real="198.18.0.12",{svc}}} 0\n' in text and "198.18.0.11" not in text


@needs_root
def test_scrape_reads_the_maps_each_time(bench):
    """No copy in Python: a packet between two scrapes shows in the second."""
    dp = bench.reset(BENCH_CONFIG)
    reg = CollectorRegistry()
    reg.register(metrics.XlbCollector(dp))
    key = ("xlb_service_packets_total", frozenset({"service": "tcp/198.51.100.10:80"}.items()))
    assert samples(generate_latest(reg).decode())[key] == 0
    bench.run(tcp_exchange("198.51.100.10", 44000))
    assert samples(generate_latest(reg).decode())[key] == 1


@needs_root
def test_collector_takes_the_daemon_lock(bench):
    """A scrape waits while the daemon holds its lock (a reload or sweep in progress)."""
    import threading

    class State:
        lock = threading.RLock()
        reloads = {"success": 2, "rejected": 1}
        last_reload_success = 1700000000.0

    dp = bench.reset(BENCH_CONFIG)
    reg = CollectorRegistry()
    reg.register(metrics.XlbCollector(dp, State))
    done = threading.Event()
    result = {}

    def scrape():
        result["m"] = samples(generate_latest(reg).decode())
        done.set()

    with State.lock:
        t = threading.Thread(target=scrape)
        t.start()
        assert not done.wait(0.3), "the scrape read the maps while the daemon held its lock"
    t.join(10)
    m = result["m"]
    assert value(m, "xlb_config_reloads_total", result="success") == 2
    assert value(m, "xlb_config_reloads_total", result="rejected") == 1
    assert value(m, "xlb_config_reloads_total", result="failed") == 0
    assert value(m, "xlb_config_last_reload_success_timestamp_seconds") == 1700000000.0


# -- a live daemon -------------------------------------------------------------------------------------------------
METRICS_PORT = 9842
LAB_CONFIG = f"""
[[mark]]
mark = 7
proto = "tcp"
dst = "{VIP4}/32"
ports = [443]
""" + "".join(f"\n[[service]]\n{ident}\nscheduler = \"rr\"\n{REALS_TOML}" for ident in (
    "fwmark = 7\npersistence_timeout = 300", f'vip = "{VIP4}"\nport = 80\nproto = "tcp"',
    f'vip = "{VIP4}"\nport = 53\nproto = "udp"'))

UDP_PAYLOAD = b"x" * 100
UDP_FRAME = 14 + 20 + 8 + len(UDP_PAYLOAD)


def fetch(url, headers=None):
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            body = resp.read()
            if resp.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            return resp.status, resp.headers.get("Content-Type"), body.decode()
    except urllib.error.HTTPError as exc:
        return exc.code, None, ""


def send_udp(src, dst, port, payload, count):
    """count datagrams, each from its own source port (each a new connection)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            socks.append(s)
            s.bind((src, 0))
            s.sendto(payload, (dst, port))
    finally:
        for s in socks:
            s.close()


def send_frame(ifname, frame):
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
        s.bind((ifname, 0))
        s.send(frame)


@pytest.fixture(scope="module")
def lab():
    import os
    if os.geteuid() != 0:
        pytest.skip("needs root")
    with DrLab(prefix="xom") as lab:
        lab.start_xlb(LAB_CONFIG, extra_args=("--metrics", str(METRICS_PORT)))
        lab.scrape = lambda: samples(run_in_netns(lab.lb, fetch, f"http://127.0.0.1:{METRICS_PORT}/metrics")[2])
        yield lab


TCP80, UDP53 = f"tcp/{VIP4}:80", f"udp/{VIP4}:53"


@needs_root
def test_live_scrape_exact_counts(lab):
    for c in CLIENTS4:                                   # 6 TCP connections to :80
        assert lab.ask(c, VIP4, 80) in {"rs1", "rs2", "rs3"}
    first = lab.ask(CLIENTS4[0], VIP4, 443)              # 2 through mark 7, one client: one template
    assert lab.ask(CLIENTS4[0], VIP4, 443) == first
    run_in_netns(lab.cl, send_udp, CLIENTS4[1], VIP4, 53, UDP_PAYLOAD, 5)
    bad = Ether(dst="ff:ff:ff:ff:ff:ff") / IP(src=CLIENTS4[2], dst=VIP4) / TCP(sport=1234, dport=80, dataofs=4)
    run_in_netns(lab.cl, send_frame, "eth0", bytes(bad))

    m = wait_for(lambda: (lambda m: m if value(m, "xlb_verdict_packets_total", verdict="drop",
                                               reason="drop_bad_tcp") == 1
                          and sum(value(m, "xlb_real_inactive_connections", service=s, real=r)
                                  for s in (TCP80, UDP53, "fwm/7") for r in REALS4) == 13 else None)(lab.scrape()),
                 what="the traffic in the counters")
    assert value(m, "xlb_service_connections_total", service=TCP80) == 6
    assert sum(value(m, "xlb_real_connections_total", service=TCP80, real=r) for r in REALS4) == 6
    assert value(m, "xlb_service_connections_total", service="fwm/7") == 2
    assert value(m, "xlb_mark_rule_hits_total", mark="7", proto="tcp", dst=f"{VIP4}/32", ports="443") == 2
    assert value(m, "xlb_service_persistence_templates", service="fwm/7") == 1
    assert value(m, "xlb_service_packets_total", service=UDP53) == 5
    assert value(m, "xlb_service_bytes_total", service=UDP53) == 5 * UDP_FRAME
    assert value(m, "xlb_service_connections_total", service=UDP53) == 5
    assert sum(value(m, "xlb_real_bytes_total", service=UDP53, real=r) for r in REALS4) == 5 * UDP_FRAME
    # Every TCP connection is closed (FIN seen) and UDP is never "active": 6 + 2 + 5 inactive, none active.
    assert sum(value(m, "xlb_real_active_connections", service=s, real=r)
               for s in (TCP80, UDP53, "fwm/7") for r in REALS4) == 0
    assert value(m, "xlb_table_entries", table="connections") == 13
    forwarded = sum(value(m, "xlb_service_packets_total", service=s) for s in (TCP80, UDP53, "fwm/7"))
    assert value(m, "xlb_verdict_packets_total", verdict="fwd", reason="fwd_tx") == forwarded
    assert value(m, "xlb_verdict_bytes_total", verdict="drop", reason="drop_bad_tcp") == len(bytes(bad))
    assert value(m, "xlb_build_info", version=__import__("xlb").__version__,
                 kernel=__import__("os").uname().release) == 1


@needs_root
def test_live_reload_counters(lab):
    before = lab.scrape()
    t0 = value(before, "xlb_config_last_reload_success_timestamp_seconds")
    ok0 = value(before, "xlb_config_reloads_total", result="success")
    rej0 = value(before, "xlb_config_reloads_total", result="rejected")
    lab.signal_xlb(signal.SIGHUP)
    m = wait_for(lambda: (lambda m: m if value(m, "xlb_config_reloads_total", result="success") == ok0 + 1
                          else None)(lab.scrape()), what="a successful reload counted")
    assert value(m, "xlb_config_last_reload_success_timestamp_seconds") > t0
    t1 = value(m, "xlb_config_last_reload_success_timestamp_seconds")
    lab.rewrite_config(LAB_CONFIG.replace("scheduler = \"rr\"", "scheduler = \"nope\"", 1))
    try:
        lab.signal_xlb(signal.SIGHUP)
        m = wait_for(lambda: (lambda m: m if value(m, "xlb_config_reloads_total", result="rejected") == rej0 + 1
                              else None)(lab.scrape()), what="a rejected reload counted")
        assert value(m, "xlb_config_last_reload_success_timestamp_seconds") == t1
        assert value(m, "xlb_config_reloads_total", result="success") == ok0 + 1
    finally:
        lab.rewrite_config(LAB_CONFIG)


@needs_root
def test_endpoint_http(lab):
    url = f"http://127.0.0.1:{METRICS_PORT}"
    status, ctype, body = run_in_netns(lab.lb, fetch, url + "/metrics", {"Accept-Encoding": "gzip"})
    assert (status, ctype) == (200, "text/plain; version=0.0.4; charset=utf-8")
    assert ("xlb_table_capacity", frozenset({("table", "connections")})) in samples(body)
    assert run_in_netns(lab.lb, fetch, url + "/nothing-here")[0] == 404
    # Bound to 127.0.0.1 only: the lab address does not answer.
    with pytest.raises(urllib.error.URLError, match="Connection refused"):
        run_in_netns(lab.lb, fetch, f"http://198.18.0.2:{METRICS_PORT}/metrics")


def dashboard_metrics():
    """Every xlb_* series name the Grafana dashboard's queries use."""
    dash = json.loads((REPO / "tools" / "grafana-xlb.json").read_text())
    exprs = []

    def walk(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k in ("expr", "query") and isinstance(v, str):
                    exprs.append(v)
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
    walk(dash)
    return {name for e in exprs for name in re.findall(r"\b(xlb_[a-z0-9_]+)", e)}


class _Fixed:
    """A collector stand-in: the endpoint only calls exposition()."""

    def exposition(self):
        return b"xlb_up 1\n"


def _head_and_get(port):
    import http.client
    endpoint = metrics.serve(f"127.0.0.1:{port}", _Fixed())
    try:
        out = []
        for method in ("HEAD", "GET"):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request(method, "/metrics")
            resp = conn.getresponse()
            out.append((resp.status, resp.getheader("Content-Type"), resp.getheader("Content-Length"), resp.read()))
            conn.close()
        return out
    finally:
        endpoint.close()


@needs_root
def test_head_metrics_answers_headers_without_a_body():
    """HEAD /metrics (uptime checkers, `curl -I`) gets GET's status and headers, and no body."""
    from xlb.lab.netns import Topology
    with Topology(prefix="xmh") as topo:
        head, get = run_in_netns(topo.netns("m"), _head_and_get, METRICS_PORT)
    assert get == (200, metrics.CONTENT_TYPE, "9", b"xlb_up 1\n")
    assert head == (200, metrics.CONTENT_TYPE, "9", b"")


def _run_captured(argv):
    """`xlb ARGV` in this (child) process: (exit code, stderr)."""
    import contextlib
    import io
    from xlb.cli import main
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, err.getvalue()


def test_a_bad_metrics_address_is_refused_before_anything_else(tmp_path):
    """`xlb run --metrics` with a bad ADDR:PORT says so at once: before the interface is even looked up (and so
    before the program's compile), not after. (A child process: a daemon that got further would install its
    signal handlers.)"""
    config = tmp_path / "xlb.toml"
    config.write_text("")
    argv = ["run", "--iface", "xlb-no-such0", "--config", str(config), "--metrics", "127.0.0.1:99999"]
    want = ("xlb: error: --metrics '127.0.0.1:99999': the port must be 1..65535 (e.g. --metrics "
            f"127.0.0.1:{metrics.DEFAULT_PORT})\n")
    assert run_in_netns(None, _run_captured, argv) == (1, want)


def test_dashboard_has_the_expected_panels():
    names = dashboard_metrics()
    assert len(names) >= 10, names
    dash = json.loads((REPO / "tools" / "grafana-xlb.json").read_text())
    titles = " ".join(p.get("title", "") for p in dash["panels"]).lower()
    for word in ("connections per second", "packets", "bytes", "active", "drops", "table", "reloads"):
        assert word in titles, word


@needs_root
def test_every_dashboard_metric_is_in_a_live_scrape(lab):
    names = {name for name, _ in lab.scrape()}
    missing = dashboard_metrics() - names
    assert not missing, f"the dashboard queries metrics a live xlb does not export: {sorted(missing)}"


def test_prometheus_example_scrapes_the_default_port():
    text = (REPO / "tools" / "prometheus.yml").read_text()
    assert f":{metrics.DEFAULT_PORT}" in text
    assert "job_name" in text and "xlb" in text


@needs_root
def test_top_once_against_the_daemon(lab):
    out = run_in_netns(lab.lb, cli_output, ["top", "--once", "--interval", "0.5", "--socket", lab.socket_path])
    assert re.match(r"xlb top - every \d+\.\ds - 3 services, 9 reals - ", out), out
    for name in (TCP80, UDP53, "fwm/7") + tuple(REALS4):
        assert name in out, name


