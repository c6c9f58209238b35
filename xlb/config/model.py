"""xlb's configuration as frozen dataclasses (Config, Service, Real, MarkRule, Timeouts, Tables, Sync, Bgp), the values it
may take, and the address helpers the data plane's keys are built with. Pure: xlb/config/read.py reads and
validates a file into it, xlb/config/dump.py writes it back as TOML.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field

# Schedulers the data plane implements, and the IPVS ones an operator may reasonably ask for but we do not have.
SCHEDULERS = ("rr", "wrr", "lc", "wlc", "sed", "nq", "fo", "ovf", "sh", "dh", "mh", "lblc", "lblcr")
IPVS_SCHEDULERS_NOT_YET = ()
DEFAULT_SCHEDULER = "wlc"  # as IPVS
# ipvsadm -b / keepalived's sh-port, sh-fallback, mh-port, mh-fallback: which flags each scheduler takes.
SCHED_FLAGS = {"sh": ("sh-port", "sh-fallback"), "mh": ("mh-port", "mh-fallback")}
METHODS = ("dr", "nat", "tun")
PERSISTENCE_MODES = ("lvs", "timeout")
# How a persistent service places a client without a template: its scheduler, or "consistent" (Maglev over the
# masked client and the service's identity, the same answer on every balancer: docs/scale-out.md).
PLACEMENTS = ("scheduler", "consistent")
PERSISTENCE_ENGINES = ("sip",)  # IPVS's persistence engines: sip keys templates by the SIP Call-ID
SERVICE_PROTOS = ("tcp", "udp", "sctp")  # a vip service's proto; mark rules name tcp or udp

U32_MAX = 2**32 - 1
TIMEOUT_MAX = 2**31 - 1  # seconds; far beyond any sane value, keeps ns arithmetic in u64
CONNS_MIN, CONNS_MAX = 1024, 64 * 2**20
FLOW_CACHE_MIN, FLOW_CACHE_MAX = 1024, 2**24  # entries per CPU (64 bytes each)
MH_SIZE_MIN, MH_SIZE_MAX = 2, 1000003


@dataclass(frozen=True)
class Timeouts:
    """Connection-table idle timeouts in seconds (IPVS ``ipvsadm --set tcp tcpfin udp``)."""

    tcp: int = 900  # established TCP
    tcpfin: int = 120  # after FIN/RST
    udp: int = 300
    syn: int = 60  # TCP seen only SYN (IPVS SYN_RECV)


@dataclass(frozen=True)
class Tables:
    """Map sizes and the timer-sweep period (``[tables]``)."""

    conns: int = 1048576  # connection table entries
    templates: int = 262144  # persistence templates
    sweep_interval: float = 1.0  # seconds between timer sweeps
    flow_cache: int = 65536  # established-flow cache entries per CPU (a power of two; 0 = off)
    half_open: bool = True  # the SYN-flood defense: handshakes wait in their own table (docs/reliability.md)


SYNC_MODES = ("master", "backup", "both")


@dataclass(frozen=True)
class Sync:
    """IPVS-compatible state sync (``[sync]``; `xlb run --sync` overrides): the role, its interface and syncid."""

    mode: str | None = None  # "master" | "backup" | "both"; None = off
    iface: str | None = None  # the sync interface (the multicast group is joined and sent to there)
    syncid: int = 0  # 0..255; a backup with 0 takes every syncid
    refresh: float = 60.0  # seconds between a master's re-sends of its live connections and templates
    # The kernel sync daemon's options (ipvsadm --mcast-group, --mcast-port, --mcast-ttl, --sync-maxlen):
    mcast_group: str = "224.0.0.81"  # IPv4 or IPv6 multicast group (IPv6: IPv6 sockets; IPVS has no IPv6 default)
    mcast_port: int = 8848
    mcast_ttl: int = 1  # multicast TTL (IPv6: hops) of what a master sends
    maxlen: int = 0  # message length without IP/UDP headers; 0: 1500 less them (a backup: the MTU less them)


@dataclass(frozen=True)
class Bgp:
    """VIP announcements through BIRD (``[bgp]``; `xlb run --bird-socket/--bird-include` override): BIRD's control
    socket and the file xlb writes the VIP routes to, which bird.conf includes. Both or neither."""

    bird_socket: str | None = None  # e.g. /run/bird/bird.ctl
    bird_include: str | None = None  # e.g. /etc/bird/xlb-vips.conf


@dataclass(frozen=True)
class Icmp:
    """ICMP to the VIPs (``[icmp]``)."""

    echo_reply: bool = True  # the balancer answers echo requests (ping) to its VIPs, as IPVS's director does


@dataclass(frozen=True)
class MarkRule:
    """One ``[[mark]]``: packets to ``dst`` (and ``proto``/``ports``) get firewall mark ``mark``."""

    mark: int  # 1 .. 2**32-1
    proto: str  # "tcp" | "udp" | "any"
    dst: ipaddress.IPv4Network | ipaddress.IPv6Network
    ports: tuple  # ((lo, hi), ...) inclusive, merged and sorted; () = every port
    where: str  # "mark[3]"


@dataclass(frozen=True)
class Real:
    """A real server of a service."""

    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    weight: int = 1  # 0..65535; 0 = quiescent (keeps its connections, gets no new ones)
    where: str = ""
    uthreshold: int = 0  # connections (active + inactive) at which the real is overloaded; 0 = no limit
    lthreshold: int = 0  # an overloaded real takes new connections again below this; 0 = 3/4 of uthreshold
    health: dict | None = field(default=None, hash=False)  # its health keys as written (checks: xlb/config/health.py)
    # Set by the daemon's health wiring in the config it writes to the maps, never read from a file: "" up;
    # "removed" (absent from listings, as IPVS DEL_DEST) or "inhibited" (weight 0): failed its checks, in the maps
    # with XLB_REAL_F_DOWN (places nothing; its connections as the service's on_real_failure says).
    failed: str = ""
    port: int | None = None  # NAT: the port the real listens on; None: the port the client sent to

    @property
    def ident(self) -> tuple:
        """The real's identity within its service, as IPVS's destination's: (address, port as the maps hold it:
        its own, else 0 for the port the client sent to). A NAT service may have two reals on one address."""
        return (self.address, self.port or 0)


def real_text(address, port) -> str:
    """A real as ipvsadm -L -n writes a destination: ``198.18.1.2:8080``, ``[2001:db8::2]:8080``."""
    return f"{address}:{port}" if ipaddress.ip_address(address).version == 4 else f"[{address}]:{port}"


def real_labels(pairs, port=None) -> list:
    """How `xlb top`, traces and the metrics' ``real`` label name each of one service's reals, given as (address
    text, its own port or None) pairs: by its address, or where two of them share the address (NAT to two ports)
    by address and port (real_text; a real with no port of its own takes ``port``, the service's)."""
    seen, shared = set(), set()
    for a, _ in pairs:
        (shared if a in seen else seen).add(a)
    if not shared:
        return [a for a, _ in pairs]
    return [real_text(a, p or port or 0) if a in shared else a for a, p in pairs]


def fwmark_key(family, mark) -> tuple:
    """A firewall-mark service's identity (Service.key): its mark and address family."""
    return ("fwm", family, mark)


@dataclass(frozen=True)
class Service:
    """A virtual service: either a firewall-mark service or a (proto, vip, port) service."""

    fwmark: int | None
    vip: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    port: int | None  # 0 = port-zero service (any port; requires persistence)
    proto: str | None  # "tcp" | "udp" | "sctp"; None for fwmark services
    family: int  # 4 or 6
    scheduler: str
    method: str
    persistence_timeout: int | None  # seconds; None = not persistent
    persistence_netmask: bytes  # 16 bytes; IPv4 mask in the first 4, rest zero
    persistence_mode: str
    expire_quiescent_template: bool
    mh_table_size: int
    reals: tuple  # tuple[Real]
    where: str  # "service[0]"
    sched_flags: tuple = ()  # ("sh-port", "sh-fallback") / ("mh-port", "mh-fallback"), sorted
    ops: bool = False  # one-packet scheduling: each UDP datagram placed alone, no connection entry (ipvsadm -o)
    placement: str = "scheduler"  # PLACEMENTS; "consistent" only on persistent services, with scheduler mh
    health_keys: dict | None = field(default=None, hash=False)  # the service's health keys as written
    health: object = field(default=None, hash=False)  # xlb.health.spec.Service, or None: reals always up
    persistence_engine: str | None = None  # "sip": templates keyed by the Call-ID of UDP datagrams; None: client
    tunnel: object = None  # xlb.config.tunnel.Tunnel for method "tun", else None

    @property
    def key(self) -> tuple:
        """Identity of the service, hashable and stable across reloads."""
        if self.fwmark is not None:
            return fwmark_key(self.family, self.fwmark)
        return (self.proto, self.vip, self.port)

    @property
    def name(self) -> str:
        """Operator label: ``fwm/80``, ``fwm6/80``, ``tcp/198.51.100.10:80``, ``udp/[2001:db8::1]:53``."""
        if self.fwmark is not None:
            return f"fwm{'6' if self.family == 6 else ''}/{self.fwmark}"
        host = f"[{self.vip}]" if self.family == 6 else str(self.vip)
        return f"{self.proto}/{host}:{self.port}"


@dataclass(frozen=True)
class Config:
    timeouts: Timeouts
    tables: Tables
    marks: tuple  # tuple[MarkRule]
    services: tuple  # tuple[Service]
    source: str
    icmp: Icmp = Icmp()
    sync: Sync = Sync()
    bgp: Bgp = Bgp()


# ---------------------------------------------------------------------------------------------------------------
# Public byte-level helpers (shared with the loader, which fills 16-byte address fields in BPF maps).


def is_prime(n) -> bool:
    """True if ``n`` is a prime integer (trial division; fine for table sizes up to a few million)."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 2:
        return False
    if n < 4:
        return True
    if n % 2 == 0:
        return False
    i = 3
    while i * i <= n:
        if n % i == 0:
            return False
        i += 2
    return True


def addr_bytes(addr) -> bytes:
    """16 bytes for an address: IPv4 in the first 4 bytes, zero-padded; IPv6 as is. Accepts str or ip_address."""
    # An address object is taken as is, not parsed again (DataPlane.apply calls this twice per real).
    a = addr if isinstance(addr, (ipaddress.IPv4Address, ipaddress.IPv6Address)) else ipaddress.ip_address(addr)
    return a.packed.ljust(16, b"\0")


def netmask_bytes(family: int, spec) -> bytes:
    """The 16-byte persistence mask for ``spec`` (None = all ones), laid out like :func:`addr_bytes`.

    IPv4: a dotted mask string; non-contiguous masks such as ``255.255.0.255`` are legal, as in IPVS.
    IPv6: a prefix length 1..128, as int or digit string (``64`` or ``"64"``).
    Raises ValueError with an operator-readable message.
    """
    if family == 4:
        if spec is None:
            return b"\xff" * 4 + b"\0" * 12
        if not isinstance(spec, str):
            raise ValueError(f"an IPv4 netmask must be a dotted mask string like \"255.255.255.0\", got {show_value(spec)}")
        try:
            return ipaddress.IPv4Address(spec).packed + b"\0" * 12
        except ValueError:
            raise ValueError(
                f"an IPv4 netmask must be a dotted mask like \"255.255.255.0\", got {show_value(spec)}"
            ) from None
    if family == 6:
        if spec is None:
            return b"\xff" * 16
        plen = None
        if isinstance(spec, int) and not isinstance(spec, bool):
            plen = spec
        elif isinstance(spec, str) and spec.strip().isdigit():
            plen = int(spec.strip())
        if plen is None or not 1 <= plen <= 128:
            raise ValueError(f"an IPv6 netmask must be a prefix length 1..128 (e.g. 64), got {show_value(spec)}")
        return ((1 << 128) - (1 << (128 - plen))).to_bytes(16, "big")
    raise ValueError(f"family must be 4 or 6, got {family!r}")


def mask_address(addr_b16: bytes, mask_b16: bytes) -> bytes:
    """Bytewise AND of a 16-byte address and a 16-byte mask (the persistence-template client key)."""
    if len(addr_b16) != 16 or len(mask_b16) != 16:
        raise ValueError("mask_address takes two 16-byte values")
    return bytes(a & m for a, m in zip(addr_b16, mask_b16))




# ---------------------------------------------------------------------------------------------------------------
# Validation helpers


def show_value(value) -> str:
    """Render a value the way it looks in TOML, for messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return str(value)


# --- [[mark]] ---------------------------------------------------------------------------------------------------


# --- [[service]] ------------------------------------------------------------------------------------------------



