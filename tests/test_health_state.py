"""The health state machine on a fake clock: the times keepalived 2.2's rules predict for retry,
delay_before_retry, alpha, warmup, quorum/hysteresis, the sorry server, misc_dynamic weights and notifies.
Pure: no sockets, no root."""
import pytest

from xlb.health.checker import label
from xlb.health.state import Core, Result, REAL_DOWN, REAL_UP, QUORUM_GAINED, QUORUM_LOST, WEIGHT
from health_harness import Sim, service, tcp


def test_down_after_retry_plus_one_failures_delay_before_retry_apart_then_up_after_one_success():
    svc = service([("198.18.1.2", 1, tcp(retry=2, delay_before_retry=0.25))], delay_loop=1.0, warmup=0)
    dead = lambda a, t: not 3.5 <= t < 7.0
    sim = Sim([svc], dead)
    sim.run(9.0)
    # checks at 0,1,2,3 pass; 4 fails -> retries at 4.25 and 4.5; the third consecutive failure removes the real
    assert [r for r in sim.effect_times() if 3.9 < r[0] < 5.6] == [
        (4.0, "198.18.1.2", False), (4.25, "198.18.1.2", False), (4.5, "198.18.1.2", False),
        (5.5, "198.18.1.2", False)]
    downs = sim.times(REAL_DOWN)
    assert len(downs) == 1 and downs[0].pool == {}
    # while down, one check per delay_loop (no retries); the first success at 7.5 adds it back
    ups = sim.times(REAL_UP)
    assert len(ups) == 1 and ups[0].pool == {("198.18.1.2", 80): 1}
    assert (7.5, "198.18.1.2", True) in sim.effect_times()
    assert "Removing service [198.18.1.2]:tcp:80 from VS [198.51.100.10]:tcp:80" in sim.lines
    assert "TCP_CHECK on service [198.18.1.2]:tcp:80 failed after 2 retries." in sim.lines
    assert "Adding service [198.18.1.2]:tcp:80 to VS [198.51.100.10]:tcp:80" in sim.lines
    assert sim.lines.count("probe 198.18.1.2") == 3   # the success at start, the failure, the recovery: once each


def test_the_time_of_removal_follows_retry_and_delay_before_retry():
    # keepalived's rule: first failure at a delay_loop tick, then `retry` more, delay_before_retry apart
    for retry, dbr in ((0, 0.5), (1, 0.5), (3, 0.2)):
        svc = service([("198.18.1.2", 1, tcp(retry=retry, delay_before_retry=dbr))], delay_loop=1.0, warmup=0)
        sim = Sim([svc], lambda a, t: t < 2.5)
        removed = []
        sim.core.on_effect = lambda e: removed.append(sim.now) if e.kind == REAL_DOWN else None
        sim.run(6.0)
        assert removed == [pytest.approx(3.0 + retry * dbr)], (retry, dbr)


def test_at_start_one_failure_is_enough_without_alpha():
    svc = service([("198.18.1.2", 1, tcp(retry=3))], delay_loop=1.0, warmup=0)
    sim = Sim([svc], lambda a, t: False)
    assert sim.effects[0].pool == {("198.18.1.2", 80): 1}        # not alpha: starts in the pool
    sim.run(0.0)
    assert [e.kind for e in sim.effects[1:]] == [REAL_DOWN, QUORUM_LOST]
    assert "TCP_CHECK on service [198.18.1.2]:tcp:80 failed." in sim.lines


def test_alpha_starts_down_and_is_added_after_one_pass():
    svc = service([("198.18.1.2", 1, tcp(retry=3)), ("198.18.1.3", 1, {})], delay_loop=1.0, warmup=0,
                  alpha=True)
    sim = Sim([svc], lambda a, t: t >= 1.5)
    assert sim.effects[0].pool == {("198.18.1.3", 80): 1}   # the real without a checker is up
    sim.run(1.0)
    assert not sim.times(REAL_UP) and not sim.times(REAL_DOWN)   # failures of a down real change nothing
    sim.run(2.0)
    assert [e.real for e in sim.times(REAL_UP)] == [("198.18.1.2", 80)]
    assert sim.times(REAL_UP)[0].pool == {("198.18.1.2", 80): 1, ("198.18.1.3", 80): 1}


def test_warmup_spreads_the_first_checks_over_warmup_seconds():
    svc = service([("198.18.1.2", 1, tcp()), ("198.18.1.3", 1, tcp(warmup=0))], delay_loop=10.0)
    core = Core([svc], label, log=lambda l: None, rand=lambda: 0.5, bootstrap=1.0)
    dues = sorted((c.real.key[0], due) for due, c in core.start(100.0))
    assert dues == [("198.18.1.2", 106.0), ("198.18.1.3", 101.0)]   # warmup defaults to delay_loop


def test_every_checker_of_a_real_must_pass():
    real = {"check": [{"kind": "TCP_CHECK"}, {"kind": "TCP_CHECK", "connect_port": 8080}]}
    svc = service([("198.18.1.2", 1, real)], delay_loop=1.0, warmup=0, retry=0)
    sim = Sim([svc], lambda a, t: True)
    first, second = sim.core.checkers
    sim.core.report(second, Result(False, "8080 refused"), 0.5)
    assert [e.kind for e in sim.effects[1:]] == [REAL_DOWN, QUORUM_LOST]
    sim.core.report(first, Result(True), 0.6)
    assert not sim.times(REAL_UP)                                 # the other checker still fails
    sim.core.report(second, Result(True), 0.7)
    assert len(sim.times(REAL_UP)) == 1


def test_inhibit_on_failure_keeps_the_real_at_weight_zero():
    svc = service([("198.18.1.2", 3, tcp(retry=0)), ("198.18.1.3", 1, {})], delay_loop=1.0, warmup=0,
                  inhibit_on_failure=True)
    sim = Sim([svc], lambda a, t: t < 1.5)
    sim.run(2.0)
    assert sim.times(REAL_DOWN)[0].pool == {("198.18.1.2", 80): 0, ("198.18.1.3", 80): 1}
    assert "Disabling service [198.18.1.2]:tcp:80 of VS [198.51.100.10]:tcp:80" in sim.lines


def test_quorum_hysteresis_and_the_sorry_server():
    reals = [(f"198.18.1.{i}", 1, tcp(retry=0)) for i in (1, 2, 3, 4)]
    svc = service(reals, delay_loop=1.0, warmup=0, quorum=3, hysteresis=1,
                  sorry_server={"address": "198.18.9.9"}, quorum_up="/bin/up", quorum_down="/bin/down")
    alive = {"198.18.1.1": 0, "198.18.1.2": 0, "198.18.1.3": 2.5, "198.18.1.4": 1.5}   # dies at t
    back = {"198.18.1.3": 5.5, "198.18.1.4": 4.5}

    def up(a, t):
        return not (alive[a] and alive[a] <= t < back.get(a, 99))
    sim = Sim([svc], up)
    sim.run(3.0)
    assert not sim.times(QUORUM_LOST)           # .4 and .3 down: live weight 2, not below quorum - hysteresis = 2
    sim.core.report(sim.core.checkers[0], Result(False), 3.2)   # .1 fails too (back at its next check, 4.0)
    lost = sim.times(QUORUM_LOST)
    assert len(lost) == 1 and lost[0].pool == {("198.18.9.9", 80): 1}
    assert "Lost quorum 3-1=2 > 1 for VS [198.51.100.10]:tcp:80" in sim.lines
    assert "Adding sorry server [198.18.9.9]:tcp:80 to VS [198.51.100.10]:tcp:80" in sim.lines
    sim.run(5.0)                                # .1 back at 4, .4 at 5: live weight 3, gaining needs 3 + 1 = 4
    assert not sim.times(QUORUM_GAINED)
    sim.run(6.0)                                # .3 back at 6: 4 alive >= 4
    gained = sim.times(QUORUM_GAINED)
    assert len(gained) == 1 and set(gained[0].pool) == {(f"198.18.1.{i}", 80) for i in (1, 2, 3, 4)}
    assert "Gained quorum 3+1=4 <= 4 for VS [198.51.100.10]:tcp:80" in sim.lines
    assert "Removing sorry server [198.18.9.9]:tcp:80 from VS [198.51.100.10]:tcp:80" in sim.lines
    assert [c for _, c in sim.commands] == ["/bin/down", "/bin/up"]


def test_without_quorum_settings_losing_every_real_is_losing_quorum():
    svc = service([("198.18.1.2", 1, tcp(retry=0))], delay_loop=1.0, warmup=0, sorry_server="198.18.9.9",
                  sorry_server_inhibit=True)
    sim = Sim([svc], lambda a, t: t < 0.5 or t >= 2.5)
    assert sim.effects[0].pool == {("198.18.1.2", 80): 1, ("198.18.9.9", 80): 0}
    sim.run(1.0)
    assert sim.times(QUORUM_LOST)[0].pool == {("198.18.9.9", 80): 1}
    assert "Enabling sorry server [198.18.9.9]:tcp:80 to VS [198.51.100.10]:tcp:80" in sim.lines
    sim.run(3.0)
    assert sim.times(QUORUM_GAINED)[0].pool == {("198.18.1.2", 80): 1, ("198.18.9.9", 80): 0}


def test_starting_below_quorum_brings_in_the_sorry_server_at_once():
    svc = service([("198.18.1.2", 1, tcp())], delay_loop=1.0, alpha=True, sorry_server="198.18.9.9")
    sim = Sim([svc], lambda a, t: True)
    assert sim.effects[0].pool == {("198.18.9.9", 80): 1}
    assert "Starting with quorum down 1-0=1 > 0 for VS [198.51.100.10]:tcp:80" in sim.lines


def test_misc_dynamic_sets_the_weight_from_the_exit_status():
    real = {"check": {"kind": "MISC_CHECK", "misc_path": "/bin/true", "misc_dynamic": True}}
    svc = service([("198.18.1.2", 1, real)], delay_loop=1.0, warmup=0)
    statuses = {0: 12, 1: 2, 2: 1, 3: 0, 4: 7}
    sim = Sim([svc], None, misc_status=lambda a, t: statuses[int(t)])
    sim.run(4.0)
    weights = [(e.kind, e.weight) for e in sim.effects if e.kind in (WEIGHT, REAL_DOWN, REAL_UP)]
    assert weights == [(WEIGHT, 10), (WEIGHT, 0), (REAL_DOWN, None), (REAL_UP, 0), (WEIGHT, 5)]
    assert "Changing weight from 1 to 10 for active service [198.18.1.2]:tcp:80 of VS [198.51.100.10]:tcp:80" \
        in sim.lines


def test_notify_up_and_down_run_once_per_change_and_omega_runs_them_at_stop():
    real = dict(tcp(retry=0), notify_up="/bin/nu", notify_down=["/bin/nd", "x"])
    svc = service([("198.18.1.2", 1, real)], delay_loop=1.0, warmup=0, omega=True, quorum_down="/bin/qd")
    sim = Sim([svc], lambda a, t: not 1.5 <= t < 3.5)
    sim.run(5.0)
    assert [(t, c) for t, c in sim.commands] == [(2.0, "/bin/nd"), (2.0, "/bin/qd"), (4.0, "/bin/nu")]
    sim.core.stop()
    assert [c for _, c in sim.commands[3:]] == ["/bin/nd", "/bin/qd"]


class _Passes(list):
    """A list that counts the passes over it."""
    passes = 0

    def __iter__(self):
        _Passes.passes += 1
        return super().__iter__()


def test_a_real_change_does_not_pass_over_every_real():
    """A switch failure takes 1,000 of 1,000 reals down: each change must cost O(1) (plus the copy of the pool
    its Effect carries), not a pass over every real for the live weight and the pool (quadratic: minutes of CPU
    at 10,000 reals)."""
    reals = [(f"198.18.{i // 250}.{i % 250 + 1}", 1, tcp(retry=0)) for i in range(1000)]
    sim = Sim([service(reals, delay_loop=1, quorum=500, sorry_server="198.18.9.9")], lambda a, t: t < 5)
    (s,) = sim.core.services
    s.reals = _Passes(s.reals)
    _Passes.passes = 0
    sim.run(7.0)
    assert _Passes.passes == 0
    assert len(sim.times(REAL_DOWN)) == 1000
    assert sim.effects[-1].pool == {("198.18.9.9", 80): 1}
    assert sim.effects[-1].failed == {r.key for r in s.reals}
    assert [e.kind for e in sim.effects].count(QUORUM_LOST) == 1
