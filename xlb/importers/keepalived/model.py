"""What a keepalived import produces and reports: the Import, the problems (Problem, KeepalivedError), the
checker blocks and settings kept for the health checks, and the virtual and real server blocks as read (VS, RS).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from ...config import model as xconfig
from ...errors import ConfigError

MAX_LISTED = 50  # problems an error message lists (all are in KeepalivedError.problems)


@dataclass(frozen=True)
class Problem:
    """Something in the keepalived config that stops xlb from running it."""

    file: str
    line: int
    keyword: str
    message: str
    # "error": keepalived -t reports it too; "unsupported": keepalived runs it, xlb cannot; "warning": keepalived -t
    # reports it (and exits non-zero) but keepalived corrects it and runs, and so does xlb, the same way.
    kind: str = "error"

    def __str__(self):
        tag = "not supported by xlb: " if self.kind == "unsupported" else ""
        return f"{self.file}: line {self.line}: {self.keyword}: {tag}{self.message}"


class KeepalivedError(ConfigError):
    """The keepalived config has problems; ``problems`` lists them all, in file order."""

    def __init__(self, problems):
        self.problems = tuple(problems)
        first = self.problems[0]
        tag = "not supported by xlb: " if first.kind == "unsupported" else ""
        message = f"{first.keyword}: {tag}{first.message}"
        if len(self.problems) > 1:
            shown = self.problems[1:1 + MAX_LISTED]
            message += f" (and {len(self.problems) - 1} more problems)\n" + "\n".join(f"  {p}" for p in shown)
            if len(self.problems) > 1 + MAX_LISTED:
                message += f"\n  ... {len(self.problems) - 1 - MAX_LISTED} more not listed"
        super().__init__(first.file, f"line {first.line}", message)

    @property
    def only_unsupported(self) -> bool:
        """True when keepalived itself would run the config: every problem is a feature xlb lacks (or a warning)."""
        return all(p.kind != "error" for p in self.problems)


@dataclass(frozen=True)
class HealthCheck:
    """A checker block (TCP_CHECK, HTTP_GET, ...) of one real server, as written: kept, not run yet."""

    kind: str
    service: str  # xlb service name of the first service it belongs to, e.g. "tcp/198.51.100.10:80"
    real: str  # real server address
    file: str
    line: int
    body: tuple  # tree.Node children, as parsed


@dataclass(frozen=True)
class CheckSettings:
    """Checker settings of a virtual server (real=None) or a real server: delay_loop, quorum, sorry_server..."""

    service: str
    real: str | None
    settings: tuple  # ((keyword, args, file, line), ...)


@dataclass(frozen=True)
class Import:
    """What a keepalived.conf (and marks file) became: the Config xlb runs, and what it keeps or skipped."""

    config: xconfig.Config
    health_checks: tuple = ()
    check_settings: tuple = ()
    warnings: tuple = ()
    files: tuple = ()
    reported: tuple = ()  # Problems of kind "warning": keepalived -t reports them, corrects them and runs


class VS:
    """What one virtual_server block said, before it becomes one or more xlb services."""

    def __init__(self, node):
        self.node = node
        self.kind = None  # "addr" | "fwmark" | "group"
        self.addr = None
        self.port = 0
        self.fwmark = None
        self.group = None
        self.af = None  # 4 | 6 | None
        self.sched = None
        self.flags = []  # (flag, node)
        self.ops_node = None  # `ops` (one-packet scheduling)
        self.method = None
        self.tunnel = None  # lb_kind TUN's tunnel_* keys (keepalived/tunnel.py)
        self.ptimeout = None
        self.ptimeout_node = None
        self.pgran = None
        self.pgran_node = None
        self.proto = None
        self.proto_node = None
        self.pe = None  # persistence_engine: "sip"
        self.pe_node = None
        self.weight = None
        self.quorum = 1
        self.hysteresis = 0
        self.reals = []  # RS
        self.settings = []
        self.lines = {}  # keyword -> node (the last one)


class RS:
    """What one real_server block said."""

    def __init__(self, node, addr, port):
        self.node = node
        self.addr = addr
        self.port = port
        self.weight = None
        self.weight_node = None
        self.method = None
        self.tunnel = None
        self.uthreshold = None
        self.lthreshold = None
        self.lines = {}
        self.settings = []
        self.checks = []


class Entry(NamedTuple):
    """One service a virtual server stands for: a fwmark, or an address and port (a group expands to several)."""

    kind: str  # "fwmark" | "addr"
    value: object  # the mark, or the ip_address
    family: int | None  # 4 | 6; None for a fwmark whose family the virtual server decides
    port: int
    node: object  # the tree.Node that named it
