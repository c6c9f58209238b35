"""State sync against the loaded program: what the data plane exports into its ring buffer (bpf/sync.h) through
BPF_PROG_TEST_RUN, how a record becomes IPVS sync entries, and how received entries, byte-exact through the wire
codec, land in the maps so that the packet path follows them (xlb/ops/sync.py)."""
import ctypes as ct
import dataclasses
import ipaddress
import threading
import types

from harness import TEST_TABLES, conn_key, lookup_conn, real_of, tcp4, tcp6
from xlb.dataplane import structs as S
from xlb.dataplane.mapkeys import now_ns
from xlb.config.model import Sync
from xlb.ops.sync import SyncRunner, load_entries, to_wire
from xlb.sync import wire

VIP, VIP6 = "198.51.100.10", "2001:db8:100::10"
R1, R2, R3 = "198.18.0.11", "198.18.0.12", "198.18.0.13"
TX = "XDP_TX"
IP = ipaddress.ip_address


def cfg(persist=True, extra=""):
    reals = "".join(f'  [[service.real]]\n  address = "{r}"\n' for r in (R1, R2, R3))
    p = 'persistence_timeout = 300\npersistence_netmask = "255.255.255.0"\n' if persist else ""
    reals6 = "".join(f'  [[service.real]]\n  address = "{r}"\n' for r in ("2001:db8::11", "2001:db8::12"))
    return (f'[timeouts]\ntcp = 900\nsyn = 60\ntcpfin = 120\nudp = 300\n'
            f'[[service]]\nvip = "{VIP}"\nport = 80\nproto = "tcp"\nscheduler = "rr"\n{p}{reals}'
            f'[[service]]\nvip = "{VIP6}"\nport = 80\nproto = "tcp"\nscheduler = "rr"\n{reals6}{extra}')


_EVENTS = []


def drain(bench):
    """The records the program wrote since the last drain."""
    bench.sync_events(_EVENTS.append)
    assert bench.poll_sync() == 0
    out = list(_EVENTS)
    _EVENTS.clear()
    return out


def test_nothing_is_exported_while_sync_is_off(bench):
    bench.reset(cfg())
    drain(bench)
    assert bench.run(tcp4())[0] == TX
    assert bench.run(tcp4(flags="A"))[0] == TX
    assert drain(bench) == []
    assert not bench.dp.m["settings"][ct.c_uint32(0)].flags & S.SET_F_SYNC


def test_new_connections_and_state_changes_are_exported(bench):
    dp = bench.reset(cfg())
    drain(bench)
    dp.set_sync_export(True)
    syn = tcp4(sport=41000)
    assert bench.run(syn)[0] == TX
    (ev,) = drain(bench)
    entry = lookup_conn(dp, syn)
    assert bytes(ev.key) == bytes(conn_key(syn))
    assert (ev.svc_id, ev.real_id, ev.state) == (entry.svc_id, entry.real_id, S.CONN_STATE["syn"])
    # SYN -> established: one record; more of the same state: none (the touch path and the flow cache).
    for _ in range(3):
        assert bench.run(tcp4(sport=41000, flags="A"))[0] == TX
    assert [e.state for e in drain(bench)] == [S.CONN_STATE["est"]]
    assert bench.run(tcp4(sport=41000, flags="FA"))[0] == TX
    (fin,) = drain(bench)
    assert (bytes(fin.key), fin.state, fin.real_id) == (bytes(conn_key(syn)), S.CONN_STATE["fin"], entry.real_id)
    # IPv6, and a mid-stream packet of an unknown flow (a new entry, established).
    assert bench.run(tcp6(sport=41001, flags="A"))[0] == TX
    (ev6,) = drain(bench)
    assert (bytes(ev6.key), ev6.state) == (bytes(conn_key(tcp6(sport=41001))), S.CONN_STATE["est"])


def test_export_stays_on_across_applies_and_turns_off(bench):
    """A config apply rewrites the settings: the sync flag must survive it, and go when sync stops."""
    dp = bench.reset(cfg())
    drain(bench)
    dp.set_sync_export(True)
    dp.apply(bench.config(cfg(extra='[[service]]\nvip = "198.51.100.11"\nport = 80\nproto = "tcp"\n'
                                    '  [[service.real]]\n  address = "198.18.0.11"\n')))
    assert bench.run(tcp4(sport=41002))[0] == TX
    assert len(drain(bench)) == 1
    dp.set_sync_export(False)
    assert bench.run(tcp4(sport=41003))[0] == TX
    assert drain(bench) == []


def test_a_record_becomes_its_template_and_connection(bench):
    dp = bench.reset(cfg())
    drain(bench)
    dp.set_sync_export(True)
    assert bench.run(tcp4(src="203.0.113.77", sport=41004))[0] == TX
    (ev,) = drain(bench)
    st = dp.by_id[ev.svc_id]
    real = {rid: a for (_k, a, _port), rid in dp.real_ids.ids.items()}[ev.real_id]
    tmpl, conn = to_wire(ev, st, real, dp.config.timeouts)
    assert tmpl == wire.template(IP("203.0.113.0"), IP(VIP), 80, real, 80, wire.IPPROTO_TCP, 300)
    assert conn == wire.SyncConn(wire.IPPROTO_TCP, IP("203.0.113.77"), 41004, IP(VIP), 80, real, 80,
                                 wire.CONN_F_DROUTE | wire.CONN_F_INACTIVE, wire.TCP_S_SYN_RECV, 0, 60)
    # Through the codec and back unchanged.
    packer = wire.Packer(7)
    for e in (tmpl, conn):
        assert packer.add(e) is None
    got = wire.decode(packer.flush(), 7)
    assert got.conns == [tmpl, conn]


def _entries(*conns, syncid=9):
    """conns as a backup receives them: one encoded message, decoded."""
    packer = wire.Packer(syncid)
    for c in conns:
        packer.add(c)
    got = wire.decode(packer.flush(), syncid)
    assert not got.refused and len(got.conns) == len(conns)
    return got.conns


def test_a_backup_follows_received_connections_and_templates(bench):
    dp = bench.reset(cfg())
    est = wire.SyncConn(wire.IPPROTO_TCP, IP("203.0.113.7"), 42000, IP(VIP), 80, IP(R3), 80, wire.CONN_F_DROUTE,
                        wire.TCP_S_ESTABLISHED, 0, 900)
    tmpl = wire.template(IP("203.0.113.0"), IP(VIP), 80, IP(R2), 80, wire.IPPROTO_TCP, 300)
    v6 = wire.SyncConn(wire.IPPROTO_TCP, IP("2001:db8:77::7"), 42001, IP(VIP6), 80, IP("2001:db8::12"), 80,
                       wire.CONN_F_DROUTE, wire.TCP_S_ESTABLISHED, 0, 900)
    counts = load_entries(dp, _entries(est, tmpl, v6))
    assert counts == {"loaded_conns": 2, "loaded_templates": 1}
    entry = lookup_conn(dp, tcp4(sport=42000))
    assert entry.state == S.CONN_STATE["est"]
    # The mid-stream packet goes to the synced real, not the scheduler's first pick (R1); so does the IPv6 flow.
    act, out = bench.run(tcp4(sport=42000, flags="A"))
    assert (act, real_of(out)) == (TX, R3)
    act, out = bench.run(tcp6(sport=42001, flags="A"))
    assert (act, real_of(out)) == (TX, "2001:db8::12")
    # A new client of the synced /24 goes where the template says.
    act, out = bench.run(tcp4(src="203.0.113.50", sport=42002))
    assert (act, real_of(out)) == (TX, R2)
    # And the entry expires as the master said: a connection sent with 10 s left is not kept 900 s.
    short = wire.SyncConn(wire.IPPROTO_TCP, IP("203.0.113.8"), 42003, IP(VIP), 80, IP(R3), 80, wire.CONN_F_DROUTE,
                          wire.TCP_S_ESTABLISHED, 0, 10)
    load_entries(dp, _entries(short))
    left = {bytes(k): left for k, _v, _r, _st, left in dp.connections(now_ns())}
    assert 0 < left[bytes(conn_key(tcp4(src="203.0.113.8", sport=42003)))] <= 10 * 10**9


def test_a_backup_follows_a_fwmark_template(bench):
    dp = bench.reset('[[mark]]\nmark = 5\ndst = "198.51.100.10/32"\nproto = "tcp"\nports = [80, 443]\n'
                     '[[service]]\nfwmark = 5\nscheduler = "rr"\npersistence_timeout = 60\n'
                     + "".join(f'  [[service.real]]\n  address = "{r}"\n' for r in (R1, R2, R3)))
    tmpl = wire.fwmark_template(5, IP("203.0.113.7"), IP(R3), 60)
    assert load_entries(dp, _entries(tmpl)) == {"loaded_templates": 1}
    for port in (443, 80):
        act, out = bench.run(tcp4(sport=43000 + port, dport=port))
        assert (act, real_of(out)) == (TX, R3)


def test_a_backup_skips_what_it_does_not_serve(bench):
    dp = bench.reset(cfg(persist=False))
    entries = _entries(
        wire.SyncConn(wire.IPPROTO_TCP, IP("203.0.113.7"), 1, IP("198.51.100.99"), 80, IP(R1), 80),  # no service
        wire.SyncConn(wire.IPPROTO_TCP, IP("203.0.113.7"), 2, IP(VIP), 80, IP("198.18.0.99"), 80),  # no such real
        wire.template(IP("203.0.113.0"), IP(VIP), 80, IP(R1), 80, wire.IPPROTO_TCP, 300),  # not persistent here
        wire.SyncConn(wire.IPPROTO_SCTP, IP("203.0.113.7"), 3, IP(VIP), 80, IP(R1), 80))  # a protocol we lack
    assert load_entries(dp, entries) == {"skipped_unknown_service": 1, "skipped_unknown_real": 1,
                                         "skipped_not_persistent": 1, "skipped_protocol": 1}
    assert len(list(dp.m["conns"].items())) == 0 and len(list(dp.m["persist"].items())) == 0


def test_nodes_that_placed_a_client_apart_agree_on_one_template_whatever_the_order(bench):
    """`--sync both` behind ECMP: two nodes placed a client's /24 on R2 and R3 before hearing of each other. Each
    receives the other's template; both must end on one real (the lower address), not swap, and a later template
    for the higher real (a refresh of an older connection there) must not flip them again."""
    def tmpl(real):
        return wire.template(IP("203.0.113.0"), IP(VIP), 80, IP(real), 80, wire.IPPROTO_TCP, 300)

    sports = iter(range(42100, 42200))

    def placed():   # a new connection of the client
        act, out = bench.run(tcp4(src="203.0.113.60", sport=next(sports)))
        assert act == TX
        return real_of(out)
    for first, second in ((R2, R3), (R3, R2)):
        dp = bench.reset(cfg())
        assert load_entries(dp, _entries(tmpl(first))) == {"loaded_templates": 1}
        assert placed() == first
        load_entries(dp, _entries(tmpl(second)))
        assert placed() == R2, (first, second)
        assert load_entries(dp, _entries(tmpl(R3))) == {"kept_templates": 1}
        assert placed() == R2
    assert load_entries(dp, _entries(tmpl(R1))) == {"loaded_templates": 1}   # a lower one still wins
    assert placed() == R1


class _Sent(list):
    """A master's sender as SyncRunner uses it (`add`), keeping the entries instead of multicasting them."""
    add = list.append


def test_a_refresh_sends_what_this_node_saw_not_what_it_only_heard(bench):
    """Two `--sync both` nodes: what one hears from the other must not go back in its refresh, or each would reset
    the other's timeout and an idle connection would never expire on either."""
    dp = bench.reset(cfg(persist=False))
    daemon = types.SimpleNamespace(dp=dp, log=print, lock=threading.Lock())
    runner = SyncRunner(daemon, Sync(refresh=1.0))   # no mode: no sockets; the sender below keeps what is sent
    runner.sender = _Sent()
    heard = wire.SyncConn(wire.IPPROTO_TCP, IP("203.0.113.7"), 42000, IP(VIP), 80, IP(R3), 80, wire.CONN_F_DROUTE,
                          wire.TCP_S_ESTABLISHED, 0, 900)
    runner.load(_entries(heard))
    act, _ = bench.run(tcp4(src="203.0.113.8", sport=42001))   # a connection this node sees
    assert act == TX
    runner.refresh()
    assert [(c.caddr, c.cport) for c in runner.sender] == [(IP("203.0.113.8"), 42001)]
    assert runner.counts["refresh_heard"] == 1


def test_a_half_open_connection_is_exported_only_once_its_handshake_completes(bench):
    """IPVS's master syncs a TCP connection only from ESTABLISHED on (ip_vs_sync_conn_needed); with the SYN-flood
    defense a SYN's entry waits in half_open, and exporting it there would let a flood of spoofed SYNs through the
    sync into a backup's conns and persist, evicting its established connections and templates."""
    dp = bench.reset(cfg())
    dp.apply(dataclasses.replace(dp.config, tables=dataclasses.replace(TEST_TABLES, half_open=True)))
    drain(bench)
    dp.set_sync_export(True)
    for sport in range(42000, 42010):                        # a flood's SYNs, never answered
        assert bench.run(tcp4(sport=sport))[0] == TX
    assert drain(bench) == []
    assert bench.run(tcp4(sport=42000, flags="A"))[0] == TX  # one completes its handshake: promoted, exported
    (ev,) = drain(bench)
    entry = lookup_conn(dp, tcp4(sport=42000))
    assert (bytes(ev.key), ev.state, ev.real_id) == (bytes(conn_key(tcp4(sport=42000))), S.CONN_STATE["est"],
                                                     entry.real_id)
