"""The `--rate` estimator (xlb/ops/listings.py RateEstimator) over a real data plane: IPVS's figures from the counters the
program keeps, smoothed by 1/4 every period, and a counter slot an apply hands to another service or real starts
afresh instead of inheriting a stranger's rate."""
import pytest
from conftest import needs_root
from harness import BENCH_CONFIG, tcp4

from xlb.ops import listings as runtime

# test_metrics's: a fwmark service, and an rr service of 198.51.100.10:80 over .11 and .12 (.13 quiescent)
CONFIG = BENCH_CONFIG
OTHER = CONFIG.replace('vip = "198.51.100.10"', 'vip = "198.51.100.11"')
THIRD = CONFIG.replace('vip = "198.51.100.10"', 'vip = "198.51.100.12"')
SYN_BYTES = 54


def _syns(bench, n, dst="198.51.100.10"):
    for i in range(n):
        assert bench.run(tcp4(dst=dst, sport=41000 + i))[0] == "XDP_TX"


def _rates(dp, est):
    """{VIP, or (VIP, real address): (cps, inpps, inbps)} as `list --rate` shows them."""
    out = {}
    for svc in runtime.listing(dp, est)["services"]:
        out[svc["vip"]] = tuple(svc["rate"][k] for k in ("cps", "inpps", "inbps"))
        for r in svc["reals"]:
            out[(svc["vip"], r["address"])] = tuple(r["rate"][k] for k in ("cps", "inpps", "inbps"))
    return out


@needs_root
def test_rates_from_the_data_planes_counters_smoothed_by_a_quarter(bench, monkeypatch):
    dp = bench.reset(CONFIG)
    # Every figure comes from batch reads (DataPlane.counters is what reads a slot at a time).
    monkeypatch.setattr(dp, "counters", lambda *a: pytest.fail("read a counters slot by slot"))
    est = runtime.RateEstimator()
    est.sample(dp, t=100.0)
    _syns(bench, 16)
    est.sample(dp, t=101.0)           # under a period since the last sample: not taken
    est.sample(dp, t=102.0)
    # 16 connections in 2 s: 8/s, a quarter of it after one period; rr gives each real 8 of them
    vip = "198.51.100.10"
    assert _rates(dp, est) == {
        vip: (2, 2, 16 * SYN_BYTES // 8), (vip, "198.18.0.11"): (1, 1, 8 * SYN_BYTES // 8),
        (vip, "198.18.0.12"): (1, 1, 8 * SYN_BYTES // 8), (vip, "198.18.0.13"): (0, 0, 0),
        None: (0, 0, 0), (None, "198.18.0.13"): (0, 0, 0)}     # the fwmark service saw nothing
    est.sample(dp, t=104.0)           # an idle period: avg += (0 - avg) / 4
    assert _rates(dp, est)["198.51.100.10"] == (round(1.5), round(1.5), round(108 * 0.75))


@needs_root
def test_a_slot_given_to_another_service_starts_afresh(bench):
    dp = bench.reset(CONFIG)
    est = runtime.RateEstimator()
    est.sample(dp, t=100.0)
    _syns(bench, 16)
    est.sample(dp, t=102.0)
    old = {st.svc.vip: st.id for st in dp.services.values()}
    dp.apply(bench.config(OTHER))     # frees the first service's ids ...
    dp.apply(bench.config(THIRD))     # ... which the next new service takes, with no sample in between
    ids = {st.svc.vip: st.id for st in dp.services.values()}
    assert list(ids.values()) == list(old.values())   # the case the estimator must not be fooled by
    est.sample(dp, t=104.0)
    rates = _rates(dp, est)
    assert rates["198.51.100.12"] == (0, 0, 0) and rates[("198.51.100.12", "198.18.0.11")] == (0, 0, 0)
    _syns(bench, 16, dst="198.51.100.12")
    est.sample(dp, t=106.0)
    assert _rates(dp, est)["198.51.100.12"] == (2, 2, 108)
