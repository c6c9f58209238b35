"""The ECMP lab (xlb/lab/ecmp.py; issue 19): a BIRD router spreading by ECMP over 3 balancers, each with BIRD (eBGP +
BFD) and `xlb run --bird-socket`, DR reals and clients; 50 long-lived connections per service and 20 persistent
clients (/24). Cutting a balancer's link or draining it keeps every connection and every client on its real where
the balancers agree without talking (mh; placement = "consistent"), and breaks them where they do not (rr without
sync: the baseline). `python -m bench.scaleout` runs the full 1,000 connections / 200 clients."""
import pytest

from birdlab import NEEDS
from xlb.cli import main
from xlb.lab.ecmp import EcmpLab

pytestmark = NEEDS


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with EcmpLab(tmp_path_factory.mktemp("ecmp"), xlb_main=main, clients=20) as lab:
        yield lab


def agreeing(result):
    return {svc: row for svc, row in result["services"].items() if svc in ("mh", "consistent")}


def test_persistent_clients_keep_their_real_across_balancers_only_with_consistent_placement(lab):
    res = lab.scenario("none", 0, per_service=10)
    assert res["services"]["consistent"]["moved"] == 0
    assert res["services"]["rr-persistent"]["moved"] > 0   # no templates shared: each node chooses its own
    assert all(row["broken"] == 0 for row in res["services"].values())


def test_a_cut_balancer_breaks_nothing_where_balancers_agree(lab):
    res = lab.scenario("cut", 1, per_service=50)
    assert res["converge_s"] < 5   # BFD: ~0.3 s; the bound only catches a withdrawal by hold timer instead
    assert all(row["broken"] == 0 for row in agreeing(res).values()), res
    assert res["services"]["consistent"]["moved"] == 0, res
    assert res["services"]["rr"]["broken"] > 0, res   # the baseline: flows moved to another node lose their real


def test_a_drained_balancer_breaks_nothing_where_balancers_agree(lab):
    res = lab.scenario("drain", 2, per_service=50)
    assert all(row["broken"] == 0 for row in agreeing(res).values()), res
    assert res["services"]["consistent"]["moved"] == 0, res
    assert res["services"]["rr"]["broken"] > 0, res


def test_with_sync_a_cut_balancer_breaks_no_rr_connection_and_moves_no_rr_client(tmp_path):
    """`xlb run --sync both` on every balancer (over the bridge they share): the balancers that inherit a cut
    one's flows know its connections and templates, so rr keeps them, persistent or not (the baseline above breaks
    them)."""
    with EcmpLab(tmp_path, xlb_main=main, clients=20, prefix="xes", sync="both") as lab:
        res = lab.scenario("cut", 1, per_service=50)
    for svc in ("rr", "rr-persistent"):
        assert res["services"][svc]["broken"] == 0, res
    assert res["services"]["rr-persistent"]["moved"] == 0, res
