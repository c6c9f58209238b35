"""IPVS sync messages (xlb.sync.wire) pinned byte for byte against the kernel's definitions.

The expected bytes are built here field by field from the structs of net/netfilter/ipvs/ip_vs_sync.c with
struct.pack, independently of the codec's layouts:

    struct ip_vs_sync_mesg  { __u8 reserved; __u8 syncid; __be16 size; __u8 nr_conns; __s8 version; __u16 spare; }
    struct ip_vs_sync_v4    { __u8 type; __u8 protocol; __be16 ver_size; __be32 flags; __be16 state;
                              __be16 cport, vport, dport; __be32 fwmark; __be32 timeout; __be32 caddr, vaddr, daddr; }
    struct ip_vs_sync_v6    { ... the same with struct in6_addr caddr, vaddr, daddr; }      type = STYPE_F_INET6 (1)
    parameters              { __u8 type; __u8 len; data }   SEQ_DATA 1 (2 x struct ip_vs_seq, network order),
                                                              PE_DATA 2, PE_NAME 3, bit 0x40 = optional
    struct ip_vs_sync_mesg_v0 { __u8 nr_conns; __u8 syncid; __be16 size; }
    struct ip_vs_sync_conn_v0 { __u8 reserved; __u8 protocol; __be16 cport, vport, dport; __be32 caddr, vaddr, daddr;
                                __be16 flags; __be16 state; }
"""

import socket
import struct
from ipaddress import ip_address as ip

import pytest

from xlb.sync import wire
from xlb.sync.wire import SyncConn, WireError, decode, encode_messages

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

TCP, UDP = 6, 17
DR, NOOUTPUT, INACTIVE, TEMPLATE, IN_SEQ, OUT_SEQ = 0x3, 0x80, 0x100, 0x1000, 0x400, 0x200


def a4(text):
    return socket.inet_pton(socket.AF_INET, text)


def a6(text):
    return socket.inet_pton(socket.AF_INET6, text)


def header(syncid, size, nr_conns):
    return struct.pack("!BBHBbH", 0, syncid, size, nr_conns, 1, 0)


def entry(proto, ver_size, flags, state, cport, vport, dport, fwmark, timeout, caddr, vaddr, daddr):
    inet6 = len(caddr) == 16
    return (struct.pack("!BBHIHHHHII", 1 if inet6 else 0, proto, ver_size, flags, state, cport, vport, dport,
                        fwmark, timeout) + caddr + vaddr + daddr)


def one_message(syncid, body, nr_conns=1):
    return header(syncid, 8 + len(body), nr_conns) + body


# Each case: a description, the connection, and its entry built by hand.
CASES = [
    ("IPv4 TCP connection, established, DR",
     SyncConn(TCP, ip("203.0.113.7"), 40000, ip("198.51.100.10"), 80, ip("198.18.1.2"), 80,
              DR | NOOUTPUT, wire.TCP_S_ESTABLISHED, 0, 900),
     entry(TCP, 36, 0x83, 1, 40000, 80, 80, 0, 900, a4("203.0.113.7"), a4("198.51.100.10"), a4("198.18.1.2"))),
    ("IPv4 UDP connection, not established",
     SyncConn(UDP, ip("203.0.113.8"), 5353, ip("198.51.100.10"), 53, ip("198.18.1.3"), 53,
              DR | INACTIVE, wire.UDP_S_NORMAL, 0, 300),
     entry(UDP, 36, 0x103, 0, 5353, 53, 53, 0, 300, a4("203.0.113.8"), a4("198.51.100.10"), a4("198.18.1.3"))),
    ("IPv6 TCP connection",
     SyncConn(TCP, ip("2001:db8:c::7"), 51000, ip("2001:db8:100::10"), 443, ip("2001:db8:1::2"), 443,
              DR, wire.TCP_S_SYN_RECV, 0, 60),
     entry(TCP, 72, 0x3, 3, 51000, 443, 443, 0, 60, a6("2001:db8:c::7"), a6("2001:db8:100::10"),
           a6("2001:db8:1::2"))),
    ("IPv4 persistence template, <vip, port> service, client masked /24",
     wire.template(ip("203.0.113.0"), ip("198.51.100.10"), 80, ip("198.18.1.2"), 80, TCP, 300),
     entry(TCP, 36, 0x1003, 0, 0, 80, 80, 0, 300, a4("203.0.113.0"), a4("198.51.100.10"), a4("198.18.1.2"))),
    ("IPv4 port-zero template",
     wire.template(ip("203.0.113.0"), ip("198.51.100.10"), 0, ip("198.18.1.2"), 0, UDP, 600),
     entry(UDP, 36, 0x1003, 0, 0, 0, 0, 0, 600, a4("203.0.113.0"), a4("198.51.100.10"), a4("198.18.1.2"))),
    ("IPv4 firewall-mark template: protocol 0, vaddr = htonl(mark), ports 0",
     wire.fwmark_template(1, ip("203.0.113.0"), ip("198.18.1.2"), 300),
     entry(0, 36, 0x1003, 0, 0, 0, 0, 1, 300, a4("203.0.113.0"), struct.pack("!I", 1), a4("198.18.1.2"))),
    ("IPv6 firewall-mark template: the mark in the first 4 bytes of vaddr",
     wire.fwmark_template(0x01020304, ip("2001:db8:c::"), ip("2001:db8:1::2"), 1800),
     entry(0, 72, 0x1003, 0, 0, 0, 0, 0x01020304, 1800, a6("2001:db8:c::"),
           struct.pack("!I", 0x01020304) + bytes(12), a6("2001:db8:1::2"))),
    ("IPv4 connection of firewall-mark service 7: real VIP and ports, the mark in fwmark",
     SyncConn(TCP, ip("203.0.113.7"), 40001, ip("198.51.100.10"), 443, ip("198.18.1.2"), 443,
              DR, wire.TCP_S_ESTABLISHED, 7, 900),
     entry(TCP, 36, 0x3, 1, 40001, 443, 443, 7, 900, a4("203.0.113.7"), a4("198.51.100.10"), a4("198.18.1.2"))),
]


@pytest.mark.parametrize("desc,conn,raw", CASES, ids=[c[0] for c in CASES])
def test_one_entry_encodes_and_decodes_byte_exact(desc, conn, raw):
    expected = one_message(9, raw)
    assert encode_messages([conn], syncid=9) == [expected]
    got = decode(expected)
    assert (got.refused, got.version, got.syncid, got.conns) == (None, 1, 9, [conn])


def test_fwmark_template_names_its_mark():
    v4 = wire.fwmark_template(0x01020304, ip("203.0.113.0"), ip("198.18.1.2"), 300)
    v6 = wire.fwmark_template(0x01020304, ip("2001:db8:c::"), ip("2001:db8:1::2"), 300)
    assert (v4.template_mark, v6.template_mark) == (0x01020304, 0x01020304)
    assert v4.vaddr == ip("1.2.3.4") and v4.is_template
    assert CASES[0][1].template_mark is None


SEQ = (1000, 20, 10, 5000, 40, 30)
SEQ_RAW = struct.pack("!BB", 1, 24) + struct.pack("!6I", *SEQ)


def test_entries_with_parameters_are_padded_to_32_bits_and_decode():
    with_seq = SyncConn(TCP, ip("203.0.113.7"), 40000, ip("198.51.100.10"), 21, ip("198.18.1.2"), 21,
                        DR | IN_SEQ | OUT_SEQ, wire.TCP_S_ESTABLISHED, 0, 900, seq=SEQ)
    with_pe = SyncConn(UDP, ip("2001:db8:c::7"), 5060, ip("2001:db8:100::10"), 5060, ip("2001:db8:1::2"), 5060,
                       DR | TEMPLATE, 0, 0, 180, pe_data=b"call-id-1", pe_name=b"sip")
    plain = CASES[0][1]
    e1 = entry(TCP, 36 + 26, DR | IN_SEQ | OUT_SEQ, 1, 40000, 21, 21, 0, 900, a4("203.0.113.7"),
               a4("198.51.100.10"), a4("198.18.1.2")) + SEQ_RAW  # 62 bytes: 2 of padding follow
    pe = struct.pack("!BB", 2, 9) + b"call-id-1" + struct.pack("!BB", 3, 3) + b"sip"
    e2 = entry(UDP, 72 + len(pe), DR | TEMPLATE, 0, 5060, 5060, 5060, 0, 180, a6("2001:db8:c::7"),
               a6("2001:db8:100::10"), a6("2001:db8:1::2")) + pe  # 88 bytes: aligned already
    e3 = CASES[0][2]
    body = e1 + b"\0\0" + e2 + e3
    expected = one_message(3, body, nr_conns=3)
    assert len(expected) == 8 + 62 + 2 + 88 + 36
    assert encode_messages([with_seq, with_pe, plain], syncid=3) == [expected]
    assert decode(expected).conns == [with_seq, with_pe, plain]


def test_unknown_parameters_optional_skipped_mandatory_drops_only_its_entry():
    plain, other = CASES[0], CASES[1]
    optional = struct.pack("!BB", 0x40 | 9, 2) + b"xy"
    e1 = entry(TCP, 36 + 4, 0x83, 1, 40000, 80, 80, 0, 900, a4("203.0.113.7"), a4("198.51.100.10"),
               a4("198.18.1.2")) + optional
    got = decode(one_message(1, e1 + other[2], nr_conns=2))
    assert (got.refused, got.conns, dict(got.skipped)) == (None, [plain[1], other[1]], {})
    mandatory = struct.pack("!BB", 9, 2) + b"xy"
    e1m = e1[:-4] + mandatory
    got = decode(one_message(1, e1m + other[2], nr_conns=2))
    assert (got.refused, got.conns, dict(got.skipped)) == (None, [other[1]], {"unknown_mandatory_option": 1})


def test_entries_a_backup_cannot_take_are_skipped_and_counted():
    bad_proto = entry(1, 36, 0x3, 0, 0, 0, 0, 0, 60, a4("203.0.113.7"), a4("198.51.100.10"), a4("198.18.1.2"))
    bad_state = entry(UDP, 36, 0x3, 1, 1, 2, 2, 0, 60, a4("203.0.113.7"), a4("198.51.100.10"), a4("198.18.1.2"))
    pe_alone = entry(UDP, 36 + 4, 0x3, 0, 1, 2, 2, 0, 60, a4("203.0.113.7"), a4("198.51.100.10"),
                     a4("198.18.1.2")) + struct.pack("!BB", 2, 2) + b"id"
    tpl_any_state = entry(TCP, 36, 0x1003, 9, 0, 80, 80, 0, 300, a4("203.0.113.0"), a4("198.51.100.10"),
                          a4("198.18.1.2"))  # a template's state is not checked (the kernel only logs it)
    got = decode(one_message(1, bad_proto + bad_state + pe_alone + tpl_any_state, nr_conns=4))
    assert got.refused is None
    assert dict(got.skipped) == {"unsupported_protocol": 1, "bad_state": 1, "pe_data_without_name": 1}
    assert [c.state for c in got.conns] == [9]


GOOD = CASES[0][2]
V6_GOOD = CASES[2][2]


def _with_ver_size(raw, ver_size):
    return raw[:2] + struct.pack("!H", ver_size) + raw[4:]


REFUSALS = [
    ("shorter than any header", b"\0\x01\0", 0, "short_header"),
    ("size field is not the datagram's length", header(1, 99, 1) + GOOD, 0, "bad_size"),
    ("another syncid", one_message(2, GOOD), 1, "wrong_syncid"),
    ("nr_conns promises more entries than there are", one_message(1, GOOD, nr_conns=2), 0, "entry_truncated"),
    ("ver_size runs past the datagram", one_message(1, _with_ver_size(GOOD, 40)), 0, "entry_overrun"),
    ("entry version is not 0", one_message(1, _with_ver_size(GOOD, 0x1000 | 36)), 0, "entry_version"),
    ("unknown entry type", one_message(1, b"\x02" + GOOD[1:]), 0, "entry_type"),
    ("IPv6 entry whose size holds only an IPv4 one", one_message(1, _with_ver_size(V6_GOOD, 36) + V6_GOOD[36:]),
     0, "entry_short"),
    ("one byte of a parameter header", one_message(1, _with_ver_size(GOOD, 37) + b"\x01"), 0, "option_truncated"),
    ("parameter of length 0", one_message(1, _with_ver_size(GOOD, 38) + b"\x01\x00"), 0, "option_length"),
    ("parameter longer than its entry", one_message(1, _with_ver_size(GOOD, 40) + b"\x01\x05ab"), 0,
     "option_length"),
    ("sequence parameter of the wrong length", one_message(1, _with_ver_size(GOOD, 40) + b"\x01\x02ab"), 0,
     "seq_option"),
    ("sequence parameter twice", one_message(1, _with_ver_size(GOOD, 36 + 52) + SEQ_RAW + SEQ_RAW), 0,
     "seq_option"),
    ("persistence-engine data twice", one_message(1, _with_ver_size(GOOD, 44) + b"\x02\x02ab\x02\x02ab"), 0,
     "pe_data_option"),
    ("persistence-engine name over 16 bytes", one_message(1, _with_ver_size(GOOD, 36 + 19) + b"\x03\x11"
                                                          + b"n" * 17 + b"\0"), 0, "pe_name_option"),
]


@pytest.mark.parametrize("desc,raw,syncid,reason", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_malformed_messages_are_refused_whole_with_a_reason(desc, raw, syncid, reason):
    got = decode(raw, syncid=syncid)
    assert (got.refused, got.conns) == (reason, [])
    assert reason in wire.REFUSED


def test_a_refused_message_keeps_none_of_the_entries_before_the_fault():
    got = decode(one_message(1, GOOD + GOOD, nr_conns=3))
    assert (got.refused, got.conns) == ("entry_truncated", [])


def test_version_0_messages_decode_with_no_timeout_nor_mark():
    def v0_entry(proto, cport, vport, dport, c, v, d, flags, state):
        return struct.pack("!BBHHH", 0, proto, cport, vport, dport) + a4(c) + a4(v) + a4(d) + struct.pack(
            "!HH", flags, state)
    e1 = v0_entry(TCP, 40000, 80, 80, "203.0.113.7", "198.51.100.10", "198.18.1.2", 0x83, 1)
    e2 = v0_entry(TCP, 0, 80, 80, "203.0.113.0", "198.51.100.10", "198.18.1.2", 0x1003, 0)
    seq_native = struct.pack("=6I", *SEQ)  # v0 copies the host's struct ip_vs_seq as it is
    e3 = v0_entry(TCP, 40002, 21, 21, "203.0.113.9", "198.51.100.10", "198.18.1.2", 0x603, 1) + seq_native
    raw = struct.pack("!BBH", 3, 5, 4 + len(e1 + e2 + e3)) + e1 + e2 + e3
    got = decode(raw, syncid=5)
    assert (got.refused, got.version, got.syncid) == (None, 0, 5)
    assert got.conns == [
        SyncConn(TCP, ip("203.0.113.7"), 40000, ip("198.51.100.10"), 80, ip("198.18.1.2"), 80, 0x83, 1),
        SyncConn(TCP, ip("203.0.113.0"), 0, ip("198.51.100.10"), 80, ip("198.18.1.2"), 80, 0x1003, 0),
        SyncConn(TCP, ip("203.0.113.9"), 40002, ip("198.51.100.10"), 21, ip("198.18.1.2"), 21, 0x603, 1, seq=SEQ),
    ]
    assert decode(raw[:-4]).refused == "bad_size"
    assert decode(struct.pack("!BBH", 2, 5, 4 + 24) + e1).refused == "entry_truncated"


def _conns(n):
    return [SyncConn(TCP, ip(f"203.0.113.{i % 250}"), 1024 + i, ip("198.51.100.10"), 80, ip("198.18.1.2"), 80,
                     DR, 1, 0, 900) for i in range(n)]


def test_messages_are_bounded_by_the_sync_payload_size_like_a_kernel_master():
    messages = encode_messages(_conns(100), syncid=1)  # 1472 bytes: 8 + 40 x 36 = 1448, a 41st does not fit
    assert [m[4] for m in messages] == [40, 40, 20]
    assert all(len(m) <= wire.DEFAULT_MAXLEN for m in messages)
    assert [c for m in messages for c in decode(m).conns] == _conns(100)


def test_a_message_holds_at_most_255_entries():
    messages = encode_messages(_conns(300), syncid=1, maxlen=60000)
    assert [m[4] for m in messages] == [255, 45]


@pytest.mark.parametrize("field,value", [("cport", 70000), ("flags", -1), ("timeout", 1 << 32), ("state", 1 << 16)])
def test_out_of_range_fields_are_refused_naming_the_field(field, value):
    conn = CASES[0][1]
    bad = SyncConn(**{**conn.__dict__, field: value})
    with pytest.raises(WireError, match=field):
        encode_messages([bad], syncid=1)


def test_addresses_of_two_families_are_refused():
    bad = SyncConn(TCP, ip("203.0.113.7"), 1, ip("2001:db8::1"), 80, ip("198.18.1.2"), 80)
    with pytest.raises(WireError, match="two families"):
        wire.encode_conn(bad)


# ---------------------------------------------------------------------------------------------------------
# Properties

u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)


@st.composite
def sync_conns(draw):
    size = draw(st.sampled_from([4, 16]))  # IPv4 or IPv6: one family per entry
    addr = st.binary(min_size=size, max_size=size).map(ip)
    flags = draw(u32)
    if flags & TEMPLATE:
        protocol, state = draw(st.integers(0, 255)), draw(u16)
    else:
        protocol = draw(st.sampled_from(sorted(wire.PROTOCOL_STATES)))
        state = draw(st.integers(0, wire.PROTOCOL_STATES[protocol] - 1))
    pe_data = draw(st.none() | st.binary(min_size=1, max_size=255))
    pe_name = draw(st.none() | st.binary(min_size=1, max_size=16)) if pe_data is not None else None
    if pe_data is not None and pe_name is None:
        pe_name = b"sip"
    return SyncConn(protocol, draw(addr), draw(u16), draw(addr), draw(u16), draw(addr), draw(u16), flags, state,
                    draw(u32), draw(u32), draw(st.none() | st.tuples(u32, u32, u32, u32, u32, u32)), pe_data,
                    pe_name)


@settings(max_examples=300, deadline=None)
@given(st.lists(sync_conns(), min_size=1, max_size=60), st.integers(1, 255))
def test_decode_of_encode_is_identity(conns, syncid):
    messages = encode_messages(conns, syncid=syncid)
    assert all(len(m) <= wire.DEFAULT_MAXLEN for m in messages)
    decoded = [decode(m, syncid=syncid) for m in messages]
    assert all(d.refused is None and not d.skipped for d in decoded)
    assert [c for d in decoded for c in d.conns] == conns


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_never_raise(raw):
    got = decode(raw)
    assert got.refused is None or got.refused in wire.REFUSED
    assert set(got.skipped) <= set(wire.SKIPPED)


@settings(max_examples=1000, deadline=None)
@given(st.lists(sync_conns(), min_size=1, max_size=5), st.data())
def test_corrupted_messages_never_raise(conns, data):
    raw = bytearray(encode_messages(conns, syncid=1)[0])
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    got = decode(bytes(raw))
    assert got.refused is None or got.refused in wire.REFUSED
