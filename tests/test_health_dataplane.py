"""What a health-failed real is in the data plane (BPF_PROG_TEST_RUN, maps checked): the daemon's health wiring
writes it marked failed (XLB_REAL_F_DOWN, Real.failed), never as a removal. It takes no new connection and no
template hit, its templates are void at once (an inhibited one's too, unlike an administratively drained real's),
and its established connections do what the service's on_real_failure says: keep, reschedule, reset (IPVS's
expire_nodest_conn: the packet dropped, the entry expired, the retransmission scheduled anew)."""
import ctypes as ct
import dataclasses
import ipaddress

from harness import lookup_conn, real_of, tcp4, to_real, udp4
from xlb.config.model import addr_bytes
from xlb.dataplane import structs as S
from xlb.dataplane.mapkeys import svc_key

VIP = "198.51.100.10"
R1, R2, R3 = "198.18.0.11", "198.18.0.12", "198.18.0.13"
DATA = b"more data"
TIMEOUTS = "[timeouts]\ntcp = 30\nsyn = 20\ntcpfin = 10\nudp = 30\n"
PERSISTENT = "persistence_timeout = 60\n"


def cfg(proto="tcp", port=80, mode=None, extra="", head=TIMEOUTS):
    text = f'{head}[[service]]\nvip = "{VIP}"\nport = {port}\nproto = "{proto}"\nscheduler = "rr"\n{extra}'
    if mode:
        text += f'on_real_failure = "{mode}"\n'
    return text + "".join(f'  [[service.real]]\n  address = "{r}"\n' for r in (R1, R2, R3))


def failing(bench, text, *addrs, how="removed"):
    """Apply text with the real addrs[i] of service i marked failed, as the health wiring writes it
    (xlb/ops/health.py effective)."""
    c = bench.config(text)
    svcs = list(c.services)
    for i, addr in enumerate(addrs):
        svcs[i] = dataclasses.replace(svcs[i], reals=tuple(
            dataclasses.replace(r, failed=how, weight=0) if str(r.address) == addr else r for r in svcs[i].reals))
    bench.dp.apply(dataclasses.replace(c, services=tuple(svcs)))


def template_of(bench, svc, client):
    """(the persist entry of client in svc or None, its key)."""
    key = S.PersistKey(svc=svc_key(svc), client=S.addr_words(addr_bytes(client)))
    return bench.dp.m["persist"].get(key), key


def send(bench, pkt):
    """(XDP action, the real it went to or None)."""
    act, out = bench.run(pkt)
    if act != "XDP_TX":
        return act, None
    assert out == to_real(pkt, real_of(out))
    return act, real_of(out)


def established(bench, mk, **kw):
    """A flow's SYN and first ACK: returns the real it is on."""
    _, real = send(bench, mk(flags="S", **kw))
    assert send(bench, mk(flags="A", **kw)) == ("XDP_TX", real)
    return real


def test_keep_the_established_connection_goes_on_to_the_failed_real(bench):
    text = cfg(mode="keep")
    bench.reset(text)
    real = established(bench, tcp4)
    failing(bench, text, real)
    row = bench.dp.m["reals"][ct.c_uint32(lookup_conn(bench.dp, tcp4()).real_id)]
    assert (row.flags, row.weight) == (S.REAL_F_LIVE | S.REAL_F_DOWN, 0)
    for _ in range(2):   # the second after the flow cache refilled
        assert send(bench, tcp4(flags="PA", payload=DATA)) == ("XDP_TX", real)
    # but it takes no new connection
    assert {send(bench, tcp4(sport=41000 + i))[1] for i in range(6)} == {R1, R2, R3} - {real}


def test_reschedule_moves_the_packet_at_once(bench):
    text = cfg(mode="reschedule")
    bench.reset(text)
    real = established(bench, tcp4)
    failing(bench, text, real)
    act, now = send(bench, tcp4(flags="PA", payload=DATA))
    assert act == "XDP_TX" and now != real
    c = lookup_conn(bench.dp, tcp4())
    assert c.real_id == bench.dp.real_ids.get((bench.dp.config.services[0].key, ipaddress.ip_address(now), 0))
    assert bench.verdicts().get("drop_real_failed", 0) == 0


def test_reset_drops_the_packet_and_expires_the_entry(bench):
    text = cfg(mode="reset")
    bench.reset(text)
    real = established(bench, tcp4)
    failing(bench, text, real)
    assert send(bench, tcp4(flags="PA", payload=DATA)) == ("XDP_DROP", None)
    assert bench.verdicts()["drop_real_failed"] == 1
    assert lookup_conn(bench.dp, tcp4()) is None
    # the retransmission is scheduled anew (the new real's stack answers it with a RST)
    act, now = send(bench, tcp4(flags="PA", payload=DATA))
    assert act == "XDP_TX" and now != real
    assert lookup_conn(bench.dp, tcp4()) is not None


def test_the_default_keeps_tcp_and_reschedules_udp(bench):
    text = cfg() + cfg(proto="udp", port=53, head="")
    bench.reset(text)
    tcp_real = established(bench, tcp4)
    _, udp_real = send(bench, udp4())
    assert send(bench, udp4()) == ("XDP_TX", udp_real)
    failing(bench, text, tcp_real, udp_real)
    assert send(bench, tcp4(flags="PA", payload=DATA)) == ("XDP_TX", tcp_real)
    act, now = send(bench, udp4())
    assert act == "XDP_TX" and now != udp_real


def test_an_inhibited_failed_reals_templates_are_void_at_once(bench):
    text = cfg(extra=PERSISTENT)
    bench.reset(text)
    svc = bench.dp.config.services[0]
    assert send(bench, tcp4(src="203.0.113.7"))[1] == R1
    assert send(bench, tcp4(src="203.0.113.8"))[1] == R2
    failing(bench, text, R1, how="inhibited")
    assert template_of(bench, svc, "203.0.113.7")[0] is None      # deleted by the apply, not at the next sweep
    assert template_of(bench, svc, "203.0.113.8")[0] is not None
    moved = send(bench, tcp4(src="203.0.113.7", sport=40001))[1]
    assert moved in (R2, R3)
    # back up: its former client stays where it moved (its template says so)
    bench.dp.apply(bench.config(text))
    assert send(bench, tcp4(src="203.0.113.7", sport=40002))[1] == moved


def test_a_failed_reals_template_is_never_followed(bench):
    """The data plane's own rule (bpf/persist.h), whatever the control plane has not deleted yet."""
    text = cfg(extra=PERSISTENT)
    bench.reset(text)
    svc = bench.dp.config.services[0]
    assert send(bench, tcp4(src="203.0.113.7"))[1] == R1
    t, key = template_of(bench, svc, "203.0.113.7")
    failing(bench, text, R1, how="inhibited")
    bench.dp.m["persist"][key] = t                                 # as if the deletion had not happened
    assert send(bench, tcp4(src="203.0.113.7", sport=40001))[1] in (R2, R3)


def test_an_administratively_drained_real_keeps_its_templates(bench):
    text = cfg(extra=PERSISTENT)
    bench.reset(text)
    svc = bench.dp.config.services[0]
    assert send(bench, tcp4(src="203.0.113.7"))[1] == R1
    bench.dp.apply(bench.config(cfg(extra=PERSISTENT).replace(f'"{R1}"\n', f'"{R1}"\n  weight = 0\n')))
    assert bench.dp.config.services[0].reals[0].weight == 0
    assert template_of(bench, svc, "203.0.113.7")[0] is not None
    assert send(bench, tcp4(src="203.0.113.7", sport=40001))[1] == R1
