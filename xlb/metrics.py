"""Prometheus metrics: a collector that reads the BPF maps at scrape time (house style 10: no copied counters).

API (the daemon uses it; bench/ times a scrape with it):

    from prometheus_client import CollectorRegistry, generate_latest
    from xlb.metrics import XlbCollector
    registry = CollectorRegistry()
    registry.register(XlbCollector(dp, daemon_state))   # dp: xlb.dataplane.DataPlane
    text = generate_latest(registry)                    # one scrape: reads the maps now

``daemon_state`` is the running Daemon (or None outside one): the collector takes its ``lock`` while it reads the
maps (commands, sweeps and reloads run under it) and exports its reload counters (``reloads``: {result: count},
``last_reload_success``: Unix time). ``serve("127.0.0.1:9842", registry)`` serves ``/metrics`` on a thread and
returns a handle whose ``close()`` stops it.

Cost: per-CPU counters are read with one BPF_MAP_LOOKUP_BATCH per map over the ids in use; the conns and persist
tables are walked in batches (table fill, templates per service, and, until the data plane counts them,
active/inactive connections per real), so a scrape costs O(services + reals + connections + templates).

Families (labels: ``service`` as operators name it — ``tcp/198.51.100.10:80``, ``fwm/80``; ``real`` its address):

    xlb_service_packets_total, xlb_service_bytes_total, xlb_service_connections_total       {service}
    xlb_real_packets_total, xlb_real_bytes_total, xlb_real_connections_total                {service, real}
    xlb_real_active_connections, xlb_real_inactive_connections, xlb_real_weight             {service, real}
    xlb_real_state                                          {service, real, state="available"|"quiescent"} 0/1
    xlb_service_persistence_templates                                                       {service}
    xlb_table_entries, xlb_table_capacity                   {table="connections"|"templates"}
    xlb_mark_rule_hits_total                                {mark, proto, dst, ports}
    xlb_verdict_packets_total, xlb_verdict_bytes_total      {verdict="pass"|"fwd"|"drop", reason="drop_bad_tcp"...}
    xlb_config_reloads_total {result="success"|"rejected"|"failed"}, xlb_config_last_reload_success_timestamp_seconds
    xlb_build_info {version, kernel}, xlb_scrape_duration_seconds
"""
import contextlib
import ctypes as ct
import ipaddress
import os
import time
from collections import Counter

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from . import __version__
from . import structs as S
from .bpfsys import iter_batches, lookup_batch
from .errors import XlbError

DEFAULT_PORT = 9842
RELOAD_RESULTS = ("success", "rejected", "failed")


class MetricsError(XlbError):
    """The metrics endpoint could not be set up."""


def percpu_counters(table, n):
    """[(packets, bytes, conns)] for indexes 0..n-1 of a per-CPU counters array, summed over CPUs: one batch read."""
    if n <= 0:
        return []
    vsz = ct.sizeof(table.Leaf)            # Counters * possible CPUs
    ncpu = vsz // ct.sizeof(S.Counters)
    _, values, got = lookup_batch(table.map_fd, 4, vsz, min(n, table.max_entries))
    words = memoryview(values).cast("Q")
    step = 3 * ncpu
    out = []
    for i in range(got):
        base = i * step
        out.append((sum(words[base:base + step:3]), sum(words[base + 1:base + step:3]),
                    sum(words[base + 2:base + step:3])))
    return out


def table_entries(table):
    """How many entries a hash table holds now (a batched walk; nothing is decoded)."""
    ksz, vsz = ct.sizeof(table.Key), ct.sizeof(table.Leaf)
    return sum(n for _, _, n in iter_batches(table.map_fd, ksz, vsz, table.max_entries))


def templates_by_service(table):
    """{service key bytes: persistence templates} (the first bytes of a template's key are its service's key)."""
    ksz, vsz = ct.sizeof(table.Key), ct.sizeof(table.Leaf)
    skz = ct.sizeof(S.SvcKey)
    counts = Counter()
    for keys, _, n in iter_batches(table.map_fd, ksz, vsz, table.max_entries):
        raw = keys.raw
        counts.update(raw[i:i + skz] for i in range(0, n * ksz, ksz))
    return counts


def _ports_label(rule):
    if not rule.ports:
        return "all"
    return ",".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in rule.ports)


class XlbCollector(Collector):
    """Reads the maps of a DataPlane on each collect(); see the module docstring."""

    def __init__(self, dp, daemon_state=None):
        self.dp = dp
        self.daemon = daemon_state
        self.lock = getattr(daemon_state, "lock", None) or contextlib.nullcontext()

    def describe(self):
        """The families without samples, so registering does not read the maps."""
        return [*self._families().values(), self._duration(0.0)]

    def collect(self):
        t0 = time.perf_counter()
        with self.lock:
            fams = self._families()
            self._fill(fams)
        yield from fams.values()
        yield self._duration(time.perf_counter() - t0)

    @staticmethod
    def _duration(seconds):
        fam = GaugeMetricFamily("xlb_scrape_duration_seconds", "Time this scrape spent reading the BPF maps")
        fam.add_metric([], seconds)
        return fam

    @staticmethod
    def _families():
        sv, rl = ["service"], ["service", "real"]
        fams = [
            CounterMetricFamily("xlb_service_packets", "Packets of a virtual service", labels=sv),
            CounterMetricFamily("xlb_service_bytes", "Bytes (Ethernet frames) of a virtual service", labels=sv),
            CounterMetricFamily("xlb_service_connections", "New connections of a virtual service", labels=sv),
            CounterMetricFamily("xlb_real_packets", "Packets sent to a real server", labels=rl),
            CounterMetricFamily("xlb_real_bytes", "Bytes (Ethernet frames) sent to a real server", labels=rl),
            CounterMetricFamily("xlb_real_connections", "New connections placed on a real server", labels=rl),
            GaugeMetricFamily("xlb_real_active_connections", "Live established TCP connections of a real",
                              labels=rl),
            GaugeMetricFamily("xlb_real_inactive_connections",
                              "Live connections of a real in any other state (SYN, closing, UDP)", labels=rl),
            GaugeMetricFamily("xlb_real_weight", "Configured weight of a real (0: quiescent)", labels=rl),
            GaugeMetricFamily("xlb_real_state", "1 for the real's current state, 0 for the others",
                              labels=rl + ["state"]),
            GaugeMetricFamily("xlb_service_persistence_templates", "Persistence templates in the table",
                              labels=sv),
            GaugeMetricFamily("xlb_table_entries", "Entries in a connection-tracking table", labels=["table"]),
            GaugeMetricFamily("xlb_table_capacity", "Capacity of a connection-tracking table", labels=["table"]),
            CounterMetricFamily("xlb_mark_rule_hits", "Packets classified by a mark rule",
                                labels=["mark", "proto", "dst", "ports"]),
            CounterMetricFamily("xlb_verdict_packets", "Packets by verdict and reason",
                                labels=["verdict", "reason"]),
            CounterMetricFamily("xlb_verdict_bytes", "Bytes by verdict and reason", labels=["verdict", "reason"]),
            CounterMetricFamily("xlb_config_reloads", "Config reloads by result", labels=["result"]),
            GaugeMetricFamily("xlb_config_last_reload_success_timestamp_seconds",
                              "When the running config was last applied (Unix time)"),
            InfoMetricFamily("xlb_build", "xlb version and the kernel it runs on"),
        ]
        return {f.name: f for f in fams}

    def _fill(self, f):
        dp = self.dp
        services = sorted(dp.services.values(), key=lambda st: st.id)
        svc_rows = percpu_counters(dp.m["svc_stats"], dp.svc_ids.next)
        real_rows = percpu_counters(dp.m["real_stats"], dp.real_ids.next)
        conn_counts = dp.real_conn_counts()
        templates = templates_by_service(dp.m["persist"])
        for st in services:
            svc = st.svc
            name = svc.name
            p, b, c = svc_rows[st.id] if st.id < len(svc_rows) else (0, 0, 0)
            f["xlb_service_packets"].add_metric([name], p)
            f["xlb_service_bytes"].add_metric([name], b)
            f["xlb_service_connections"].add_metric([name], c)
            f["xlb_service_persistence_templates"].add_metric([name], templates.get(st.key_bytes, 0))
            for r in svc.reals:
                rid = dp.real_ids.get((svc.key, r.address))
                labels = [name, str(r.address)]
                p, b, c = real_rows[rid] if rid is not None and rid < len(real_rows) else (0, 0, 0)
                f["xlb_real_packets"].add_metric(labels, p)
                f["xlb_real_bytes"].add_metric(labels, b)
                f["xlb_real_connections"].add_metric(labels, c)
                active, inactive = conn_counts.get(rid, (0, 0))
                f["xlb_real_active_connections"].add_metric(labels, active)
                f["xlb_real_inactive_connections"].add_metric(labels, inactive)
                f["xlb_real_weight"].add_metric(labels, r.weight)
                for state in ("available", "quiescent"):
                    f["xlb_real_state"].add_metric(labels + [state], float((r.weight == 0) == (state == "quiescent")))
        for table, label in (("conns", "connections"), ("persist", "templates")):
            f["xlb_table_entries"].add_metric([label], table_entries(dp.m[table]))
            f["xlb_table_capacity"].add_metric([label], dp.m[table].max_entries)
        self._marks(f)
        rows = percpu_counters(dp.m["verdicts"], len(S.REASONS))
        for num, reason in sorted(S.REASONS.items()):
            p, b, _ = rows[num] if num < len(rows) else (0, 0, 0)
            labels = [reason.split("_", 1)[0], reason]
            f["xlb_verdict_packets"].add_metric(labels, p)
            f["xlb_verdict_bytes"].add_metric(labels, b)
        d = self.daemon
        if d is not None:
            for result in RELOAD_RESULTS:
                f["xlb_config_reloads"].add_metric([result], d.reloads.get(result, 0))
            if d.last_reload_success is not None:
                f["xlb_config_last_reload_success_timestamp_seconds"].add_metric([], d.last_reload_success)
        f["xlb_build"].add_metric([], {"version": __version__, "kernel": os.uname().release})

    def _marks(self, f):
        from .marks import rule_identity
        dp = self.dp
        if not dp.config or not dp.config.marks:
            return
        rows = percpu_counters(dp.m["mark_stats"], dp.rule_ids.next)
        seen = set()
        for rule in dp.config.marks:
            rid = dp.rule_ids.get(rule_identity(rule))
            if rid is None or rid in seen:
                continue
            seen.add(rid)
            hits = rows[rid][0] if rid < len(rows) else 0
            f["xlb_mark_rule_hits"].add_metric([str(rule.mark), rule.proto, str(rule.dst), _ports_label(rule)], hits)


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
    """A running /metrics server; close() stops it and frees the port."""

    def __init__(self, server, thread, where):
        self.server, self.thread, self.where = server, thread, where

    def close(self):
        if self.server:
            self.server.shutdown()
            self.server.server_close()
            self.thread.join(5)
            self.server = None


def serve(listen, registry):
    """Serve /metrics of registry on listen ('PORT', 'ADDR:PORT', '[ADDR]:PORT') on a thread."""
    from prometheus_client import start_http_server
    host, port = parse_listen(listen)
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise MetricsError(f"cannot serve metrics on {listen}: {exc.strerror or exc}") from exc
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return Endpoint(server, thread, where)


def serve_daemon(daemon, listen):
    """The daemon's endpoint: a registry of its own holding one XlbCollector."""
    from prometheus_client import CollectorRegistry
    registry = CollectorRegistry()
    registry.register(XlbCollector(daemon.dp, daemon))
    return serve(listen, registry)
