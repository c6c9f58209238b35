"""The five LVS persistence semantics, through BPF_PROG_TEST_RUN with the persist map checked.

Time passes by rewriting timestamps backwards (templates' last_new_ns, conns' seen_ns): the data plane's clock is
CLOCK_MONOTONIC_COARSE (xlb.dataplane.mapkeys.now_ns), so an entry stamped 61 s ago is, to it, 61 s old."""
import dataclasses
import ipaddress

from harness import conn_key, lookup_conn, real_of, tcp4, tcp6, to_real
from xlb.dataplane import structs as S
from xlb.config.model import addr_bytes, mask_address
from xlb.dataplane.mapkeys import now_ns, NS, svc_key

VIP = "198.51.100.10"
R1, R2, R3 = "198.18.0.11", "198.18.0.12", "198.18.0.13"
TX = "XDP_TX"


# Short connection timeouts: aging a stamp by more than the clock's value would wrap the u64 (a young VM).
TIMEOUTS = "[timeouts]\ntcp = 30\nsyn = 20\ntcpfin = 10\nudp = 30\n"


def svc_cfg(reals=((R1, 1), (R2, 1), (R3, 1)), *, port=80, timeout=60, extra=""):
    out = (f'{TIMEOUTS}[[service]]\nvip = "{VIP}"\nport = {port}\nproto = "tcp"\nscheduler = "rr"\n'
           f'persistence_timeout = {timeout}\n{extra}')
    for addr, w in reals:
        out += f'  [[service.real]]\n  address = "{addr}"\n  weight = {w}\n'
    return out


def templates(bench):
    """{client address: (key, value)} of every template."""
    out = {}
    for k, v in bench.dp.m["persist"].items():
        raw = bytes(k.client)
        fam = k.svc.family
        out[str(ipaddress.ip_address(raw[:4] if fam == 4 else raw))] = (k, v)
    return out


def template_of(bench, svc, client):
    key = S.PersistKey(svc=svc_key(svc), client=S.addr_words(mask_address(addr_bytes(client),
                                                                          svc.persistence_netmask)))
    return bench.dp.m["persist"].get(key), key


def rid(bench, svc, addr):
    return bench.dp.real_ids.get((svc.key, ipaddress.ip_address(addr), 0))


def go(bench, pkt):
    """Run pkt; it must be forwarded on lb0. Returns the real it went to."""
    act, out = bench.run(pkt)
    assert act == TX, (act, bench.verdicts())
    assert out == to_real(pkt, real_of(out))
    return real_of(out)


def _check_clock(secs):
    assert now_ns() > (secs + 1) * NS, "the monotonic clock is younger than the aging a test needs"


def _age(bench, map_name, field, secs):
    """Move every entry's timestamp `field` back by secs, as if that much time had passed."""
    _check_clock(secs)
    m = bench.dp.m[map_name]
    for k, v in list(m.items()):
        setattr(v, field, getattr(v, field) - int(secs * NS))
        m[k] = v


def age_templates(bench, secs):
    _age(bench, "persist", "last_new_ns", secs)


def age_conns(bench, secs):
    _age(bench, "conns", "seen_ns", secs)


# -- (1) the template key: masked client + service identity ------------------------------------------------------

def test_netmask_groups_a_slash24(bench):
    bench.reset(svc_cfg(extra='persistence_netmask = "255.255.255.0"\n'))
    svc = bench.dp.config.services[0]
    assert go(bench, tcp4(src="203.0.113.7")) == R1
    assert go(bench, tcp4(src="203.0.113.200", sport=40001)) == R1   # same /24: rr would say R2
    assert go(bench, tcp4(src="203.0.114.7")) == R2                  # another /24: the scheduler
    t = templates(bench)
    assert set(t) == {"203.0.113.0", "203.0.114.0"}
    k, v = t["203.0.113.0"]
    assert bytes(k.svc) == bytes(svc_key(svc))
    assert (v.real_id, v.real_gen) == (rid(bench, svc, R1), bench.dp.gens[rid(bench, svc, R1)])
    assert t["203.0.114.0"][1].real_id == rid(bench, svc, R2)


def test_fwmark_bundles_ports(bench):
    cfg = ('[[mark]]\nmark = 5\ndst = "198.51.100.10/32"\nproto = "tcp"\nports = [80, 443]\n'
           '[[service]]\nfwmark = 5\nscheduler = "rr"\npersistence_timeout = 60\n'
           + "".join(f'  [[service.real]]\n  address = "{a}"\n' for a in (R1, R2, R3)))
    bench.reset(cfg)
    assert go(bench, tcp4(src="203.0.113.7", dport=80)) == R1
    assert go(bench, tcp4(src="203.0.113.8", dport=80)) == R2
    assert go(bench, tcp4(src="203.0.113.7", dport=443, sport=40001)) == R1   # its 80 connection's real
    t = templates(bench)
    assert set(t) == {"203.0.113.7", "203.0.113.8"}                           # one template per client
    k, _ = t["203.0.113.7"]
    assert (k.svc.mark, k.svc.port, k.svc.proto, k.svc.family, bytes(k.svc.addr)) == (5, 0, 0, 4, bytes(16))


def test_port_zero_template_has_port_zero(bench):
    bench.reset(svc_cfg(port=0))
    assert go(bench, tcp4(src="203.0.113.7", dport=22)) == R1
    assert go(bench, tcp4(src="203.0.113.8", dport=22)) == R2
    assert go(bench, tcp4(src="203.0.113.7", dport=8080)) == R1
    t = templates(bench)
    assert len(t) == 2
    k, _ = t["203.0.113.7"]
    assert (k.svc.port, k.svc.proto, k.svc.mark, bytes(k.svc.addr)[:4]) == (0, 6, 0, bytes([198, 51, 100, 10]))


def test_non_contiguous_ipv4_mask(bench):
    bench.reset(svc_cfg(extra='persistence_netmask = "255.255.0.255"\n'))
    assert go(bench, tcp4(src="203.0.113.7")) == R1
    assert go(bench, tcp4(src="203.0.200.7")) == R1     # differs only in the masked-out third octet
    assert go(bench, tcp4(src="203.0.113.8")) == R2     # differs in the kept fourth octet
    assert set(templates(bench)) == {"203.0.0.7", "203.0.0.8"}


def test_ipv6_prefix_64(bench):
    cfg = ('[[service]]\nvip = "2001:db8:100::10"\nport = 80\nproto = "tcp"\nscheduler = "rr"\n'
           'persistence_timeout = 60\npersistence_netmask = 64\n'
           + "".join(f'  [[service.real]]\n  address = "2001:db8::{i}"\n' for i in (11, 12, 13)))
    bench.reset(cfg)
    go6 = lambda src: real_of(bench.run(tcp6(src=src, dst="2001:db8:100::10"))[1])  # noqa: E731
    assert go6("2001:db8:77::7") == "2001:db8::11"
    assert go6("2001:db8:77:0:ffff:1:2:3") == "2001:db8::11"
    assert go6("2001:db8:78::7") == "2001:db8::12"
    assert set(templates(bench)) == {"2001:db8:77::", "2001:db8:78::"}
    assert bench.verdicts() == {"fwd_tx": 3}


# -- (2) a valid template bypasses the scheduler and restarts its timer --------------------------------------------

def test_template_bypasses_scheduler_and_restarts_timer(bench):
    bench.reset(svc_cfg())
    svc = bench.dp.config.services[0]
    assert go(bench, tcp4(src="203.0.113.7")) == R1
    assert go(bench, tcp4(src="203.0.113.8")) == R2
    age_templates(bench, 30)                                          # half the timeout gone
    old, _ = template_of(bench, svc, "203.0.113.7")
    t0 = now_ns()
    assert go(bench, tcp4(src="203.0.113.7", sport=40001)) == R1      # rr would say R3
    new, _ = template_of(bench, svc, "203.0.113.7")
    assert new.last_new_ns >= t0 - 10_000_000 > old.last_new_ns       # the timer restarted (coarse clock)
    assert (new.real_id, new.real_gen) == (old.real_id, old.real_gen)
    assert go(bench, tcp4(src="203.0.113.9")) == R3                   # the bypass did not use an rr turn
    assert len(templates(bench)) == 3


# -- (3) lvs mode: live connections hold an expired template; timeout mode does not ------------------------------

def established_and_swept(bench, now=None):
    """203.0.113.7's SYN then ACK (to R1), then one sweep (at `now`): (sweep result, template, connection entry)."""
    svc = bench.dp.config.services[0]
    assert go(bench, tcp4(src="203.0.113.7", flags="S")) == R1
    assert go(bench, tcp4(src="203.0.113.7", flags="A")) == R1
    res = bench.dp.sweep(now)
    t, _ = template_of(bench, svc, "203.0.113.7")
    return res, t, lookup_conn(bench.dp, tcp4(src="203.0.113.7"))


def test_lvs_mode_connection_holds_template(bench):
    bench.reset(svc_cfg())
    svc = bench.dp.config.services[0]
    # A sweep a second on (the coarse clock may not have ticked since the packets): the SYN's hold (syn = 20 s)
    # then has 19 s left, within the margin (two of the longest sweep intervals, 20 s), so it is rewritten.
    res, t, conn = established_and_swept(bench, now_ns() + NS)
    assert (res.templates_seen, res.templates_held, res.templates_expired) == (1, 1, 0)
    assert conn.state == S.CONN_STATE["est"]
    assert t.held_until_ns == conn.seen_ns + bench.dp.config.timeouts.tcp * NS
    age_templates(bench, 61)                                          # the timer ran out
    assert go(bench, tcp4(src="203.0.113.8")) == R2                   # rr moved on
    assert go(bench, tcp4(src="203.0.113.7", sport=40001)) == R1      # still honoured: a connection lives
    # the connections end (they age past their timeouts); the sweep lets the template go
    age_conns(bench, 31)
    age_templates(bench, 61)
    res = bench.dp.sweep()
    assert res.conns_expired == 3 and res.templates_expired == 2
    assert templates(bench) == {}
    assert go(bench, tcp4(src="203.0.113.7", sport=40002)) == R3      # scheduled afresh
    t, _ = template_of(bench, svc, "203.0.113.7")
    assert t.real_id == rid(bench, svc, R3)


def test_lvs_mode_hold_with_lead_to_spare_is_written_later(bench):
    bench.reset(svc_cfg().replace("tcp = 30", "tcp = 120").replace("syn = 20", "syn = 70"))
    svc = bench.dp.config.services[0]
    res, t, conn = established_and_swept(bench)
    assert res.templates_held == 1
    # The SYN's hold (syn = 70 s) still has over half of the ACK's lead (tcp = 120 s): kept as it is.
    hold = conn.seen_ns + bench.dp.config.timeouts.tcp * NS
    assert t.held_until_ns == t.last_new_ns + bench.dp.config.timeouts.syn * NS < hold
    # A sweep once it has used up half of that lead (and before the connection expires) writes the hold.
    later = 2 * t.held_until_ns - hold + NS
    assert bench.dp.sweep(later).templates_held == 1
    t, _ = template_of(bench, svc, "203.0.113.7")
    assert t.held_until_ns == hold


def test_lvs_mode_hold_margin_follows_a_reloaded_sweep_interval(bench):
    """A reload to sweep_interval = 30 s: a stored hold with 40 s left (more than half of the connection's 50 s
    lead) is within two such intervals of the clock, so the sweep writes it; with the 1 s interval the program
    started with it would be left (the margin would be 20 s) and could lapse before the next sweep."""
    text = svc_cfg().replace("tcp = 30", "tcp = 50").replace("syn = 20", "syn = 40")
    bench.reset(text)
    cfg = bench.config(text)
    bench.dp.apply(dataclasses.replace(cfg, tables=dataclasses.replace(cfg.tables, sweep_interval=30.0)))
    res, t, conn = established_and_swept(bench)
    assert res.templates_held == 1
    assert t.held_until_ns == conn.seen_ns + 50 * NS


def test_lvs_mode_hold_is_written_about_twice_per_timeout_and_never_lapses(bench):
    """Five minutes of a busy connection (tcp = 120 s), swept every second: the stored hold is always at least half
    the connection's lead ahead, yet written only when it has used up half of it, not on every sweep."""
    bench.reset(svc_cfg().replace("tcp = 30", "tcp = 120"))
    svc = bench.dp.config.services[0]
    assert go(bench, tcp4(src="203.0.113.7", flags="S")) == R1
    assert go(bench, tcp4(src="203.0.113.7", flags="A")) == R1
    conns, key = bench.dp.m["conns"], conn_key(tcp4(src="203.0.113.7"))
    start, stored, writes = now_ns(), [], 0
    for step in range(300):
        now = start + step * NS
        c = conns[key]
        c.seen_ns = now                                               # the connection's packets, as the data plane
        conns[key] = c
        assert bench.dp.sweep(now).templates_held == 1
        t, _ = template_of(bench, svc, "203.0.113.7")
        assert t.held_until_ns - now >= 60 * NS
        writes += bool(stored) and t.held_until_ns != stored[-1]
        stored.append(t.held_until_ns)
    assert 4 <= writes <= 5                                           # every 61 s: the lead falls below 60 s


def test_lvs_mode_deleted_connection_releases_template(bench):
    bench.reset(svc_cfg())
    assert go(bench, tcp4(src="203.0.113.7", flags="S")) == R1
    bench.dp.sweep()
    age_templates(bench, 61)
    assert len(templates(bench)) == 1
    bench.dp.m["conns"].clear()
    res = bench.dp.sweep()
    assert res.templates_expired == 1 and templates(bench) == {}
    assert go(bench, tcp4(src="203.0.113.7", sport=40001)) == R2


def test_timeout_mode_expires_at_the_timer(bench):
    bench.reset(svc_cfg(extra='persistence_mode = "timeout"\n'))
    svc = bench.dp.config.services[0]
    assert go(bench, tcp4(src="203.0.113.7", flags="S")) == R1
    assert go(bench, tcp4(src="203.0.113.7", flags="A")) == R1
    res = bench.dp.sweep()
    assert (res.templates_held, res.templates_expired) == (0, 0)
    age_templates(bench, 59)
    assert go(bench, tcp4(src="203.0.113.7", sport=40001)) == R1      # within the timer (and restarted it)
    age_templates(bench, 61)
    assert go(bench, tcp4(src="203.0.113.7", sport=40002)) == R2      # past it: live connections do not matter
    t, _ = template_of(bench, svc, "203.0.113.7")
    assert t.real_id == rid(bench, svc, R2)
    # the sweep drops it at the timer though its connections live
    age_templates(bench, 61)
    res = bench.dp.sweep()
    assert res.templates_expired == 1 and res.conns_expired == 0
    assert templates(bench) == {}
    assert lookup_conn(bench.dp, tcp4(src="203.0.113.7")).real_id == rid(bench, svc, R1)


# -- (4) removed reals invalidate templates; quiescent ones keep them unless expire_quiescent_template ------------

def test_removed_real_invalidates_template(bench):
    bench.reset(svc_cfg())
    assert go(bench, tcp4(src="203.0.113.7")) == R1
    assert go(bench, tcp4(src="203.0.113.8")) == R2
    bench.dp.apply(bench.config(svc_cfg(((R2, 1), (R3, 1)))))
    svc = bench.dp.config.services[0]
    got = go(bench, tcp4(src="203.0.113.7", sport=40001))
    assert got in (R2, R3)
    t, _ = template_of(bench, svc, "203.0.113.7")
    assert (t.real_id, t.real_gen) == (rid(bench, svc, got), bench.dp.gens[rid(bench, svc, got)])
    assert go(bench, tcp4(src="203.0.113.8", sport=40001)) == R2      # the other template stands


def test_sweep_drops_templates_of_removed_reals(bench):
    bench.reset(svc_cfg())
    assert go(bench, tcp4(src="203.0.113.7")) == R1
    assert go(bench, tcp4(src="203.0.113.8")) == R2
    bench.dp.apply(bench.config(svc_cfg(((R2, 1), (R3, 1)))))
    res = bench.dp.sweep()
    assert res.templates_expired == 1
    assert set(templates(bench)) == {"203.0.113.8"}


def test_quiescent_real_keeps_template(bench):
    bench.reset(svc_cfg())
    svc = bench.dp.config.services[0]
    assert go(bench, tcp4(src="203.0.113.7")) == R1
    bench.dp.apply(bench.config(svc_cfg(((R1, 0), (R2, 1), (R3, 1)))))
    assert go(bench, tcp4(src="203.0.113.7", sport=40001)) == R1      # quiescent, but the template holds
    assert go(bench, tcp4(src="203.0.113.8")) != R1                   # new clients avoid it
    assert bench.dp.sweep().templates_expired == 0
    t, _ = template_of(bench, svc, "203.0.113.7")
    assert t.real_id == rid(bench, svc, R1)


def test_expire_quiescent_template(bench):
    bench.reset(svc_cfg(extra="expire_quiescent_template = true\n"))
    svc = bench.dp.config.services[0]
    assert go(bench, tcp4(src="203.0.113.7")) == R1
    bench.dp.apply(bench.config(svc_cfg(((R1, 0), (R2, 1), (R3, 1)), extra="expire_quiescent_template = true\n")))
    got = go(bench, tcp4(src="203.0.113.7", sport=40001))
    assert got in (R2, R3)
    t, _ = template_of(bench, svc, "203.0.113.7")
    assert t.real_id == rid(bench, svc, got)
    # the established flow on the quiescent real keeps it
    assert go(bench, tcp4(src="203.0.113.7", flags="A")) == R1


# -- (5) a connection whose real was removed is rescheduled, not dropped -----------------------------------------

def test_connection_of_removed_real_rescheduled(bench):
    bench.reset(svc_cfg())
    svc = bench.dp.config.services[0]
    assert go(bench, tcp4(src="203.0.113.7", flags="S")) == R1
    assert go(bench, tcp4(src="203.0.113.7", flags="A")) == R1
    bench.dp.apply(bench.config(svc_cfg(((R2, 1), (R3, 1)))))
    got = go(bench, tcp4(src="203.0.113.7", flags="PA", payload=b"more"))
    assert got in (R2, R3)
    c = lookup_conn(bench.dp, tcp4(src="203.0.113.7"))
    assert (c.real_id, c.real_gen, c.state) == (rid(bench, svc, got), bench.dp.gens[rid(bench, svc, got)],
                                                S.CONN_STATE["est"])
    assert go(bench, tcp4(src="203.0.113.7", flags="A")) == got      # and stays there
    t, _ = template_of(bench, svc, "203.0.113.7")
    assert t.real_id == rid(bench, svc, got)
    assert bench.verdicts() == {"fwd_tx": 4}


def test_connection_of_removed_real_rescheduled_without_persistence(bench):
    cfg = (f'[[service]]\nvip = "{VIP}"\nport = 80\nproto = "tcp"\nscheduler = "rr"\n'
           + "".join(f'  [[service.real]]\n  address = "{a}"\n' for a in (R1, R2)))
    bench.reset(cfg)
    assert go(bench, tcp4(flags="S")) == R1
    bench.dp.apply(bench.config(cfg.replace(f'  [[service.real]]\n  address = "{R1}"\n', "")))
    assert go(bench, tcp4(flags="A")) == R2
    svc = bench.dp.config.services[0]
    assert lookup_conn(bench.dp, tcp4()).real_id == rid(bench, svc, R2)
