"""Prometheus metrics: a collector that reads the BPF maps at scrape time (house style 10: no copied counters).

API (the daemon uses it; bench/ times a scrape with it):

    from prometheus_client import CollectorRegistry, generate_latest
    from xlb.observe.metrics import XlbCollector
    collector = XlbCollector(dp, daemon_state)          # dp: xlb.dataplane.apply.DataPlane
    text = collector.exposition()                       # one scrape, as /metrics serves it (the fast path)
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry)                    # the same samples through prometheus_client

``daemon_state`` is the running Daemon (or None outside one): the collector takes its ``lock`` while it reads the
maps (commands, sweeps and reloads run under it) and exports its reload counters (``reloads``: {result: count},
``last_reload_success``: Unix time). ``serve("127.0.0.1:9842", collector)`` serves ``/metrics`` on a thread and
returns a handle whose ``close()`` stops it. ``exposition()`` exists because prometheus_client's generate_latest
spends ~10 us formatting each sample: at 1000 services x 10 reals (~84,000 samples) that alone is about a second.
It writes the families of a sample per service or per real from numpy columns through one format string per
family, built when a config is applied (label text rendered once, as bytes): ~20 ms of CPU at that size.

Cost: per-CPU counters are read with one BPF_MAP_LOOKUP_BATCH per map over the ids in use (DataPlane's reader,
xlb/dataplane/reader.py, which `xlb top` shares); the conns and persist tables are walked in batches (table fill,
templates per service); active, inactive and overloaded per real come from DataPlane.real_loads(), one batched
read. A scrape costs O(services + reals + connections + templates).

Families (labels: ``service`` as operators name it — ``tcp/198.51.100.10:80``, ``fwm/80``; ``real`` its address, or
``198.18.1.2:8080`` where two reals of the service share the address, NAT to two ports: config.model.real_labels):

    xlb_service_packets_total, xlb_service_bytes_total, xlb_service_connections_total       {service}
    xlb_real_packets_total, xlb_real_bytes_total, xlb_real_connections_total                {service, real}
    xlb_service_out_packets_total, xlb_service_out_bytes_total {service}; xlb_real_out_... {service, real}
                                               (NAT services: the reals' replies; 0 for DR, whose replies bypass xlb)
    xlb_real_active_connections, xlb_real_inactive_connections, xlb_real_weight             {service, real}
    xlb_real_state                             {service, real, state="available"|"quiescent"|"overloaded"} 0/1
    xlb_service_persistence_templates                                                       {service}
    xlb_table_entries, xlb_table_capacity                   {table="connections"|"templates"|"half_open"|
                                                             "half_open_templates"|"nat"|"half_open_nat"}
    xlb_templates_missing                                   (the last sweep's: templates lost under table pressure)
    xlb_conn_events_total                                   {event="half_open"|"promoted"|"midstream"}
    xlb_mark_rule_hits_total                                {mark, proto, dst, ports}
    xlb_verdict_packets_total, xlb_verdict_bytes_total      {verdict="pass"|"fwd"|"drop", reason="drop_bad_tcp"...}
    xlb_config_reloads_total {result="success"|"rejected"|"failed"}, xlb_config_last_reload_success_timestamp_seconds
    xlb_xdp_attached, xlb_xdp_program_lost_total {cause="removed"|"replaced"}
    xlb_bgp_announced {vip} (1 per VIP BIRD accepted), xlb_bgp_draining, xlb_bgp_in_step (with --bird-socket)
    xlb_sync_total {what} (state sync: sent_messages, received_conns, loaded_templates, skipped_unknown_real...)
    xlb_real_up {service, real} (health-checked reals), xlb_health_checks_total {kind, result="success"|"failure"},
    xlb_health_check_seconds_total {kind}
    xlb_build_info {version, kernel}, xlb_scrape_duration_seconds
"""
import contextlib
import gzip
import ipaddress
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from .. import __version__
from ..dataplane import structs as S
from ..dataplane.reader import real_names
from ..errors import XlbError

DEFAULT_PORT = 9842
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
RELOAD_RESULTS = ("success", "rejected", "failed")
# xlb_real_state: quiescent (weight 0), else overloaded (RC_F_OVERLOAD: its connections reached uthreshold and
# have not yet fallen below lthreshold), else available (takes new connections).
REAL_STATES = ("available", "quiescent", "overloaded")


class MetricsError(XlbError):
    """The metrics endpoint could not be set up."""


def _ports_label(rule):
    if not rule.ports:
        return "all"
    return ",".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in rule.ports)


SV, RL = ("service",), ("service", "real")
# (name, type, help, label names): every family, in exposition order. Counters are named without "_total" and
# info families without "_info", as prometheus_client's families are.
FAMILIES = (
    ("xlb_service_packets", "counter", "Packets of a virtual service", SV),
    ("xlb_service_bytes", "counter", "Bytes (Ethernet frames) of a virtual service", SV),
    ("xlb_service_connections", "counter", "New connections of a virtual service", SV),
    ("xlb_real_packets", "counter", "Packets sent to a real server", RL),
    ("xlb_real_bytes", "counter", "Bytes (Ethernet frames) sent to a real server", RL),
    ("xlb_real_connections", "counter", "New connections placed on a real server", RL),
    ("xlb_service_out_packets", "counter", "Reply packets of a NAT service (its reals to clients)", SV),
    ("xlb_service_out_bytes", "counter", "Reply bytes (Ethernet frames) of a NAT service", SV),
    ("xlb_real_out_packets", "counter", "Reply packets from a real server of a NAT service", RL),
    ("xlb_real_out_bytes", "counter", "Reply bytes (Ethernet frames) from a real server of a NAT service", RL),
    ("xlb_real_active_connections", "gauge", "Live established TCP connections of a real", RL),
    ("xlb_real_inactive_connections", "gauge", "Live connections of a real in any other state (SYN, closing, UDP)",
     RL),
    ("xlb_real_weight", "gauge", "Configured weight of a real (0: quiescent)", RL),
    ("xlb_real_state", "gauge", "1 for the real's current state, 0 for the others", RL + ("state",)),
    ("xlb_service_persistence_templates", "gauge", "Persistence templates in the table", SV),
    ("xlb_table_entries", "gauge", "Entries in a connection-tracking table", ("table",)),
    ("xlb_table_capacity", "gauge", "Capacity of a connection-tracking table", ("table",)),
    ("xlb_templates_missing", "gauge", "Clients of persistent services with live connections but no template (lost "
     "to the template table's LRU), at the last sweep", ()),
    ("xlb_mark_rule_hits", "counter", "Packets classified by a mark rule", ("mark", "proto", "dst", "ports")),
    ("xlb_verdict_packets", "counter", "Packets by verdict and reason", ("verdict", "reason")),
    ("xlb_conn_events", "counter", "Connection-table events: half_open (a handshake's entry made in the half-open "
     "table), promoted (its ACK moved it to the connection table), midstream (a mid-stream packet of an unknown "
     "flow placed anew)", ("event",)),
    ("xlb_verdict_bytes", "counter", "Bytes by verdict and reason", ("verdict", "reason")),
    ("xlb_config_reloads", "counter", "Config reloads by result", ("result",)),
    ("xlb_config_last_reload_success_timestamp_seconds", "gauge",
     "When the running config was last applied (Unix time)", ()),
    ("xlb_xdp_attached", "gauge", "1 while xlb's program is on its interface (checked every sweep)", ()),
    ("xlb_xdp_program_lost", "counter", "Times a sweep found xlb's program taken off its interface or replaced",
     ("cause",)),
    ("xlb_bgp_announced", "gauge", "1 for each VIP BIRD last accepted to announce", ("vip",)),
    ("xlb_bgp_draining", "gauge", "1 while `xlb drain` holds every VIP withdrawn", ()),
    ("xlb_bgp_in_step", "gauge", "1 while BIRD announces what xlb wants (0: BIRD unreachable or refusing)", ()),
    ("xlb_real_up", "gauge", "1 while a health-checked real passes its checks, 0 while it fails them", RL),
    ("xlb_health_checks", "counter", "Health checks run, by checker kind and result", ("kind", "result")),
    ("xlb_health_check_seconds", "counter", "Time spent in health checks, by checker kind", ("kind",)),
    ("xlb_sync", "counter", "State sync (xlb run --sync): messages and entries sent, received, loaded and "
     "skipped, by what", ("what",)),
    ("xlb_build", "info", "xlb version and the kernel it runs on", ("kernel", "version")),
    ("xlb_scrape_duration_seconds", "gauge", "Time this scrape spent reading the BPF maps", ()),
)
_CLASS = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily, "info": InfoMetricFamily}
_SUFFIX = {"counter": "_total", "info": "_info", "gauge": ""}


# The families with a sample per service, or per real (and state): read as numpy columns in the layout's order and
# written through one printf-style format per family, built once per applied config (_Layout).
BULK = ("xlb_service_packets", "xlb_service_bytes", "xlb_service_connections", "xlb_real_packets",
        "xlb_real_bytes", "xlb_real_connections", "xlb_real_active_connections", "xlb_real_inactive_connections",
        "xlb_real_weight", "xlb_real_state", "xlb_service_persistence_templates", "xlb_service_out_packets",
        "xlb_service_out_bytes", "xlb_real_out_packets", "xlb_real_out_bytes")


class _Layout:
    """What a scrape needs of one applied config: service and real ids in exposition order (services by id, each
    one's reals in config order), their label values and weights, and each bulk family's samples as one format
    string (label text rendered once, '%' doubled, a %d per value)."""

    def __init__(self, dp):
        svcs = sorted(dp.layout(), key=lambda slot: slot[0].id)
        self.config = dp.config
        self.sids = np.array([st.id for st, _ in svcs], np.int64)
        self.svc_keys = [st.key_bytes for st, _ in svcs]
        self.labels = {SV: [(st.svc.name,) for st, _ in svcs],
                       RL: [(st.svc.name, label) for st, reals in svcs for label in real_names(st, reals)]}
        self.labels[RL + ("state",)] = [lv + (state,) for lv in self.labels[RL] for state in REAL_STATES]
        self.rids = np.array([-1 if rid is None else rid for _, reals in svcs for _, rid, _ in reals], np.int64)
        self.weights = np.array([r.weight for _, reals in svcs for r, _, _ in reals], np.int64)
        self._formats = {}

    def format(self, name, kind, labels):
        fmt = self._formats.get(name)
        if fmt is None:
            full = name + _SUFFIX[kind]
            fmt = self._formats[name] = "".join(f"{full}{_label_text(labels, lv).replace('%', '%%')} %d\n"
                                                for lv in self.labels[labels]).encode()
        return fmt


def _at(rows, ids):
    """rows[ids] (rows of an array indexed by id), zero for ids past its end or -1."""
    ok = (ids >= 0) & (ids < len(rows))
    out = np.zeros((len(ids),) + rows.shape[1:], rows.dtype)
    out[ok] = rows[ids[ok]]
    return out


class XlbCollector(Collector):
    """Reads the maps of a DataPlane on each collect(); see the module docstring.

    ``read()`` is the one reader: {family name: [(label values, value)]}. ``collect()`` turns it into
    prometheus_client families (for any registry and generate_latest); ``exposition()`` writes the same samples
    as Prometheus text directly (the families of a sample per service or real from numpy columns through
    per-config formats), about twenty times faster at 1000 services x 10 reals, and serves /metrics."""

    def __init__(self, dp, daemon_state=None):
        self.dp = dp
        self.daemon = daemon_state
        self.lock = getattr(daemon_state, "lock", None) or contextlib.nullcontext()
        self._labels = {}  # label names -> {label values: rendered label text}, kept across scrapes
        self._layout = None

    def describe(self):
        """The families without samples, so registering does not read the maps."""
        return [self._family(name, kind, doc, labels) for name, kind, doc, labels in FAMILIES]

    @staticmethod
    def _family(name, kind, doc, labels):
        return _CLASS[kind](name, doc, labels=() if kind == "info" else labels)

    def collect(self):
        rows = self.read()
        for name, kind, doc, labels in FAMILIES:
            fam = self._family(name, kind, doc, labels)
            for values, value in rows[name]:
                if kind == "info":
                    fam.add_metric([], dict(zip(labels, values)))
                else:
                    fam.add_metric(values, value)
            yield fam

    def read(self):
        """{family name: [(label values, value)]}, read from the maps now under the daemon's lock."""
        layout, columns, rows = self._read()
        for name, kind, doc, labels in FAMILIES:
            if name in columns:
                rows[name] = list(zip(layout.labels[labels], columns[name].tolist()))
        return rows

    def _read(self):
        """(layout, {bulk family: values in the layout's order}, {other family: [(label values, value)]})."""
        t0 = time.perf_counter()
        rows = {name: [] for name, *_ in FAMILIES if name not in BULK}
        with self.lock:
            if self._layout is None or self._layout.config is not self.dp.config:
                self._layout = _Layout(self.dp)
            layout = self._layout
            columns = self._columns(layout)
            self._fill(rows)
        rows["xlb_scrape_duration_seconds"].append(((), time.perf_counter() - t0))
        return layout, columns, rows

    def _columns(self, layout):
        dp = self.dp
        svc, real = dp.flow_counter_arrays()
        svc, real = _at(svc, layout.sids), _at(real, layout.rids)
        out = {}
        for i, what in enumerate(("packets", "bytes", "connections")):
            out[f"xlb_service_{what}"], out[f"xlb_real_{what}"] = svc[:, i], real[:, i]
        svc, real = dp.out_counter_arrays()
        svc, real = _at(svc, layout.sids), _at(real, layout.rids)
        for i, what in enumerate(("packets", "bytes")):
            out[f"xlb_service_out_{what}"], out[f"xlb_real_out_{what}"] = svc[:, i], real[:, i]
        loads = _at(dp.real_rows("real_conns", S.RealConns), layout.rids)
        out["xlb_real_active_connections"] = np.maximum(loads["active"], 0)
        out["xlb_real_inactive_connections"] = np.maximum(loads["inactive"], 0)
        out["xlb_real_weight"] = layout.weights
        # the index of each real's state in REAL_STATES, then a 1 for it and 0 for the others
        state = np.where(layout.weights == 0, 1, np.where(loads["flags"] & S.RC_F_OVERLOAD, 2, 0))
        out["xlb_real_state"] = (state[:, None] == np.arange(len(REAL_STATES))).astype(np.int64).ravel()
        templates = dp.templates_by_service()
        out["xlb_service_persistence_templates"] = np.array([templates.get(k, 0) for k in layout.svc_keys], np.int64)
        return out

    def _fill(self, f):
        """The families of a few samples each (not BULK)."""
        dp = self.dp
        for label, entries, capacity in dp.table_fill():
            f["xlb_table_entries"].append(((label,), entries))
            f["xlb_table_capacity"].append(((label,), capacity))
        last = getattr(dp, "last_sweep", None)
        if last is not None:
            f["xlb_templates_missing"].append(((), last.templates_missing))
        self._marks(f["xlb_mark_rule_hits"])
        for event, n in dp.conn_events().items():
            f["xlb_conn_events"].append(((event,), n))
        rows = dp.verdict_rows()
        for num, reason in sorted(S.REASONS.items()):
            p, b, _ = rows[num] if num < len(rows) else (0, 0, 0)
            lv = (reason.split("_", 1)[0], reason)
            f["xlb_verdict_packets"].append((lv, p))
            f["xlb_verdict_bytes"].append((lv, b))
        d = self.daemon
        if d is not None:
            for result in RELOAD_RESULTS:
                f["xlb_config_reloads"].append(((result,), d.reloads.get(result, 0)))
            if d.last_reload_success is not None:
                f["xlb_config_last_reload_success_timestamp_seconds"].append(((), d.last_reload_success))
            if hasattr(d, "program_lost"):  # xlb/ops/attachwatch.py _watch_attachment
                for cause, n in d.program_lost.items():
                    f["xlb_xdp_program_lost"].append(((cause,), n))
                f["xlb_xdp_attached"].append(((), int(bool(getattr(d.prog, "attached", None)))))
            if getattr(d, "bgp", None):  # xlb/ops/announce.py
                b = d.bgp.status()
                f["xlb_bgp_announced"].extend(((vip,), 1) for vip in b["announced"] or ())
                f["xlb_bgp_draining"].append(((), int(b["draining"])))
                f["xlb_bgp_in_step"].append(((), int(b["in_step"])))
            if hasattr(d, "health"):  # xlb/ops/health.py
                up, results, seconds = d.health.metrics()
                f["xlb_real_up"].extend(up)
                f["xlb_health_checks"].extend(((kind, "success" if ok else "failure"), n)
                                              for (kind, ok), n in sorted(results.items()))
                f["xlb_health_check_seconds"].extend(((kind,), secs) for kind, secs in sorted(seconds.items()))
            if getattr(d, "sync", None) is not None:  # xlb/ops/sync.py
                f["xlb_sync"].extend(((what,), n) for what, n in d.sync.metrics())
        f["xlb_build"].append(((os.uname().release, __version__), 1))

    def _marks(self, out):
        for rule, hits in self.dp.mark_hits():
            out.append(((str(rule.mark), rule.proto, str(rule.dst), _ports_label(rule)), hits))

    def exposition(self) -> bytes:
        """One scrape as Prometheus text format 0.0.4 (what generate_latest writes for this collector)."""
        layout, columns, rows = self._read()
        out = []  # bytes: the bulk families' formats are bytes (no encoding of ~7 MB of text at 1000 x 10)
        if sum(map(len, self._labels.values())) > 500_000:
            self._labels.clear()  # label sets of services long gone
        for name, kind, doc, labels in FAMILIES:
            full = name + _SUFFIX[kind]
            text = [f"# HELP {full} {doc}\n# TYPE {full} {'gauge' if kind == 'info' else kind}\n"]
            if name not in columns:
                texts = self._labels.setdefault(labels, {})
                for values, value in rows[name]:
                    label = texts.get(values)
                    if label is None:
                        label = texts[values] = _label_text(labels, values)
                    text.append(f"{full}{label} {value if type(value) is int else repr(float(value))}\n")
            out.append("".join(text).encode())
            if name in columns:
                out.append(layout.format(name, kind, labels) % tuple(columns[name].tolist()))
        return b"".join(out)


def _label_text(names, values):
    if not names:
        return ""
    pairs = sorted(zip(names, values))
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "}"


def _escape(v):
    return str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


# -- the endpoint -------------------------------------------------------------------------------------------------
def parse_listen(text):
    """'9842' -> ('127.0.0.1', 9842); '0.0.0.0:9842', '[::1]:9842' -> (host, port). Raises MetricsError."""
    text = str(text).strip()
    host, port = "127.0.0.1", text
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise MetricsError(f"--metrics {text!r}: expected [IPv6]:PORT")
        port = rest[1:]
    elif ":" in text:
        host, port = text.rsplit(":", 1)
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise MetricsError(f"--metrics {text!r}: the port must be 1..65535 (e.g. --metrics 127.0.0.1:{DEFAULT_PORT})")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise MetricsError(f"--metrics {text!r}: {host!r} is not an IP address") from None
    return host, int(port)


class Endpoint:
    """A running /metrics server (a thread); close() stops it and frees the port."""

    def __init__(self, server, where):
        self.server, self.where = server, where
        self.thread = threading.Thread(target=server.serve_forever, name="xlb-metrics", daemon=True)
        self.thread.start()

    def close(self):
        if self.server:
            self.server.shutdown()
            self.server.server_close()
            self.thread.join(5)
            self.server = None


def _handler(collector):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self._scrape(send_body=True)

        def do_HEAD(self):  # what GET would answer, headers only (uptime checkers, curl -I)
            self._scrape(send_body=False)

        def _scrape(self, send_body):
            if self.path.split("?", 1)[0] not in ("/metrics", "/"):
                self.send_error(404, "xlb serves /metrics")
                return
            try:
                body = collector.exposition()
            except Exception as exc:  # the client gets a 500 and the reason; the daemon keeps serving
                self.send_error(500, f"reading the maps failed: {exc!r}")
                return
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE)
            if "gzip" in self.headers.get("Accept-Encoding", ""):
                body = gzip.compress(body, compresslevel=1)
                self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if send_body:
                self.wfile.write(body)

        def log_message(self, *args):
            pass  # a scrape every few seconds is not news

    return Handler


def serve(listen, collector):
    """Serve collector.exposition() as /metrics on listen ('PORT', 'ADDR:PORT', '[ADDR]:PORT'), on a thread.

    prometheus_client's own server would render through generate_latest: about a second at 1000 services x 10
    reals."""
    host, port = parse_listen(listen)

    class Server(ThreadingHTTPServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        daemon_threads = True

    try:
        server = Server((host, port), _handler(collector))
    except OSError as exc:
        raise MetricsError(f"cannot serve metrics on {listen}: {exc.strerror or exc}") from exc
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return Endpoint(server, where)


def serve_daemon(daemon, listen):
    """The daemon's endpoint."""
    return serve(listen, XlbCollector(daemon.dp, daemon))
