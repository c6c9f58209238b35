"""One address, two ports (issue 15): under NAT, 198.18.1.11:8080 and 198.18.1.11:8081 are two reals of one service,
as they are two IPVS destinations. The config, ipvsadm's -a/-e/-d, keepalived's real_server lines, the ids the maps
use (kept across an adoption), the health checks' pool, the listings and the metrics all name a real by its
address and port; direct routing still takes an address once. Packet fixtures: tests/harness.py's bench."""
import ipaddress

import pytest
from conftest import needs_root

from cases import REDIRECT, V4
from harness import LB1_MAC, REAL_MAC, conn_key, lookup_conn, tcp4, vs, write
from natframes import R4, nat_in, nat_out, reply, run, svc
from xlb.config import read as xread
from xlb.config.model import addr_bytes
from xlb.dataplane import structs as S
from xlb.dataplane.apply import DataPlane
from xlb.dataplane.mapkeys import maglev_idents
from xlb.errors import ConfigError
from xlb.health import spec as hspec
from xlb.importers.keepalived import translate as keepalived
from xlb.observe import metrics
from xlb.ops import admin, ipvsadm, ipvslist, listings
from xlb.ops.health import effective
from xlb.ops.sync import load_entries, to_wire
from xlb.sync import wire

TWO = svc(V4, 80, "tcp", [(R4, 8080), (R4, 8081)])
CHECKED = TWO.replace("  port = 8081\n", "  port = 8081\n    [service.real.check]\n    kind = \"TCP_CHECK\"\n"
                      ).replace("  port = 8080\n", "  port = 8080\n    [service.real.check]\n    kind = \"TCP_CHECK\"\n")
KEY = ("tcp", ipaddress.ip_address(V4), 80)
SHARED = "198.18.1.3"  # an address two reals share in the tests below


def real_ports(cfg):
    return [[(str(r.address), r.port) for r in s.reals] for s in cfg.services]


# -- the config ----------------------------------------------------------------------------------------------------

def test_config_takes_two_ports_of_one_address_under_nat_only():
    assert real_ports(xread.parse(TWO, "x")) == [[(R4, 8080), (R4, 8081)]]
    # The same destination twice is still refused: an address and port given twice, or a port-less NAT real (the
    # service's port) beside the same address with the service's port written out.
    for reals, name in (([(R4, 8080), (R4, 8080)], f"{R4}:8080"), ([(R4, None), (R4, 80)], f"{R4}:80")):
        with pytest.raises(ConfigError) as info:
            xread.parse(svc(V4, 80, "tcp", reals), "x")
        assert info.value.where == "service[0].real[1].address"
        assert info.value.message.startswith(f"duplicate real {name}: already given as service[0].real[0]")
    # Direct routing keeps the port: one address is one real.
    with pytest.raises(ConfigError) as info:
        xread.parse(svc(V4, 80, "tcp", [(R4, None), (R4, None)], method="dr"), "x")
    assert info.value.message.startswith(f"duplicate real {R4}: already given as service[0].real[0]")


def test_ipvsadm_add_edit_delete_name_a_real_by_address_and_port():
    def do(cfg, text):
        return admin.apply_ops(cfg, ipvsadm.parse_restore(text), "ipvsadm")
    cfg = do(xread.parse("", "x"), f"-A -t {V4}:80 -s rr\n-a -t {V4}:80 -r {R4}:8080 -m\n"
                                   f"-a -t {V4}:80 -r {R4}:8081 -m -w 3\n")
    assert [(r.port, r.weight) for r in cfg.services[0].reals] == [(8080, 1), (8081, 3)]
    cfg = do(cfg, f"-e -t {V4}:80 -r {R4}:8080 -m -w 5\n")
    assert [(r.port, r.weight) for r in cfg.services[0].reals] == [(8080, 5), (8081, 3)]
    with pytest.raises(ConfigError) as info:            # which of the two? ipvsadm would take port 80: not there
        do(cfg, f"-d -t {V4}:80 -r {R4}\n")
    assert f"has reals {R4}:8080, {R4}:8081: give the real's port" in info.value.message
    with pytest.raises(ConfigError) as info:
        do(cfg, f"-a -t {V4}:80 -r {R4}:8081 -m\n")
    assert f"real {R4}:8081 already exists" in info.value.message
    cfg = do(cfg, f"-d -t {V4}:80 -r {R4}:8080\n")
    assert [(r.port, r.weight) for r in cfg.services[0].reals] == [(8081, 3)]
    cfg = do(cfg, f"-e -t {V4}:80 -r {R4} -w 2\n")     # one real on the address: no port needed, as before
    assert [(r.port, r.weight) for r in cfg.services[0].reals] == [(8081, 2)]


def test_keepalived_two_real_servers_on_one_address_are_two_reals(tmp_path):
    body = "protocol TCP\nlb_algo rr\nlb_kind NAT\n" + "".join(
        f"real_server {R4} {p} {{\n  TCP_CHECK {{\n    connect_timeout 3\n  }}\n}}\n" for p in (8080, 8081))
    cfg = keepalived.load(write(tmp_path, vs(body))).config
    assert real_ports(cfg) == [[(R4, 8080), (R4, 8081)]]
    # Each real's check goes to its own port.
    h = cfg.services[0].health
    assert [hspec.resolve(r.checks[0], r, h).connect_port for r in h.reals] == [8080, 8081]
    # Direct routing: keepalived resets the ports, and then the address is one destination given twice.
    with pytest.raises(ConfigError) as info:
        keepalived.load(write(tmp_path, vs(body.replace("NAT", "DR"))))
    assert f"line 10: real_server: duplicate real {R4}: already given" in str(info.value)


def test_health_a_failed_port_removes_only_that_real():
    cfg = xread.parse(CHECKED, "x")
    h = cfg.services[0].health
    assert [r.key for r in h.reals] == [(R4, 8080), (R4, 8081)]   # the engine's pool keys
    out = effective(cfg, {KEY: ({(R4, 8080): 1}, frozenset({(R4, 8081)}))})
    assert [(r.port, r.weight, r.failed) for r in out.services[0].reals] == [(8080, 1, ""), (8081, 0, "removed")]


# -- the data plane ------------------------------------------------------------------------------------------------

@needs_root
def test_nat_spreads_over_two_ports_of_one_real_address_and_rewrites_each_way(bench):
    """rr over R4:8080 and R4:8081: new connections alternate, each rewritten to its real's port (exact bytes), and
    each port's replies rewritten back to VIP:80; two real ids, counted apart."""
    dp = bench.reset(TWO)
    steps = []
    for i, port in enumerate((8080, 8081, 8080, 8081)):
        syn = tcp4(sport=41000 + i)
        steps.append((syn, None, REDIRECT, nat_in(syn, R4, port, LB1_MAC, REAL_MAC[R4]), "fwd_redirect"))
        rep = reply(syn, R4, port)
        steps.append((rep, bench.ifindex1, REDIRECT, nat_out(rep, V4, 80), "fwd_reply_redirect"))
    run(bench, steps)
    ids = [dp.real_ids.get((KEY, r.address, r.port)) for r in dp.config.services[0].reals]
    assert None not in ids and len(set(ids)) == 2
    assert [dp.counters("real_stats", rid).conns for rid in ids] == [2, 2]
    assert [dp.counters("real_out_stats", rid).packets for rid in ids] == [2, 2]
    # Listings: ipvsadm -L -n shows both destinations; the metrics label them address:port (the address alone is
    # ambiguous here), and `list --json` keeps address and port apart.
    snap = listings.listing(dp)
    assert ipvslist.render_list(snap).splitlines()[4:6] == [
        f"  -> {R4}:8080             Masq    1      0          2         ",
        f"  -> {R4}:8081             Masq    1      0          2         "]
    assert [(r["address"], r["port"]) for r in snap["services"][0]["reals"]] == [(R4, 8080), (R4, 8081)]
    text = metrics.XlbCollector(dp).exposition().decode()
    assert f'xlb_real_connections_total{{real="{R4}:8080",service="tcp/{V4}:80"}} 2' in text
    assert f'xlb_real_connections_total{{real="{R4}:8081",service="tcp/{V4}:80"}} 2' in text


@needs_root
def test_adopt_keeps_each_ports_real_id_and_a_health_failure_takes_one(bench):
    """A restarted daemon rebuilds both ids from the pinned reals map (address and port) and the next apply keeps
    them; then one port failing its checks leaves new connections to the other only."""
    dp = bench.reset(TWO)
    before = dict(dp.real_ids.ids)
    again = DataPlane(bench.prog, dp.tables)
    assert again.adopt()["reals"] == 2
    assert again.real_ids.ids == before
    cfg = bench.config(CHECKED)
    again.apply(effective(cfg, {KEY: ({(R4, 8080): 1}, frozenset({(R4, 8081)}))}))
    assert again.real_ids.ids == before
    bench.dp = again
    for i in range(4):
        syn = tcp4(sport=42000 + i)
        assert bench.run(syn) == (REDIRECT, nat_in(syn, R4, 8080, LB1_MAC, REAL_MAC[R4]))


@needs_root
def test_state_sync_names_the_real_by_its_port(bench):
    """IPVS's sync entries carry the destination port: a backup puts a received connection on the real with that
    port, and a master sends its real's own port (IPVS's dport), not the service's."""
    dp = bench.reset(TWO)
    ip = ipaddress.ip_address
    conn = wire.SyncConn(wire.IPPROTO_TCP, ip("203.0.113.7"), 43000, ip(V4), 80, ip(R4), 8081, wire.CONN_F_MASQ,
                         wire.TCP_S_ESTABLISHED, 0, 900)
    assert load_entries(dp, [conn]) == {"loaded_conns": 1}
    rid = dp.real_ids.get((KEY, ip(R4), 8081))
    assert lookup_conn(dp, tcp4(sport=43000)).real_id == rid
    syn = tcp4(sport=43000, flags="A")
    assert bench.run(syn) == (REDIRECT, nat_in(syn, R4, 8081, LB1_MAC, REAL_MAC[R4]))
    st = dp.services[KEY]
    ev = S.SyncEvent(key=conn_key(syn), svc_id=st.id, real_id=rid, state=S.CONN_STATE["est"])
    (out,) = to_wire(ev, st, ip(R4), dp.config.timeouts, 8081)
    assert (out.daddr, out.dport, out.vport) == (ip(R4), 8081, 80)
    assert out.flags & wire.CONN_F_FWD_MASK == wire.CONN_F_MASQ      # a NAT connection, as IPVS marks it



@needs_root
def test_a_fwmark_template_names_the_one_real_on_its_address(bench):
    """A fwmark (or port-zero) service's template carries no port: a backup puts it on the one real of its
    address whatever that real's own port, and on none when two ports share the address."""
    mark = '[[mark]]\nmark = 5\ndst = "198.51.100.10/32"\nproto = "tcp"\nports = [80, 443]\n'
    dp = bench.reset(mark + '[[service]]\nfwmark = 5\nscheduler = "rr"\nmethod = "nat"\npersistence_timeout = 60\n'
                     + "".join(f'  [[service.real]]\n  address = "{a}"\n  port = {p}\n'
                               for a, p in ((R4, 8080), (SHARED, 8080), (SHARED, 8081))))
    ip = ipaddress.ip_address
    assert load_entries(dp, [wire.fwmark_template(5, ip("203.0.113.7"), ip(R4), 60)]) == {"loaded_templates": 1}
    assert load_entries(dp, [wire.fwmark_template(5, ip("203.0.113.8"), ip(SHARED), 60)]) == {
        "skipped_unknown_real": 1}
    for port in (80, 443):
        syn = tcp4(src="203.0.113.7", sport=43000 + port, dport=port)
        assert bench.run(syn) == (REDIRECT, nat_in(syn, R4, 8080, LB1_MAC, REAL_MAC[R4]))


def test_a_second_port_on_one_address_moves_no_other_reals_maglev_identity():
    """Only the reals that share an address take their port into their Maglev identity: the others keep the
    identity they had, so their slots' preferences stay."""
    def idents(reals):
        return maglev_idents(xread.parse(svc(V4, 80, "tcp", reals), "<test>").services[0].reals)
    one, two = idents([(R4, 8080), (SHARED, 8080)]), idents([(R4, 8080), (SHARED, 8080), (R4, 8081)])
    assert two[1] == one[1] == addr_bytes(ipaddress.ip_address(SHARED))
    assert two[0] != one[0] and two[0] != two[2]
