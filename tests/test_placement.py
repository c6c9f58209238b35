"""placement = "consistent" (issue 19): a persistent service's new template takes the Maglev slot of the masked
client and the service key, so balancers that never talk give a client the same real. The config rules and the
control plane's prediction run without root; the data plane's answers come from BPF_PROG_TEST_RUN, one bench
standing in for each balancer in turn (a reset is a balancer that has never seen the client)."""
import ipaddress

import pytest

from harness import real_of, tcp4, tcp6, to_real
from xlb.config import read as xread
from xlb.config.dump import dumps, to_tree
from xlb.dataplane.mapkeys import consistent_real, table_indexes
from xlb.errors import ConfigError

VIP = "198.51.100.10"
REALS = ("198.18.0.11", "198.18.0.12", "198.18.0.13")
CLIENTS = [f"203.0.113.{i}" for i in range(1, 21)] + [f"198.51.100.{i}" for i in range(101, 121)]


def cfg(reals=REALS, extra='placement = "consistent"\n', netmask="255.255.255.0"):
    out = (f'[[service]]\nvip = "{VIP}"\nport = 80\nproto = "tcp"\npersistence_timeout = 300\n'
           f'persistence_netmask = "{netmask}"\n{extra}')
    return out + "".join(f'  [[service.real]]\n  address = "{r}"\n' for r in reals)


def reject(text):
    with pytest.raises(ConfigError) as ei:
        xread.parse(text, "x.toml")
    return str(ei.value)


# -- the config ----------------------------------------------------------------------------------------------------

def test_consistent_placement_reads_as_mh_and_dumps_back():
    svc = xread.parse(cfg()).services[0]
    assert (svc.placement, svc.scheduler) == ("consistent", "mh")
    again = xread.parse(dumps(to_tree(xread.parse(cfg())))).services[0]
    assert (again.placement, again.scheduler, again.persistence_netmask) == ("consistent", "mh",
                                                                            svc.persistence_netmask)
    assert xread.parse(cfg(extra="")).services[0].placement == "scheduler"


@pytest.mark.parametrize("text, where, says", [
    (cfg().replace("persistence_timeout = 300\n", "").replace('persistence_netmask = "255.255.255.0"\n', ""),
     "service[0].placement", "without persistence_timeout"),
    (cfg(extra='placement = "consistent"\nscheduler = "rr"\n'), "service[0].scheduler", "would never be used"),
    (cfg(extra='placement = "consistent"\nsched_flags = ["mh-port"]\n'), "service[0].sched_flags", "mh-port"),
    (cfg(extra='placement = "sticky"\n'), "service[0].placement", "sticky"),
])
def test_bad_placement_names_the_field(text, where, says):
    msg = reject(text)
    assert where in msg and says in msg and "x.toml" in msg


def test_prediction_ignores_the_order_the_config_lists_the_reals_in():
    a = xread.parse(cfg()).services[0]
    b = xread.parse(cfg(reals=REALS[::-1])).services[0]
    assert [a.reals[i].address for i in table_indexes(a)] == [b.reals[i].address for i in table_indexes(b)]
    picks = {c: consistent_real(a, c) for c in CLIENTS}
    assert picks == {c: consistent_real(b, c) for c in CLIENTS}
    assert len(set(picks.values())) == 2   # 40 clients in two /24s: one real each
    assert consistent_real(a, "203.0.113.200") == picks["203.0.113.1"]  # the template's key is the masked client


# -- the data plane ------------------------------------------------------------------------------------------------

def send(bench, client, sport=40000, flags="S"):
    pkt = tcp4(src=client, dst=VIP, sport=sport, flags=flags)
    act, out = bench.run(pkt)
    assert act == "XDP_TX", (act, bench.verdicts())
    assert out == to_real(pkt, real_of(out))
    return real_of(out)


def host24(i):
    return f"203.0.{i}.{(i * 37) % 250 + 1}"


def test_balancers_that_never_talk_place_a_network_alike(bench):
    clients = [host24(i) for i in range(20)]     # 20 persistent clients, each its own /24
    svc = bench.reset(cfg()).config.services[0]
    on_a = {c: send(bench, c) for c in clients}
    assert on_a == {c: str(consistent_real(svc, c)) for c in clients}
    assert len(set(on_a.values())) > 1
    # Balancer B lists the reals in another order (other real ids) and has no template: ECMP brings it a
    # mid-stream packet of another address of each client's /24, a flow it has never seen.
    bench.reset(cfg(reals=REALS[::-1]))
    for c in clients:
        other = str(ipaddress.ip_address(c) + 1 if not c.endswith(".250") else ipaddress.ip_address(c) - 1)
        assert send(bench, other, sport=41000, flags="A") == on_a[c], c


def test_a_failed_real_moves_only_its_own_clients(bench):
    clients = [host24(i) for i in range(20)]
    bench.reset(cfg())
    before = {c: send(bench, c) for c in clients}
    failed = REALS[1]
    survivors = tuple(r for r in REALS if r != failed)
    assert failed in before.values()
    bench.dp.apply(bench.config(cfg(reals=survivors)))  # the health engine takes the failed real out
    after = {c: send(bench, c, sport=42000) for c in clients}
    assert {c: r for c, r in after.items() if before[c] != failed} == \
           {c: r for c, r in before.items() if r != failed}
    assert all(after[c] in survivors for c in clients if before[c] == failed)
    # A balancer that never saw them places the moved clients where this one did.
    moved = {c: after[c] for c in clients if before[c] == failed}
    bench.reset(cfg(reals=survivors[::-1]))
    assert {c: send(bench, c, sport=43000, flags="A") for c in moved} == moved


V6 = ("2001:db8::11", "2001:db8::12", "2001:db8::13")
FWMARK = ('[[mark]]\nmark = 7\nproto = "tcp"\ndst = "198.51.100.10/32"\nports = [80, 443]\n'
          '[[service]]\nfwmark = 7\npersistence_timeout = 300\npersistence_netmask = "255.255.255.0"\n'
          'placement = "consistent"\n' + "".join(f'  [[service.real]]\n  address = "{r}"\n' for r in REALS))


@pytest.mark.parametrize("text, clients, pkt", [
    (cfg(reals=V6, netmask="64").replace(VIP, "2001:db8:100::10"), [f"2001:db8:77:{i:x}::7" for i in range(12)],
     lambda c, port: tcp6(src=c, dst="2001:db8:100::10", sport=40000 + port, dport=80)),
    (FWMARK, [host24(i) for i in range(12)], lambda c, port: tcp4(src=c, dst=VIP, sport=40000 + port, dport=port)),
], ids=["ipv6-vip", "fwmark"])
def test_the_data_plane_places_as_predicted(bench, text, clients, pkt):
    svc = bench.reset(text).config.services[0]
    for c in clients:
        got = set()
        for port in (80, 443) if svc.fwmark else (80,):
            p = pkt(c, port)
            act, out = bench.run(p)
            assert act == "XDP_TX" and out == to_real(p, real_of(out)), (act, bench.verdicts())
            got.add(real_of(out))
        assert got == {str(consistent_real(svc, c))}, c
