"""The IPVS connection-synchronisation protocol, as the kernel's sync daemon speaks it (net/netfilter/ipvs/
ip_vs_sync.c, include/uapi/linux/ip_vs.h): UDP datagrams to 224.0.0.81:8848, each one message of an 8-byte header
and up to 255 connection entries (36 bytes for IPv4, 72 for IPv6, then optional parameters).

Every structure is one declared `Layout` below; `encode_conn`/`Packer` build version 1 messages exactly as a
kernel master does (entries 32-bit aligned, a message never longer than the sync payload size), and `decode`
reads versions 1 and 0 as a kernel backup does, with one difference: where the kernel stops in the middle of a
bad message after applying the entries before the fault, `decode` refuses the whole message. It never raises on
bytes off the wire: a refused message or a skipped entry is reported by a reason name (`REFUSED`, `SKIPPED`)
that the receiver counts.

Semantics the kernel gives the fields (what the daemon must produce and expect):
- ports and addresses are in network order; `timeout` is in seconds; `flags` carry the forwarding method
  (DR = 3) and `CONN_F_INACTIVE` for a connection that is not established;
- a persistence template has `CONN_F_TEMPLATE`, the client address AND the service's netmask, client port 0;
  for a `<vip, port>` service its vport/dport are the service's ports, for a port-zero service 0;
- a firewall-mark service's template has protocol 0 (IPPROTO_IP), the mark in place of the VIP (`mark_address`:
  the mark in network order in the first 4 bytes of the address, the rest zero) and ports 0; its connections
  carry the real VIP, protocol and ports, and the mark in `fwmark`.
"""

import ipaddress
import struct
from collections import Counter
from dataclasses import dataclass, field

from xlb.errors import XlbError

SYNC_GROUP = "224.0.0.81"  # IP_VS_SYNC_GROUP
SYNC_PORT = 8848  # IP_VS_SYNC_PORT
SYNC_PROTO_VER = 1
HEADERS_V4, HEADERS_V6 = 20 + 8, 40 + 8  # the IP and UDP headers around a message
DEFAULT_MAXLEN = 1500 - HEADERS_V4  # a master's sync_maxlen: 1500 bytes less the IPv4 and UDP headers
MAX_CONNS = 255  # nr_conns is one byte

IPPROTO_IP, IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP = 0, 6, 17, 132

# Connection flags (include/uapi/linux/ip_vs.h); only bits 0..15 are ever sent.
CONN_F_FWD_MASK = 0x0007
CONN_F_MASQ = 0x0000
CONN_F_LOCALNODE = 0x0001
CONN_F_TUNNEL = 0x0002
CONN_F_DROUTE = 0x0003
CONN_F_BYPASS = 0x0004
CONN_F_SYNC = 0x0020  # set by a backup on what it received
CONN_F_HASHED = 0x0040  # never sent
CONN_F_NOOUTPUT = 0x0080
CONN_F_INACTIVE = 0x0100  # not established
CONN_F_OUT_SEQ = 0x0200
CONN_F_IN_SEQ = 0x0400
CONN_F_SEQ_MASK = 0x0600
CONN_F_NO_CPORT = 0x0800
CONN_F_TEMPLATE = 0x1000
CONN_F_ONE_PACKET = 0x2000
# What a backup keeps of received flags (it adds CONN_F_SYNC).
CONN_F_BACKUP_MASK = (CONN_F_FWD_MASK | CONN_F_NOOUTPUT | CONN_F_INACTIVE | CONN_F_SEQ_MASK | CONN_F_NO_CPORT
                      | CONN_F_TEMPLATE)

# States (include/net/ip_vs.h). TCP: IP_VS_TCP_S_*; UDP has one; templates use CTPL.
(TCP_S_NONE, TCP_S_ESTABLISHED, TCP_S_SYN_SENT, TCP_S_SYN_RECV, TCP_S_FIN_WAIT, TCP_S_TIME_WAIT, TCP_S_CLOSE,
 TCP_S_CLOSE_WAIT, TCP_S_LAST_ACK, TCP_S_LISTEN, TCP_S_SYNACK, TCP_S_LAST) = range(12)
UDP_S_NORMAL = 0
CTPL_S_NONE, CTPL_S_ASSURED, CTPL_S_LAST = 0, 1, 2
# Protocols a backup accepts for connections (not templates), with their number of states.
PROTOCOL_STATES = {IPPROTO_TCP: TCP_S_LAST, IPPROTO_UDP: 1, IPPROTO_SCTP: 14}

STYPE_F_INET6 = 0x01  # entry type bit: IPv6 addresses
SVER_SHIFT, SVER_MASK = 12, 0x0FFF  # ver_size: entry version in the top 4 bits (0), size in the rest
OPT_SEQ_DATA, OPT_PE_DATA, OPT_PE_NAME = 1, 2, 3  # parameter types
OPT_F_PARAM = 0x40  # in a parameter type: optional, skip it when unknown
PEDATA_MAXLEN, PENAME_MAXLEN = 255, 16

# Why a whole message was refused (the kernel's "Dropping buffer" cases, and the syncid filter).
REFUSED = ("short_header", "bad_size", "wrong_syncid", "entry_truncated", "entry_overrun", "entry_version",
           "entry_type", "entry_short", "option_truncated", "option_length", "seq_option", "pe_data_option",
           "pe_name_option")
# Why one entry was skipped while the rest of its message was used (the kernel's "Single msg dropped").
SKIPPED = ("unknown_mandatory_option", "unsupported_protocol", "bad_state", "pe_data_without_name")


class WireError(XlbError):
    """A connection that cannot be put in a sync message (a field out of its range); names the field."""


class Layout:
    """One wire structure: its fields in order, each a name and a `struct` code; network order unless told."""

    def __init__(self, name, fields, order="!"):
        self.name = name
        self.names = tuple(n for n, _ in fields)
        self.struct = struct.Struct(order + "".join(code for _, code in fields))
        self.size = self.struct.size

    def pack(self, **values):
        return self.struct.pack(*(values[n] for n in self.names))

    def unpack(self, buf, offset=0):
        return dict(zip(self.names, self.struct.unpack_from(buf, offset)))


MESSAGE_V1 = Layout("ip_vs_sync_mesg", (
    ("reserved", "B"),  # 0: a version 0 receiver reads it as nr_conns and drops the message
    ("syncid", "B"), ("size", "H"),  # size: the whole message, header included
    ("nr_conns", "B"), ("version", "b"), ("spare", "H")))
MESSAGE_V0 = Layout("ip_vs_sync_mesg_v0", (("nr_conns", "B"), ("syncid", "B"), ("size", "H")))
_CONN_HEAD = (
    ("type", "B"),  # STYPE_F_INET6 or 0
    ("protocol", "B"), ("ver_size", "H"),  # ver_size: the entry with its parameters, without padding
    ("flags", "I"), ("state", "H"), ("cport", "H"), ("vport", "H"), ("dport", "H"),
    ("fwmark", "I"), ("timeout", "I"))  # timeout: seconds
CONN_V4 = Layout("ip_vs_sync_v4", _CONN_HEAD + (("caddr", "4s"), ("vaddr", "4s"), ("daddr", "4s")))
CONN_V6 = Layout("ip_vs_sync_v6", _CONN_HEAD + (("caddr", "16s"), ("vaddr", "16s"), ("daddr", "16s")))
CONN_V0 = Layout("ip_vs_sync_conn_v0", (
    ("reserved", "B"), ("protocol", "B"), ("cport", "H"), ("vport", "H"), ("dport", "H"),
    ("caddr", "4s"), ("vaddr", "4s"), ("daddr", "4s"), ("flags", "H"), ("state", "H")))
PARAM = Layout("parameter header", (("type", "B"), ("len", "B")))  # len: the data after this header
_SEQ = (("in_init_seq", "I"), ("in_delta", "I"), ("in_previous_delta", "I"),
        ("out_init_seq", "I"), ("out_delta", "I"), ("out_previous_delta", "I"))
SEQ_OPTIONS = Layout("ip_vs_sync_conn_options", _SEQ)
SEQ_OPTIONS_V0 = Layout("ip_vs_sync_conn_options (v0)", _SEQ, order="=")  # v0 copies the host's struct


def group_family(group):
    """4 or 6: the family of a sync group address (a string)."""
    return ipaddress.ip_address(group).version


def default_maxlen(group):
    """A master's message length for `group`, as the kernel's: 1500 bytes less the IP and UDP headers."""
    return 1500 - (HEADERS_V6 if group_family(group) == 6 else HEADERS_V4)


def mark_address(mark, version=4):
    """The address a firewall-mark template carries in place of the VIP: htonl(mark) in the first 4 bytes."""
    return ipaddress.IPv4Address(mark) if version == 4 else ipaddress.IPv6Address(mark << 96)


@dataclass(frozen=True)
class SyncConn:
    """One synced connection or persistence template (one entry of a message)."""

    protocol: int  # IPPROTO_TCP, IPPROTO_UDP...; IPPROTO_IP in a firewall-mark template
    caddr: ipaddress.IPv4Address | ipaddress.IPv6Address  # a template: the client AND the netmask
    cport: int
    vaddr: ipaddress.IPv4Address | ipaddress.IPv6Address  # a firewall-mark template: mark_address(mark)
    vport: int
    daddr: ipaddress.IPv4Address | ipaddress.IPv6Address  # the real
    dport: int
    flags: int = CONN_F_DROUTE
    state: int = 0
    fwmark: int = 0
    timeout: int = 0  # seconds; 0 from a v0 message (the backup then uses its own timeouts)
    seq: tuple | None = None  # the six SEQ_OPTIONS fields, in order (NAT sequence adjustment)
    pe_data: bytes | None = None  # persistence-engine data (1..255 bytes)
    pe_name: bytes | None = None  # its engine ("sip"), sent only with pe_data

    @property
    def family(self):
        return self.caddr.version

    @property
    def is_template(self):
        return bool(self.flags & CONN_F_TEMPLATE)

    @property
    def template_mark(self):
        """The mark of a firewall-mark service's template, else None."""
        if not self.is_template or self.protocol != IPPROTO_IP:
            return None
        return int(self.vaddr) >> (0 if self.family == 4 else 96)


def template(caddr, vaddr, vport, daddr, dport, protocol, timeout, flags=CONN_F_DROUTE, state=CTPL_S_NONE,
             fwmark=0):
    """A persistence template of a `<protocol, vaddr, vport>` service (vport = dport = 0 for port zero);
    `caddr` must already be masked with the service's netmask."""
    return SyncConn(protocol, caddr, 0, vaddr, vport, daddr, dport, flags | CONN_F_TEMPLATE, state, fwmark,
                    timeout)


def fwmark_template(mark, caddr, daddr, timeout, flags=CONN_F_DROUTE, state=CTPL_S_NONE):
    """A persistence template of firewall-mark service `mark` (ip_vs_sched_persist's
    `<IPPROTO_IP, caddr, 0, fwmark, 0, daddr, 0>`); the family is the client's."""
    return SyncConn(IPPROTO_IP, caddr, 0, mark_address(mark, caddr.version), 0, daddr, 0,
                    flags | CONN_F_TEMPLATE, state, mark, timeout)


# ---------------------------------------------------------------------------------------------------------
# Encoding (a master)

_RANGES = (("protocol", 0xFF), ("cport", 0xFFFF), ("vport", 0xFFFF), ("dport", 0xFFFF), ("flags", 0xFFFFFFFF),
           ("state", 0xFFFF), ("fwmark", 0xFFFFFFFF), ("timeout", 0xFFFFFFFF))


def _check(conn):
    for name, top in _RANGES:
        value = getattr(conn, name)
        if not isinstance(value, int) or not 0 <= value <= top:
            raise WireError(f"sync entry: {name} = {value!r} is not within 0..{top}")
    if not conn.caddr.version == conn.vaddr.version == conn.daddr.version:
        raise WireError(f"sync entry: addresses of two families ({conn.caddr}, {conn.vaddr}, {conn.daddr})")
    if conn.seq is not None and (len(conn.seq) != 6 or not all(0 <= v <= 0xFFFFFFFF for v in conn.seq)):
        raise WireError(f"sync entry: seq = {conn.seq!r} is not six 32-bit values")
    if conn.pe_data is not None and not 1 <= len(conn.pe_data) <= PEDATA_MAXLEN:
        raise WireError(f"sync entry: pe_data of {len(conn.pe_data)} bytes (1..{PEDATA_MAXLEN})")
    if conn.pe_name is not None and (conn.pe_data is None or not 1 <= len(conn.pe_name) <= PENAME_MAXLEN):
        raise WireError(f"sync entry: pe_name {conn.pe_name!r} needs pe_data and 1..{PENAME_MAXLEN} bytes")


def _param(kind, data):
    return PARAM.pack(type=kind, len=len(data)) + data


def encode_conn(conn):
    """One version 1 entry (without the padding that aligns the next one); WireError if a field is out of range."""
    _check(conn)
    layout = CONN_V6 if conn.family == 6 else CONN_V4
    params = b""
    if conn.seq is not None:
        params += _param(OPT_SEQ_DATA, SEQ_OPTIONS.pack(**dict(zip(SEQ_OPTIONS.names, conn.seq))))
    if conn.pe_data is not None:
        params += _param(OPT_PE_DATA, conn.pe_data)
        if conn.pe_name is not None:
            params += _param(OPT_PE_NAME, conn.pe_name)
    return layout.pack(
        type=STYPE_F_INET6 if conn.family == 6 else 0, protocol=conn.protocol,
        ver_size=(layout.size + len(params)) & SVER_MASK, flags=conn.flags, state=conn.state, cport=conn.cport,
        vport=conn.vport, dport=conn.dport, fwmark=conn.fwmark, timeout=conn.timeout,
        caddr=conn.caddr.packed, vaddr=conn.vaddr.packed, daddr=conn.daddr.packed) + params


class Packer:
    """Fills version 1 messages as a kernel master fills its sync buffer: each entry starts 32-bit aligned, a
    message holds what fits in `maxlen` bytes (at most 255 entries); an entry that does not fit closes it.

    `add()` returns the message it closed (to send), or None; `flush()` closes the current one (None if empty).
    """

    def __init__(self, syncid, maxlen=DEFAULT_MAXLEN):
        if not 0 <= syncid <= 255:
            raise WireError(f"syncid {syncid} is not within 0..255")
        if maxlen < MESSAGE_V1.size + CONN_V4.size:
            raise WireError(f"sync message size {maxlen} is below {MESSAGE_V1.size + CONN_V4.size} bytes")
        self.syncid = syncid
        self.maxlen = maxlen
        self._parts = []
        self._size = MESSAGE_V1.size

    def __len__(self):
        return len(self._parts)

    def add(self, conn):
        entry = encode_conn(conn)
        closed = None
        pad = -self._size & 3 if self._parts else 0
        if self._parts and (self._size + pad + len(entry) > self.maxlen or len(self._parts) == MAX_CONNS):
            closed = self.flush()
            pad = 0
        self._parts.append(b"\0" * pad + entry)
        self._size += pad + len(entry)
        return closed

    def flush(self):
        if not self._parts:
            return None
        head = MESSAGE_V1.pack(reserved=0, syncid=self.syncid, size=self._size, nr_conns=len(self._parts),
                               version=SYNC_PROTO_VER, spare=0)
        message = head + b"".join(self._parts)
        self._parts = []
        self._size = MESSAGE_V1.size
        return message


def encode_messages(conns, syncid, maxlen=DEFAULT_MAXLEN):
    """All of `conns` as version 1 messages, in order."""
    packer = Packer(syncid, maxlen)
    messages = [m for m in map(packer.add, conns) if m is not None]
    last = packer.flush()
    return messages + ([last] if last is not None else [])


# ---------------------------------------------------------------------------------------------------------
# Decoding (a backup)


@dataclass
class Decoded:
    """What one datagram held: the entries taken, or why the whole message was refused."""

    version: int | None = None
    syncid: int | None = None
    conns: list = field(default_factory=list)
    refused: str | None = None  # one of REFUSED; conns is then empty
    skipped: Counter = field(default_factory=Counter)  # entries skipped alone, by SKIPPED reason


class _Refuse(Exception):
    def __init__(self, reason):
        self.reason = reason


def _address(raw):
    return ipaddress.IPv4Address(raw) if len(raw) == 4 else ipaddress.IPv6Address(raw)


def _check_kind(protocol, flags, state):
    """None when a backup takes the entry, else the reason it skips it (templates are not checked)."""
    if flags & CONN_F_TEMPLATE:
        return None
    if protocol not in PROTOCOL_STATES:
        return "unsupported_protocol"
    return "bad_state" if state >= PROTOCOL_STATES[protocol] else None


def _params(data, p, stop):
    """The parameters of one v1 entry: (seq, pe_data, pe_name, skip reason or None); _Refuse when malformed."""
    seq = pe_data = pe_name = None
    while p < stop:
        if p + PARAM.size > stop:
            raise _Refuse("option_truncated")
        head = PARAM.unpack(data, p)
        p += PARAM.size
        kind, size = head["type"] & ~OPT_F_PARAM, head["len"]
        if size == 0 or p + size > stop:
            raise _Refuse("option_length")
        value = data[p:p + size]
        if kind == OPT_SEQ_DATA:
            if size != SEQ_OPTIONS.size or seq is not None:
                raise _Refuse("seq_option")
            seq = tuple(SEQ_OPTIONS.unpack(value).values())
        elif kind == OPT_PE_DATA:
            if pe_data is not None:
                raise _Refuse("pe_data_option")
            pe_data = value
        elif kind == OPT_PE_NAME:
            if size > PENAME_MAXLEN or pe_name is not None:
                raise _Refuse("pe_name_option")
            pe_name = value
        elif not head["type"] & OPT_F_PARAM:
            return seq, pe_data, pe_name, "unknown_mandatory_option"
        p += size
    return seq, pe_data, pe_name, None


def _entry_v1(data, p, stop):
    """One v1 entry between p and stop: a SyncConn, or the reason a backup skips it; _Refuse when malformed."""
    kind = data[p]
    if kind & STYPE_F_INET6:
        layout = CONN_V6
    elif kind == 0:
        layout = CONN_V4
    else:
        raise _Refuse("entry_type")
    if p + layout.size > stop:
        raise _Refuse("entry_short")
    s = layout.unpack(data, p)
    seq, pe_data, pe_name, skip = _params(data, p + layout.size, stop)
    skip = skip or _check_kind(s["protocol"], s["flags"], s["state"])
    if skip is None and pe_data is not None and pe_name is None:
        skip = "pe_data_without_name"
    if skip:
        return skip
    return SyncConn(s["protocol"], _address(s["caddr"]), s["cport"], _address(s["vaddr"]), s["vport"],
                    _address(s["daddr"]), s["dport"], s["flags"], s["state"], s["fwmark"], s["timeout"], seq,
                    pe_data, pe_name if pe_data is not None else None)


def _decode_v1(data, out):
    h = MESSAGE_V1.unpack(data)
    out.version = SYNC_PROTO_VER
    p = MESSAGE_V1.size
    for _ in range(h["nr_conns"]):
        if p + CONN_V4.size > len(data):
            raise _Refuse("entry_truncated")
        ver_size = CONN_V4.unpack(data, p)["ver_size"]
        size = ver_size & SVER_MASK
        if p + size > len(data):
            raise _Refuse("entry_overrun")
        if ver_size >> SVER_SHIFT:
            raise _Refuse("entry_version")
        entry = _entry_v1(data, p, p + size)
        if isinstance(entry, str):
            out.skipped[entry] += 1
        else:
            out.conns.append(entry)
        p += (size + 3) & ~3


def _decode_v0(data, out):
    out.version = 0
    p = MESSAGE_V0.size
    for _ in range(data[0]):
        if p + CONN_V0.size > len(data):
            raise _Refuse("entry_truncated")
        s = CONN_V0.unpack(data, p)
        p += CONN_V0.size
        seq = None
        if s["flags"] & CONN_F_SEQ_MASK:
            if p + SEQ_OPTIONS_V0.size > len(data):
                raise _Refuse("entry_truncated")
            seq = tuple(SEQ_OPTIONS_V0.unpack(data, p).values())
            p += SEQ_OPTIONS_V0.size
        skip = _check_kind(s["protocol"], s["flags"], s["state"])
        if skip:
            out.skipped[skip] += 1
            continue
        out.conns.append(SyncConn(s["protocol"], _address(s["caddr"]), s["cport"], _address(s["vaddr"]),
                                  s["vport"], _address(s["daddr"]), s["dport"], s["flags"], s["state"], seq=seq))


def decode(data, syncid=0):
    """Read one datagram as a backup with `syncid` does (0 takes every syncid). Never raises on its bytes."""
    data = bytes(data)
    out = Decoded()
    try:
        if len(data) < MESSAGE_V0.size:
            raise _Refuse("short_header")
        h = MESSAGE_V0.unpack(data)
        out.syncid = h["syncid"]
        if h["size"] != len(data):
            raise _Refuse("bad_size")
        if syncid and h["syncid"] != syncid:
            raise _Refuse("wrong_syncid")
        v1 = len(data) >= MESSAGE_V1.size and MESSAGE_V1.unpack(data)
        if v1 and v1["version"] == SYNC_PROTO_VER and v1["reserved"] == 0 and v1["spare"] == 0:
            _decode_v1(data, out)
        else:
            _decode_v0(data, out)
    except _Refuse as e:
        out.refused = e.reason
        out.conns = []
        out.skipped = Counter()
    return out
