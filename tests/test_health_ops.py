"""The daemon's side of health checks without a data plane (xlb/ops/health.py): reloads restart only the engines
whose spec changed; what the maps get for a pool (removed, inhibited, sorry server, a real without checker)."""
import time

from xlb.config import read as xread
from xlb.ops.health import Checks, effective


def cfg(delay2=0.5, extra_real=""):
    return xread.parse(f"""
[[service]]
vip = "198.51.100.10"
port = 80
proto = "tcp"
delay_loop = 0.5
sorry_server = "198.18.9.9"
  [service.check]
  kind = "MISC_CHECK"
  misc_path = ["/bin/true"]
  [[service.real]]
  address = "198.18.0.11"
  [[service.real]]
  address = "198.18.0.12"
  weight = 3
  inhibit_on_failure = true
[[service]]
vip = "198.51.100.10"
port = 443
proto = "tcp"
delay_loop = {delay2}
  [[service.real]]
  address = "198.18.0.11"
    [service.real.check]
    kind = "MISC_CHECK"
    misc_path = ["/bin/true"]
{extra_real}""")


def test_a_reload_restarts_only_the_engines_whose_spec_changed():
    said = []
    checks = Checks(lambda: None, said.append)
    try:
        first = cfg()
        checks.update(first)
        e80, e443 = (checks.engines[s.key][1] for s in first.services)
        checks.update(cfg())                      # the same specs: nothing restarts
        assert [checks.engines[s.key][1] for s in first.services] == [e80, e443]
        checks.update(cfg(delay2=0.7))            # only the second service changed
        assert checks.engines[first.services[0].key][1] is e80
        assert checks.engines[first.services[1].key][1] is not e443
        checks.update(xread.parse('[[service]]\nvip = "198.51.100.10"\nport = 80\nproto = "tcp"\n'
                                  '[[service.real]]\naddress = "198.18.0.11"\n'))
        assert checks.engines == {}               # no health keys left: no engine
    finally:
        checks.close()
    assert checks.loop is None


def test_effective_holds_the_pool():
    c = cfg(extra_real='  [[service.real]]\n  address = "198.18.0.13"\n')
    k80, k443 = (s.key for s in c.services)
    # 80: .11 failed (removed), .12 failed and inhibited at 0: both stay in the maps, marked failed;
    # 443: its engine does not know .13 (added at runtime, no checker): up
    failed = frozenset({("198.18.0.11", 80), ("198.18.0.12", 80)})  # (address, port): the engine's real keys
    got = effective(c, {k80: ({("198.18.0.12", 80): 0}, failed),
                        k443: ({("198.18.0.11", 443): 1, ("198.18.0.13", 443): 1}, frozenset())})
    assert [(str(r.address), r.weight, r.failed) for r in got.services[0].reals] == [
        ("198.18.0.11", 0, "removed"), ("198.18.0.12", 0, "inhibited")]
    assert [(str(r.address), r.failed) for r in got.services[1].reals] == [("198.18.0.11", ""), ("198.18.0.13", "")]
    # quorum lost: the sorry server alone (the alive reals out of the maps)
    got = effective(c, {k80: ({("198.18.9.9", 80): 1}, frozenset())})
    assert [(str(r.address), r.weight) for r in got.services[0].reals] == [("198.18.9.9", 1)]
    assert got.services[1] == c.services[1]   # no pool reported yet: as configured
    assert effective(c, {}) == c


def test_pools_arrive_from_the_engines():
    changed = []
    checks = Checks(lambda: changed.append(1), print)
    try:
        c = cfg()
        checks.update(c)
        k80 = c.services[0].key
        assert checks.pools[k80] == ({("198.18.0.11", 80): 1, ("198.18.0.12", 80): 3}, frozenset())  # up at start
        deadline = time.monotonic() + 10
        while not checks.metrics()[1] and time.monotonic() < deadline:
            time.sleep(0.1)
        up, results, seconds = checks.metrics()
        assert sorted(up) == [(("tcp/198.51.100.10:443", "198.18.0.11"), 1),
                              (("tcp/198.51.100.10:80", "198.18.0.11"), 1), (("tcp/198.51.100.10:80", "198.18.0.12"), 1)]
        assert results[("MISC_CHECK", True)] >= 1 and seconds["MISC_CHECK"] > 0
        assert changed
    finally:
        checks.close()
