"""keepalived's checker blocks and checker settings into xlb's health keys: a mixin of the importer
(xlb/importers/keepalived/translate.py). Each checker block is read and validated by xlb/health/kaconf.py as
keepalived reads it (its problems named by file, line and keyword; BFD_CHECK is not supported by xlb), then written
into the service tree as a ``check`` table; the virtual_server and real_server settings (delay_loop, quorum,
sorry_server, inhibit_on_failure, notify_up...) become the keys of the same names, which xlb/config/read.py
validates once more with the rest of the config."""
from __future__ import annotations

from .checks import kw_addr, kw_port, kw_true
from .model import Problem
from ...health import kaconf

_NUMBERS = {"delay_loop": float, "delay_before_retry": float, "warmup": float, "connect_timeout": float,
            "retry": int, "quorum": int, "hysteresis": int}
_FLAGS = ("inhibit_on_failure", "alpha", "omega", "sorry_server_inhibit")
_COMMANDS = ("notify_up", "notify_down", "quorum_up", "quorum_down")
# Settings keepalived has that change nothing xlb does (alerts, SNMP, the sorry server's method: DR as the rest).
_IGNORED = ("ha_suspend", "smtp_alert", "snmp_name", "sorry_server_lvs_method")
_UNSUPPORTED = {"track_file": "track_file on a real_server (use a FILE_CHECK)", "track_bfd": "BFD health checks"}


class Health:
    """Needs the importer's ``err``/``unsupported``/``warnings``/``problems``/``_w`` and ``track_files``."""

    def health_settings(self, nodes, out, path):
        """Checker settings (nodes of a virtual_server or real_server) as health keys of ``out``; the virtualhost
        they give, if any (keepalived's default for the HTTP_GET/SSL_GET checkers below)."""
        virtualhost = None
        for n in nodes:
            kw, a = n.keyword, n.args
            if kw in _UNSUPPORTED:
                if not any(p.line == n.line and p.file == n.file for p in self.problems):  # once per group
                    self.unsupported(n, _UNSUPPORTED[kw])
                continue
            if kw in _IGNORED:
                continue
            if kw == "virtualhost":
                virtualhost = a[0] if a else None
                continue
            try:
                if kw in _NUMBERS:
                    out[kw] = _NUMBERS[kw](a[0])
                elif kw in _FLAGS:
                    out[kw] = kw_true(n)
                elif kw in _COMMANDS:
                    out[kw] = " ".join(a)
                elif kw == "sorry_server":
                    port = kw_port(a[1]) if len(a) > 1 and a[1].strip("0") else 0
                    # Without a port (or 0): the virtual server's, as IPVS takes a destination's port 0.
                    out[kw] = {"address": str(kw_addr(a[0])), "port": port} if port else str(kw_addr(a[0]))
                else:
                    continue
            except (ValueError, IndexError, TypeError):
                continue  # keepalived's own check of the value (checks.py) has reported it
            self._w(f"{path}.{kw}", n)
        return virtualhost

    def real_checks(self, rs, rw, real, virtualhost):
        """The checker blocks of real server ``rs`` as ``real["check"]`` (validated once per block)."""
        cache = self.__dict__.setdefault("_check_tables", {})
        tables = []
        for node in rs.checks:
            if id(node) not in cache:
                cache[id(node)] = self._check_table(node)
            tbl = cache[id(node)]
            if tbl is None:
                continue
            if virtualhost and tbl["kind"] in ("HTTP_GET", "SSL_GET") and "virtualhost" not in tbl:
                tbl = dict(tbl, virtualhost=virtualhost)
            if rs.port and tbl["kind"] not in ("MISC_CHECK", "FILE_CHECK", "PING_CHECK"):
                # the port written on the real_server is where its checkers connect, even where direct routing
                # forwards without it (a fwmark service)
                tbl = {"connect_port": rs.port, **tbl}
            self._w(f"{rw}.check[{len(tables)}]", node)
            tables.append(tbl)
        if tables:
            real["check"] = tables

    def _check_table(self, node):
        tbl, problems = kaconf.table(node, self.track_files)
        for p in problems:
            if p.kind == "ignored":
                self.warnings.append(f"{p.source}: line {p.line}: {p.keyword}: {p.detail}")
            else:
                self.problems.append(Problem(p.source, p.line, p.keyword, p.detail, p.kind))
        return tbl
