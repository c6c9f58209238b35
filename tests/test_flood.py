"""A SYN flood and table pressure through BPF_PROG_TEST_RUN (docs/reliability.md, "SYN flood", "Table pressure").

The SYN-flood defense ([tables] half_open, on by default; bpf/halfopen.h): a new TCP connection's entry, and a
template it creates, wait in their own small LRU tables until the client's handshake ACK promotes them to conns and
persist. A flood of SYNs from random sources that never answer evicts only half-open entries.

Table pressure: with more live flows than the connection table holds, a flow whose entry the LRU evicted is placed
anew by its next packet (counted as a mid-stream event); with sh, mh or consistent persistence it lands on its real.
"""
import ctypes as ct
import dataclasses
import ipaddress
import random
import struct

import pytest
from harness import CLIENT_MAC, GW_MAC, LB_MAC, REAL_MAC, TEST_CFLAGS, TEST_TABLES, conn_key, real_of, tcp4, to_real
from natframes import L4, nat_in, nat_out, quote, requoted
from natframes import reply as real_reply
from natframes import svc as nat_service
from scapy.layers.inet import ICMP, IP, TCP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from xlb.dataplane import structs as S
from xlb.dataplane.mapkeys import NS, now_ns
from xlb.dataplane.apply import DataPlane
from xlb.dataplane.program import Program, cflags_for, half_open_size

VIP, VIP_P = "198.51.100.10", "198.51.100.11"
REALS = ("198.18.0.11", "198.18.0.12", "198.18.0.13")
HALF = half_open_size(TEST_TABLES.conns)          # the half-open tables' capacity in the test build
CONNS = TEST_TABLES.conns


def svc(vip, scheduler="rr", extra=""):
    body = "".join(f'[[service.real]]\naddress = "{a}"\n' for a in REALS)
    return f'[[service]]\nvip = "{vip}"\nport = 80\nproto = "tcp"\nscheduler = "{scheduler}"\n{extra}\n{body}'


def reset(bench, text):
    """bench.reset, with the defense on (the product's default; the shared bench runs it off)."""
    dp = bench.reset(text)
    tables = dataclasses.replace(TEST_TABLES, half_open=True)
    dp.apply(dataclasses.replace(dp.config, tables=tables))
    return dp


def client(i):
    """The i-th established client: addresses in 198.18.128.0/17, ports from 20000."""
    return f"198.18.{128 + i // 250 % 120}.{i % 250 + 1}", 20000 + i % 40000


def flood_source(rng):
    """A random source in 198.19.0.0/16 (never an established client's) and port."""
    return str(ipaddress.IPv4Address(0xC6130000 | rng.randrange(1, 1 << 16))), rng.randrange(1024, 65536)


def send(bench, pkt):
    """Run pkt; it must leave to a real, byte for byte as DR sends it. Returns the real."""
    action, out = bench.run(pkt)
    assert action == "XDP_TX", (action, bench.verdicts())
    real = real_of(out)
    assert out == to_real(pkt, real)
    return real


_TEMPLATES = {}


def frame(src, sport, dst=VIP, flags="S", payload=b""):
    """tcp4's frame from src:sport, by patching one built once (checksums not redone: DR never reads them)."""
    key = (dst, flags, payload)
    if key not in _TEMPLATES:
        _TEMPLATES[key] = bytes(tcp4(dst=dst, flags=flags, payload=payload))
    b = bytearray(_TEMPLATES[key])
    b[26:30] = ipaddress.IPv4Address(src).packed
    b[34:36] = struct.pack("!H", sport)
    return bytes(b)


def send_frame(bench, data):
    """Run a frame; it must leave to a real with only its Ethernet addresses rewritten (DR). Returns the real."""
    action, out = bench.run(data)
    assert action == "XDP_TX", (action, bench.verdicts())
    real = real_of(out)
    assert out == bytes.fromhex(REAL_MAC[real].replace(":", "") + LB_MAC.replace(":", "")) + data[12:]
    return real


def flood(bench, n, dst=VIP, seed=18):
    """n SYNs from random sources that never answer; every one is forwarded (the flood is not ours to judge)."""
    rng = random.Random(seed)
    for _ in range(n):
        action, _out = bench.run(frame(*flood_source(rng), dst=dst))
        assert action == "XDP_TX"


def established(bench, n, dst=VIP, first=0):
    """n clients that complete their handshake (SYN, then ACK); {(src, sport): real}."""
    out = {}
    for i in range(first, first + n):
        src, sport = client(i)
        real = send_frame(bench, frame(src, sport, dst, "S"))
        assert send_frame(bench, frame(src, sport, dst, "A")) == real
        out[(src, sport)] = real
    return out


def events(dp):
    return dp.conn_events()


def count_entries(dp, name):
    return sum(1 for _ in dp.m[name].keys())


# -- the handshake -----------------------------------------------------------------------------------------------


def test_syn_waits_in_half_open_until_its_ack(bench):
    dp = reset(bench, svc(VIP))
    syn = tcp4(flags="S")
    real = send(bench, syn)
    key = conn_key(syn)
    assert dp.m["conns"].get(key) is None
    half = dp.m["half_open"][key]
    assert half.state == S.CONN_STATE["syn"] and half.real_id
    assert send(bench, tcp4(flags="S")) == real                  # a retransmitted SYN follows it, still half-open
    assert dp.m["conns"].get(key) is None
    assert send(bench, tcp4(flags="A")) == real                  # the ACK promotes it
    assert dp.m["half_open"].get(key) is None
    entry = dp.m["conns"][key]
    assert (entry.state, entry.real_id) == (S.CONN_STATE["est"], half.real_id)
    assert dp.real_conn_counts()[half.real_id] == (1, 0)         # moved from inactive to active
    assert send(bench, tcp4(flags="PA", payload=b"GET /")) == real
    assert events(dp) == {"half_open": 1, "promoted": 1, "midstream": 0}


def test_metrics_show_half_open_entries_and_events(bench):
    from xlb.observe import metrics
    dp = reset(bench, svc(VIP))
    send(bench, tcp4(flags="S"))
    send(bench, tcp4(sport=40001, flags="S"))
    send(bench, tcp4(flags="A"))                                 # promoted
    send(bench, tcp4(sport=40002, flags="A"))                    # mid-stream, no entry: placed anew
    rows = metrics.XlbCollector(dp).read()
    assert dict((v[0], n) for v, n in rows["xlb_conn_events"]) == {"half_open": 2, "promoted": 1, "midstream": 1}
    fill = dict((v[0], n) for v, n in rows["xlb_table_entries"])
    assert (fill["half_open"], fill["connections"]) == (1, 2)
    assert dict((v[0], n) for v, n in rows["xlb_table_capacity"])["half_open"] == HALF
    assert dp.has_connection(conn_key(tcp4(sport=40001)))


def test_template_waits_with_its_half_open_connection(bench):
    dp = reset(bench, svc(VIP_P, extra="persistence_timeout = 300\n"))
    syn = tcp4(dst=VIP_P, flags="S")
    real = send(bench, syn)
    assert count_entries(dp, "persist") == 0 and count_entries(dp, "persist_half") == 1
    # a second connection of the client before the first completes: the half-open template places it
    assert send(bench, tcp4(dst=VIP_P, sport=40001, flags="S")) == real
    send(bench, tcp4(dst=VIP_P, flags="A"))
    assert count_entries(dp, "persist") == 1 and count_entries(dp, "persist_half") == 0
    (tmpl,) = dp.m["persist"].values()
    assert tmpl.real_id == dp.m["conns"][conn_key(syn)].real_id


def test_icmp_error_about_a_half_open_flow_reaches_its_real(bench):
    reset(bench, svc(VIP))
    real = send(bench, tcp4(flags="S"))
    quoted = IP(src=VIP, dst="203.0.113.7", id=99) / TCP(sport=80, dport=40000, flags="SA")
    err = Ether(dst=LB_MAC, src=CLIENT_MAC) / IP(src="192.0.2.1", dst=VIP, id=3) / ICMP(type=3, code=4, nexthopmtu=1400) \
        / Raw(bytes(quoted)[:28])
    assert bench.run(err) == ("XDP_TX", to_real(err, real))
    assert bench.verdicts()["fwd_icmp_error"] == 1


def test_half_open_setting_is_a_flag():
    from xlb.config import read as xread
    from xlb.errors import ConfigError
    assert xread.parse("[tables]\nhalf_open = false\n", "x.toml").tables.half_open is False
    assert xread.parse("", "x.toml").tables.half_open is True
    with pytest.raises(ConfigError, match=r"line 2.*tables.half_open.*true or false"):
        xread.parse("[tables]\nhalf_open = 1\n", "x.toml")


def test_sweep_counts_half_open_and_expires_it(bench):
    dp = reset(bench, svc(VIP) + "[timeouts]\nsyn = 5\n")
    send(bench, tcp4(flags="S"))
    (half,) = dp.m["half_open"].values()
    rid = half.real_id
    dp.sweep()
    assert dp.real_conn_counts()[rid] == (0, 1)                  # the reconcile keeps its inactive count
    res = dp.sweep(now=now_ns() + 6 * NS)
    assert res.half_open_expired == 1 and count_entries(dp, "half_open") == 0
    assert dp.real_conn_counts()[rid] == (0, 0)


def test_defense_turned_off_still_promotes_its_half_open_entries_until_a_sweep_finds_none(bench):
    """With the defense off a SYN with no connection entry makes no half_open lookup (XLB_SET_F_HALF_LOOK clear),
    but only once a sweep has found the half-open tables empty: a handshake waiting there when the operator turned
    the defense off and reloaded is still promoted by its ACK."""
    dp = reset(bench, svc(VIP))
    look = lambda: dp.m["settings"][ct.c_uint32(0)].flags & S.SET_F_HALF_LOOK  # noqa: E731
    assert look()
    syn = tcp4(flags="S")
    real = send(bench, syn)
    dp.apply(dataclasses.replace(dp.config, tables=TEST_TABLES))  # half_open = false, reloaded
    assert look() and not dp.m["settings"][ct.c_uint32(0)].flags & S.SET_F_HALF_OPEN
    dp.sweep()                                                   # the entry is live: it stays, and so does the flag
    assert look()
    assert send(bench, tcp4(flags="A")) == real                  # its ACK promotes it
    assert dp.m["half_open"].get(conn_key(syn)) is None
    assert dp.m["conns"][conn_key(syn)].state == S.CONN_STATE["est"]
    assert events(dp) == {"half_open": 1, "promoted": 1, "midstream": 0}
    dp.sweep()                                                   # the half-open tables are empty now
    assert not look()
    dp.apply(dp.config)                                          # and a reload keeps it so
    assert not look()
    # No lookup any more: an entry written there now is not seen; the SYN is placed and recorded in conns.
    late = tcp4(sport=40001, flags="S")
    dp.m["half_open"][conn_key(late)] = dp.m["conns"][conn_key(syn)]
    send(bench, late)
    assert dp.m["conns"][conn_key(late)].state == S.CONN_STATE["syn"]


def test_an_unanswered_syn_to_a_persistent_service_leaves_no_template_and_the_lookups_end(bench):
    """A SYN never answered leaves a template in persist_half: the sweep expires it by its timer (its service's
    persistence timeout), as it expires the half-open connection, so that once the defense is off the half-open
    lookups end (XLB_SET_F_HALF_LOOK) instead of lasting as long as the pins."""
    dp = reset(bench, svc(VIP_P, extra="persistence_timeout = 300\n"))
    send(bench, tcp4(dst=VIP_P, flags="S"))
    assert count_entries(dp, "persist_half") == 1
    dp.apply(dataclasses.replace(dp.config, tables=TEST_TABLES))   # the defense off
    dp.sweep(now=now_ns() + 200 * NS)                              # the connection expired, the template not yet
    assert count_entries(dp, "half_open") == 0 and count_entries(dp, "persist_half") == 1
    assert dp.m["settings"][ct.c_uint32(0)].flags & S.SET_F_HALF_LOOK
    dp.sweep(now=now_ns() + 400 * NS)
    assert count_entries(dp, "persist_half") == 0
    assert not dp.m["settings"][ct.c_uint32(0)].flags & S.SET_F_HALF_LOOK


def test_pins_with_the_defense_flag_alone_keep_the_lookups(bench):
    """Pins of a release before XLB_SET_F_HALF_LOOK have SET_F_HALF_OPEN alone, and their program (still attached
    while the new daemon applies) may record a handshake in half_open after the apply looked at the tables: a
    config with the defense off keeps the lookups until a sweep finds the tables empty."""
    dp = reset(bench, svc(VIP))
    settings = dp.m["settings"]
    st = settings[ct.c_uint32(0)]
    st.flags = (st.flags | S.SET_F_HALF_OPEN) & ~S.SET_F_HALF_LOOK      # as the earlier release left it
    settings[ct.c_uint32(0)] = st
    dp.apply(dataclasses.replace(dp.config, tables=TEST_TABLES))         # the defense off, the tables empty
    assert settings[ct.c_uint32(0)].flags & S.SET_F_HALF_LOOK
    dp.sweep()
    assert not settings[ct.c_uint32(0)].flags & S.SET_F_HALF_LOOK


# -- the flood ---------------------------------------------------------------------------------------------------


def test_syn_flood_keeps_established_flows_and_templates(bench):
    """3000 established flows (3/4 of the connection table) and 200 persistent clients' templates, then a flood of
    8x the half-open capacity of SYNs from random sources to both services: every established flow's next packet
    reaches its real through its own entry, and every persistent client's next connection its template's real."""
    dp = reset(bench, svc(VIP) + svc(VIP_P, extra="persistence_timeout = 300\n"))
    flows = established(bench, 3000)
    persistent = {src: real for (src, _), real in established(bench, 200, VIP_P, first=3000).items()}
    templates = {bytes(k): v.real_id for k, v in dp.m["persist"].items()}
    assert len(templates) == 200

    flood(bench, 4 * HALF, dst=VIP)
    flood(bench, 4 * HALF, dst=VIP_P, seed=19)

    assert count_entries(dp, "half_open") <= HALF
    for (src, sport), real in flows.items():
        entry = dp.m["conns"].get(conn_key(tcp4(src=src, sport=sport)))
        assert entry is not None and entry.state == S.CONN_STATE["est"], (src, sport)
        assert send_frame(bench, frame(src, sport, VIP, "A", b"x")) == real
    assert {bytes(k): v.real_id for k, v in dp.m["persist"].items() if bytes(k) in templates} == templates
    for src, real in persistent.items():
        assert send_frame(bench, frame(src, 65000, VIP_P, "S")) == real
    ev = events(dp)
    assert ev["midstream"] == 0 and ev["promoted"] == 3200 and ev["half_open"] >= 3200 + 8 * HALF


# -- table pressure ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheduler, extra", [
    ("sh", ""),
    ("mh", ""),
    ("mh", 'persistence_timeout = 300\npersistence_netmask = "255.255.255.255"\nplacement = "consistent"\n'),
], ids=["sh", "mh", "persistent-consistent"])
def test_twice_the_table_keeps_flows_on_their_reals(bench, scheduler, extra):
    """2x the connection table's capacity of live flows: every packet is forwarded; flows whose entry the LRU
    evicted are placed anew (counted as mid-stream) on the same real; the table recovers when the load falls."""
    dp = reset(bench, svc(VIP, scheduler, extra))
    flows = established(bench, 2 * CONNS)
    assert count_entries(dp, "conns") <= CONNS
    if extra:
        assert count_entries(dp, "persist") <= TEST_TABLES.templates  # templates lost too: 2x their table
    for (src, sport), real in flows.items():
        assert send_frame(bench, frame(src, sport, VIP, "A", b"x")) == real
    lost = events(dp)["midstream"]
    assert lost >= CONNS            # at least the first half's entries were evicted, and counted
    # the load falls: every entry expires and the sweep empties the table; a new flow is recorded and followed
    res = dp.sweep(now=now_ns() + 3600 * NS)
    assert res.conns_expired and count_entries(dp, "conns") == 0
    pkt = tcp4(src="203.0.113.99", sport=5555, flags="S")
    real = send(bench, pkt)
    assert send(bench, tcp4(src="203.0.113.99", sport=5555, flags="A")) == real
    assert dp.m["conns"][conn_key(pkt)].real_id and events(dp)["midstream"] == lost


SMALL_TEMPLATES = 1024
CONSISTENT = 'persistence_timeout = 300\npersistence_netmask = "255.255.255.255"\nplacement = "consistent"\n'


@pytest.fixture
def small_templates(bench, monkeypatch):
    """The bench running a second build whose template table holds SMALL_TEMPLATES entries (the connection table
    the bench's: it holds every flow, so only templates are under pressure), with the half-open defense on."""
    tables = dataclasses.replace(TEST_TABLES, templates=SMALL_TEMPLATES, half_open=True)
    prog = Program(cflags=cflags_for(tables) + TEST_CFLAGS, log=None)
    try:
        dp = DataPlane(prog, tables)
        dp.apply(dataclasses.replace(bench.config(svc(VIP, "mh", CONSISTENT)), tables=tables))
        monkeypatch.setattr(bench, "prog", prog)
        monkeypatch.setattr(bench, "dp", dp)
        yield dp
    finally:
        prog.close()


def test_twice_the_template_table_re_places_clients_and_shows_the_loss(bench, small_templates):
    """2x the template table's capacity of persistent clients (mh, consistent placement, /32 netmask): forwarding
    never stops; the templates the LRU evicted show as xlb_templates_missing (clients with live connections and no
    template); every client's next connection lands on its first connection's real, through its template or
    re-placed by the consistent hash; when the load falls the sweep empties the tables and a new client's template
    is recorded and followed."""
    from xlb.observe import metrics
    dp = small_templates
    n = 2 * SMALL_TEMPLATES
    flows = established(bench, n)
    kept = count_entries(dp, "persist")
    assert kept <= SMALL_TEMPLATES and count_entries(dp, "conns") == n
    assert dp.sweep().templates_missing == n - kept >= SMALL_TEMPLATES
    assert metrics.XlbCollector(dp).read()["xlb_templates_missing"] == [((), n - kept)]
    for (src, sport), real in flows.items():
        assert send_frame(bench, frame(src, sport, VIP, "A", b"x")) == real     # established: its own entry
        assert send_frame(bench, frame(src, 65000, VIP, "S")) == real           # a new connection of the client
    assert events(dp)["midstream"] == 0
    # the load falls: every connection and template expires; the table takes new clients' templates again
    res = dp.sweep(now=now_ns() + 3600 * NS)
    assert res.templates_expired and count_entries(dp, "persist") == 0 and count_entries(dp, "conns") == 0
    src, sport = client(n)
    real = send_frame(bench, frame(src, sport, VIP, "S"))
    assert send_frame(bench, frame(src, sport, VIP, "A")) == real
    (tmpl,) = dp.m["persist"].values()
    assert tmpl.real_id == dp.m["conns"][conn_key(tcp4(src=src, sport=sport))].real_id
    assert dp.sweep().templates_missing == 0


# -- NAT: the reverse entries (bpf/nat.h) --------------------------------------------------------------------------

VIP_N = "198.51.100.20"


def nat_svc():
    return nat_service(VIP_N, 80, "tcp", [(L4, 8080)])


def nat_client(i):
    """The i-th NAT client: routed via the gateway on lb0 (203.0.113.0/24), so its replies go by XDP_TX."""
    return f"203.0.113.{i % 250 + 1}", 30000 + i // 250


def nat_rev_key(src, sport):
    """The nat_revs / nat_half key of client src:sport's connection: its replies' tuple, real:8080 -> client."""
    return conn_key(real_reply(tcp4(src=src, sport=sport), L4, 8080, mac_to=LB_MAC))


def nat_step(bench, pkt, want, reason):
    """Run pkt: it must leave by XDP_TX as want (exact bytes, every checksum as scapy computes it) with reason."""
    before = bench.verdicts().get(reason, 0)
    assert bench.run(pkt) == ("XDP_TX", want)
    assert bench.verdicts()[reason] == before + 1


def nat_handshake(bench, src, sport, payload=b"r"):
    """SYN (to the real's address and port), the real's SYN-ACK (back from VIP:80), the ACK; then the real's data
    reply (rewritten): every frame exact."""
    for flags in ("S", None, "A"):
        if flags is None:
            rep = real_reply(tcp4(src=src, sport=sport), L4, 8080, mac_to=LB_MAC)
            nat_step(bench, rep, nat_out(rep, VIP_N, 80), "fwd_reply_tx")
            continue
        pkt = tcp4(src=src, dst=VIP_N, sport=sport, flags=flags)
        nat_step(bench, pkt, nat_in(pkt, L4, 8080, LB_MAC, REAL_MAC[L4]), "fwd_tx")
    nat_reply_ok(bench, src, sport, payload)


def nat_reply_ok(bench, src, sport, payload=b"r"):
    rep = real_reply(tcp4(src=src, sport=sport), L4, 8080, mac_to=LB_MAC, flags="PA", payload=payload)
    nat_step(bench, rep, nat_out(rep, VIP_N, 80), "fwd_reply_tx")


def test_nat_handshake_reverse_entry_waits_in_nat_half(bench):
    """The SYN's reverse entry goes to nat_half (not nat_revs); the real's SYN-ACK finds it there and is rewritten
    back to VIP:80; the ACK promotes it to nat_revs with the next hop the SYN-ACK found; the replies stay rewritten."""
    from xlb.observe import metrics
    dp = reset(bench, nat_svc())
    src, sport = nat_client(0)
    syn = tcp4(src=src, dst=VIP_N, sport=sport, flags="S")
    nat_step(bench, syn, nat_in(syn, L4, 8080, LB_MAC, REAL_MAC[L4]), "fwd_tx")
    key = nat_rev_key(src, sport)
    assert dp.m["nat_revs"].get(key) is None
    assert dp.m["nat_half"][key].real_id == dp.m["half_open"][conn_key(syn)].real_id
    fill = dict((v[0], n) for v, n in metrics.XlbCollector(dp).read()["xlb_table_entries"])
    assert (fill["half_open_nat"], fill["nat"]) == (1, 0)
    synack = real_reply(syn, L4, 8080, mac_to=LB_MAC)
    nat_step(bench, synack, nat_out(synack, VIP_N, 80), "fwd_reply_tx")
    hop = dp.m["nat_half"][key]
    assert hop.hop_stamp and hop.ifindex == bench.ifindex
    ack = tcp4(src=src, dst=VIP_N, sport=sport, flags="A")
    nat_step(bench, ack, nat_in(ack, L4, 8080, LB_MAC, REAL_MAC[L4]), "fwd_tx")
    assert dp.m["nat_half"].get(key) is None and dp.m["half_open"].get(conn_key(syn)) is None
    rev = dp.m["nat_revs"][key]
    assert (rev.real_id, rev.svc_id, rev.vport, rev.hop_stamp, rev.born_ns) == (
        hop.real_id, hop.svc_id, hop.vport, hop.hop_stamp, hop.born_ns)
    nat_reply_ok(bench, src, sport, b"data")
    assert events(dp) == {"half_open": 1, "promoted": 1, "midstream": 0}


def test_nat_icmp_error_about_a_half_open_connection_goes_back_from_the_vip(bench):
    """The real's port unreachable about a half-open connection's SYN (quoted as the real got it) is found by
    nat_half and rewritten back from VIP:80 toward the client."""
    reset(bench, nat_svc())
    syn = tcp4(dst=VIP_N, flags="S")
    got = nat_in(syn, L4, 8080, LB_MAC, REAL_MAC[L4])
    nat_step(bench, syn, got, "fwd_tx")
    err = Ether(dst=LB_MAC, src=REAL_MAC[L4]) / IP(src=L4, dst="203.0.113.7", id=3) / ICMP(type=3, code=3) \
        / Raw(quote(got))
    want = Ether(dst=GW_MAC, src=LB_MAC) / IP(src=VIP_N, dst="203.0.113.7", id=3, ttl=63) / ICMP(type=3, code=3) \
        / Raw(requoted(quote(got), "dst", VIP_N, 80))
    nat_step(bench, err, bytes(want), "fwd_icmp_nat_out")


def test_sweep_keeps_and_expires_nat_half_with_its_connection(bench):
    """nat_half entries live and die with their half-open connection (the sweep)."""
    import time
    dp = reset(bench, nat_svc() + "[timeouts]\nsyn = 5\n")
    bench.run(tcp4(dst=VIP_N, flags="S"))
    born = now_ns()
    while now_ns() == born:  # entries written in the sweep's own clock tick are spared: let the tick pass
        time.sleep(0.001)
    res = dp.sweep()
    assert (res.nat_half_seen, res.nat_half_expired, res.nat_seen) == (1, 0, 0)
    res = dp.sweep(now=now_ns() + 6 * NS)
    assert (res.half_open_expired, res.nat_half_seen, res.nat_half_expired) == (1, 1, 1)
    assert count_entries(dp, "nat_half") == 0


def test_syn_flood_to_a_nat_service_keeps_established_replies_rewritten(bench):
    """1000 established NAT connections (each handshake's frames exact), then a flood of 8x the half-open capacity
    of SYNs from random sources to the NAT service (2x nat_revs' capacity): every established connection keeps its
    nat_revs entry and its real's next reply is still rewritten back to VIP:80, byte for byte."""
    dp = reset(bench, nat_svc())
    clients = [nat_client(i) for i in range(1000)]
    for src, sport in clients:
        nat_handshake(bench, src, sport)
    assert count_entries(dp, "nat_revs") == len(clients) and count_entries(dp, "nat_half") == 0

    flood(bench, 8 * HALF, dst=VIP_N)

    assert count_entries(dp, "nat_half") <= HALF
    for src, sport in clients:
        assert dp.m["nat_revs"].get(nat_rev_key(src, sport)) is not None, (src, sport)
        nat_reply_ok(bench, src, sport, b"after the flood")
    assert events(dp)["midstream"] == 0
