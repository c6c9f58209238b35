"""A reload keeps the health state of what both configs have, as keepalived's does (clear_diff_services,
migrate_checkers): a failed real stays failed, retries in progress go on, quorum and sorry server stay; a real new
to the config starts as at start. First the state machine on a fake clock (no root), then a real `xlb run` in a
DR lab: a failing real stays out of the maps through reloads, changed or not, and no client lands on it."""
import signal
import time
from pathlib import Path

from conftest import needs_root

from xlb.config import read as xread
from xlb.health.state import INIT, REAL_UP, Result
from xlb.lab.demo import CLIENTS4, REALS4, VIP4
from xlb.lab.servers import tcp_echo_name_server
from xlb.ops import control
from xlb.ops.health import Checks
from harness import DrLab, log_has, wait_for
from health_harness import HEALTH_PORT, Sim, config, health_servers, pool, service, tcp

A, B, C = "198.18.1.2", "198.18.1.3", "198.18.1.4"


def reload(sim, services, up):
    """What the daemon does on a reload: a new core from the old one's states, then the old one stopped."""
    new = Sim(services, up, carry=sim.core, now=sim.now)
    sim.core.stop(new.core)
    return new


def checker(sim, address):
    (c,) = [c for c in sim.core.checkers if c.real.key[0] == address]
    return c


def test_a_failed_real_stays_failed_through_a_reload_that_changes_its_service():
    ups = {A: True, B: False, C: False}
    svc = service([(A, 1, tcp(retry=1)), (B, 1, tcp(retry=1))], delay_loop=1.0, warmup=0)
    sim = Sim([svc], lambda a, t: ups[a])
    sim.run(3.0)
    assert sim.effects[-1].pool == {(A, 80): 1}
    # A's weight changes, C is new (and failing): B stays out, C starts as at start (in, one failure is enough)
    svc2 = service([(A, 5, tcp(retry=1)), (B, 1, tcp(retry=1)), (C, 1, tcp(retry=1))], delay_loop=1.0, warmup=0)
    new = reload(sim, [svc2], lambda a, t: ups[a])
    (init,) = new.effects
    assert init.kind == INIT and init.pool == {(A, 80): 5, (C, 80): 1} and init.failed == {(B, 80)}
    b, c = checker(new, B), checker(new, C)
    assert (b.has_run, b.is_up, b.last[1].ok) == (True, False, False) and (c.has_run, c.retry_it) == (False, 1)
    assert not [line for line in sim.lines if "Shutting down" in line] and not sim.commands
    new.run(3.5)
    assert [e.kind for e in new.effects[1:]] == ["real_down"] and new.effects[-1].pool == {(A, 80): 5}
    ups[B] = True
    new.run(4.5)
    assert [e.real for e in new.times(REAL_UP)] == [(B, 80)]          # one pass brings it back, as before


def test_retries_in_progress_go_on_capped_below_the_new_retry():
    svc = service([(A, 1, tcp(retry=3, delay_before_retry=1.0))], delay_loop=1.0, warmup=0)
    sim = Sim([svc], lambda a, t: t < 0.5)
    sim.run(2.0)                                      # ok at 0, failures at 1 and 2: two retries so far
    assert checker(sim, A).retry_it == 2 and not sim.times("real_down")
    svc2 = service([(A, 2, tcp(retry=2, delay_before_retry=1.0))], delay_loop=1.0, warmup=0)
    new = reload(sim, [svc2], lambda a, t: t < 0.5)
    assert checker(new, A).retry_it == 1 and new.effects[0].pool == {(A, 80): 2}
    new.run(2.0)                                      # checked again at once (the reload): a retry
    assert not new.times("real_down")
    new.run(3.0)                                      # keepalived: retry - 1 kept, so two more failures
    assert len(new.times("real_down")) == 1


def test_alpha_keeps_an_alive_real_up_and_starts_a_new_one_down():
    svc = service([(A, 1, tcp())], delay_loop=1.0, warmup=0, alpha=True)
    sim = Sim([svc], lambda a, t: True)
    sim.run(0.0)
    assert sim.effects[-1].pool == {(A, 80): 1}
    svc2 = service([(A, 1, tcp()), (B, 1, tcp())], delay_loop=1.0, warmup=0, alpha=True)
    new = reload(sim, [svc2], lambda a, t: True)
    assert new.effects[0].pool == {(A, 80): 1}
    new.run(0.0)
    assert new.effects[-1].pool == {(A, 80): 1, (B, 80): 1}


def test_a_real_whose_failing_checker_left_the_config_comes_up():
    def failing_8080():
        two = {"check": [{"kind": "TCP_CHECK"}, {"kind": "TCP_CHECK", "connect_port": 8080}], "notify_up": "/bin/nu"}
        sim = Sim([service([(A, 1, two)], delay_loop=1.0, warmup=0, retry=0)], lambda a, t: True)
        sim.run(0.0)
        sim.core.report(sim.core.checkers[1], Result(False, "8080 refused"), 0.5)
        assert sim.effects[-1].pool == {}
        return sim
    one = {"check": [{"kind": "TCP_CHECK", "connect_port": 8080, "delay_loop": 2.0}], "notify_up": "/bin/nu"}
    new = reload(failing_8080(), [service([(A, 1, one)], delay_loop=1.0, warmup=0, retry=0)], lambda a, t: True)
    assert new.effects[0].pool == {}                  # the same 8080 check (another delay_loop): still failed
    back = dict(tcp(), notify_up="/bin/nu")
    new = reload(failing_8080(), [service([(A, 1, back)], delay_loop=1.0, warmup=0, retry=0)], lambda a, t: True)
    assert new.effects[0].pool == {(A, 80): 1}
    assert "Adding service [198.18.1.2]:tcp:80 to VS [198.51.100.10]:tcp:80" in new.lines
    assert [c for _, c in new.commands] == ["/bin/nu"]


def test_quorum_and_sorry_server_carry_over_and_a_removed_real_is_notified_down():
    reals = [(a, 1, dict(tcp(retry=0), notify_down="/bin/nd")) for a in (A, B, C)]
    svc = service(reals, delay_loop=1.0, warmup=0, quorum=2, sorry_server="198.18.9.9", quorum_down="/bin/qd")
    sim = Sim([svc], lambda a, t: a == A)
    sim.run(0.0)
    assert sim.effects[-1].pool == {("198.18.9.9", 80): 1}
    assert [c for _, c in sim.commands] == ["/bin/nd", "/bin/nd", "/bin/qd"]
    svc2 = service(reals[1:], delay_loop=1.0, warmup=0, quorum=2, sorry_server="198.18.9.9", quorum_down="/bin/qd")
    new = reload(sim, [svc2], lambda a, t: a == A)
    assert new.effects[0].pool == {("198.18.9.9", 80): 1} and new.core.services[0].sorry_alive
    assert [c for _, c in sim.commands][3:] == ["/bin/nd"]     # A (alive) left the config: its notify_down
    assert not new.commands and not new.core.services[0].quorum_up   # no quorum notifier again


def checks_cfg(flags, weight=1, extra=()):
    """A service whose reals pass their MISC_CHECK while the file flags/address exists."""
    reals = ", ".join(f'{{address = "{a}", weight = {weight if a == A else 1}, check = {{kind = "MISC_CHECK", '
                      f'misc_path = ["/usr/bin/test", "-e", "{flags}/{a}"]}}}}' for a in (A, B, *extra))
    return xread.parse(f'[[service]]\nvip = "198.51.100.10"\nport = 80\nproto = "tcp"\ndelay_loop = 0.2\n'
                       f'retry = 0\nwarmup = 0\nreal = [{reals}]\n')


def test_the_maps_keep_a_failed_real_failed_while_the_reload_replaces_its_engine(tmp_path):
    """The daemon writes health.effective(new config) before the engines change, then after: neither may bring
    back a real the checks failed, nor put in a real no check has seen (Checks.effective)."""
    (tmp_path / A).touch()
    checks = Checks(lambda: None, lambda line: None)
    try:
        first = checks_cfg(tmp_path)
        (key,) = [s.key for s in first.services]
        checks.update(first)
        deadline = time.monotonic() + 10
        while checks.pools.get(key, ({}, ()))[1] != {(B, 80)} and time.monotonic() < deadline:
            time.sleep(0.05)
        assert checks.pools[key][1] == {(B, 80)}  # failed reals by (address, port)
        second = checks_cfg(tmp_path, weight=2, extra=(C,))
        (tmp_path / C).touch()

        def reals():
            (svc,) = checks.effective(second).services
            return {str(r.address): (r.weight, r.failed) for r in svc.reals}
        assert reals() == {A: (1, ""), B: (0, "removed")}        # before the engine is replaced
        checks.update(second)
        assert reals() == {A: (2, ""), B: (0, "removed"), C: (1, "")}
    finally:
        checks.close()


def weighted(rs1_weight):
    """test_health_daemon's config with the first real at another weight."""
    first = f'address = "{REALS4[0]}"\n'
    return config().replace(first, f"{first}  weight = {rs1_weight}\n")


@needs_root
def test_a_failing_real_stays_out_of_the_maps_through_reloads(log_path):
    with DrLab(prefix="xhr") as lab:
        servers = health_servers(lab)
        lab.start_xlb(weighted(1), log_path=log_path)
        servers[1].stop()
        wait_for(lambda: REALS4[1] not in pool(lab), what="the failing real out of the maps")

        def reloaded(text, n):
            lab.rewrite_config(text)
            lab.signal_xlb(signal.SIGHUP)
            wait_for(lambda: Path(log_path).read_text().count("xlb: reloaded") == n, what=f"reload {n}")
            return pool(lab)
        # a reload that changes the service (another real's weight): its engine is replaced, the state goes on
        assert reloaded(weighted(2), 1) == {REALS4[0]: 2, REALS4[2]: 1}
        assert {lab.ask(c, VIP4, 80) for c in CLIENTS4} <= {"rs1", "rs3"}
        (svc,) = control.call("health", path=lab.socket_path)
        down = next(r for r in svc["reals"] if r["address"] == REALS4[1])
        assert not down["alive"] and down["checkers"][0]["has_run"] and not down["checkers"][0]["up"]
        # a reload with no change to the service: its engine goes on
        assert reloaded(weighted(2), 2) == {REALS4[0]: 2, REALS4[2]: 1}
        assert {lab.ask(c, VIP4, 80) for c in CLIENTS4} <= {"rs1", "rs3"}
        assert not log_has(log_path, f"Adding service [{REALS4[1]}]")
        # and it comes back when its check passes
        lab.topo.spawn(lab.rs[1], tcp_echo_name_server, "h2", [("0.0.0.0", HEALTH_PORT)])
        wait_for(lambda: REALS4[1] in pool(lab), what="the real back in the maps")
        assert lab.daemon.is_alive()


def test_a_service_given_health_keys_writes_an_alpha_real_down_before_its_engine_starts(tmp_path):
    """keepalived: a real without alpha starts up, one with alpha starts down. The daemon writes
    health.effective(config) before it starts the engine a reload asks for: a service that had no health keys (or a
    new one) must not show its alpha reals up there, not even until the engine's first report."""
    plain = xread.parse('[[service]]\nvip = "198.51.100.10"\nport = 80\nproto = "tcp"\n'
                        f'real = [{{address = "{A}"}}, {{address = "{B}"}}, {{address = "{C}"}}]\n')
    misc = f'check = {{kind = "MISC_CHECK", misc_path = ["/usr/bin/test", "-e", "{tmp_path}/x"]}}'
    checked = xread.parse(f'[[service]]\nvip = "198.51.100.10"\nport = 80\nproto = "tcp"\ndelay_loop = 60\n'
                          f'warmup = 0\nreal = [{{address = "{A}", {misc}}}, {{address = "{B}", alpha = true, {misc}}}, '
                          f'{{address = "{C}", alpha = true, inhibit_on_failure = true, {misc}}}]\n')
    checks = Checks(lambda: None, lambda line: None)

    def reals(cfg):
        (svc,) = checks.effective(cfg).services
        return {str(r.address): (r.weight, r.failed) for r in svc.reals}
    try:
        checks.update(plain)
        assert reals(plain) == {A: (1, ""), B: (1, ""), C: (1, "")}
        want = {A: (1, ""), B: (0, "removed"), C: (0, "inhibited")}
        assert reals(checked) == want              # before the engine starts: what it will start with
        checks.update(checked)
        assert reals(checked) == want              # its first report (no check has run: delay_loop 60)
    finally:
        checks.close()


def test_a_check_that_ignores_the_halt_does_not_hold_a_reload(tmp_path, monkeypatch):
    """A reload halts the old engine's checks under the daemon's lock. One that ignores its cancel (a checker
    stuck beyond asyncio's reach) must not hold the reload: after halt_timeout the new engine takes over, as a
    keepalived reload always does, with a log line that says so, and the daemon goes on answering."""
    import asyncio
    import threading
    from xlb.health import file as hfile
    entered, release = threading.Event(), threading.Event()

    async def stubborn(self):
        entered.set()
        while not release.is_set():
            try:
                await asyncio.sleep(0.02)
            except asyncio.CancelledError:
                pass            # ignores the halt
        return Result(True, "released")
    monkeypatch.setattr(hfile.FileChecker, "check", stubborn)
    lines = []
    checks = Checks(lambda: None, lines.append)
    checks.halt_timeout = 0.2

    def cfg(delay):
        return xread.parse(f'[[service]]\nvip = "198.51.100.10"\nport = 80\nproto = "tcp"\ndelay_loop = {delay}\n'
                           f'warmup = 0\nconnect_timeout = 3600\nreal = [{{address = "{A}", check = '
                           f'{{kind = "FILE_CHECK", track_file = "{tmp_path}/w"}}}}]\n')
    try:
        checks.update(cfg(1))
        (key,) = checks.engines
        old = checks.engines[key][1]
        assert entered.wait(10)
        checks.update(cfg(2))                      # before: blocked 30 s, then raised TimeoutError
        assert checks.engines[key][1] is not old
        assert any("did not stop within 0.2 s of the reload: replaced anyway" in ln for ln in lines), lines
        assert checks.status()[0]["reals"][0]["alive"]   # the new engine answers, the real as it was
    finally:
        release.set()
        checks.close()


def test_reloads_with_a_check_that_never_returns_leave_one_stuck_attempt_per_checker(tmp_path, monkeypatch):
    """A checker stuck beyond asyncio's reach cannot be ended; a reload every second must still not pile up one
    more stuck attempt (a task holding its whole engine) per checker each time: the next engine's same checker
    waits for the stuck one instead of starting another beside it, and runs once it ends."""
    import asyncio
    from xlb.health import file as hfile
    entered, release = [], asyncio.Event()

    async def stubborn(self):
        entered.append(self.label)
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                pass            # ignores the halt, every time
        return Result(True, "released")
    monkeypatch.setattr(hfile.FileChecker, "check", stubborn)
    lines = []
    checks = Checks(lambda: None, lines.append)
    checks.halt_timeout = 0.05
    reals = [A, B]

    def spec(delay):
        cfg = xread.parse(f'[[service]]\nvip = "198.51.100.10"\nport = 80\nproto = "tcp"\ndelay_loop = {delay}\n'
                          'warmup = 0\nconnect_timeout = 3600\nreal = [' + ", ".join(
                              f'{{address = "{a}", check = {{kind = "FILE_CHECK", track_file = "{tmp_path}/w"}}}}'
                              for a in reals) + ']\n')
        (s,) = cfg.services
        checks.names[s.key] = s.name
        return s.key, s.health

    async def reloads(n):
        old = None
        for i in range(n):
            key, health = spec(1 + i % 2)       # a changed spec: the engine is replaced
            new = checks._engine(key, health)
            new.core.bootstrap = 0.0              # due at once: each engine's checkers start before the next reload
            if old is None:
                await new.start()
            else:
                await checks._replace(key, old, new)
            for _ in range(3):
                await asyncio.sleep(0)
            old = new
        tasks = len(asyncio.all_tasks()) - 1
        ran = len(entered)
        release.set()
        for _ in range(200):
            if len(entered) > ran:
                break
            await asyncio.sleep(0.01)
        await old.stop(timeout=1.0)
        return tasks, ran

    tasks, ran = asyncio.run(reloads(20))
    # before: every engine's checkers got stuck in turn, 20 x 2 tasks; now the first two and their two waiters
    assert tasks <= 2 * len(reals), tasks
    assert ran == len(reals)                  # never two attempts of one checker at once
    assert len(entered) > ran                 # the stuck ones ended: the engine in force runs its checks again


def test_a_checker_behind_a_stuck_attempt_fails_its_attempts_until_it_ends(tmp_path, monkeypatch):
    """The next engine's checker waits for a stuck attempt at most its own deadline per attempt: meanwhile each of
    its attempts fails as a timeout (a check that hangs is a failing check, and the real goes down as its retries
    say) rather than the checker falling silent with the real's last state; once the stuck one ends, checks run."""
    import asyncio
    from xlb.health import engine as hengine
    from xlb.health import file as hfile
    release, results = asyncio.Event(), []

    async def stubborn(self):
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                pass
        return Result(True, "released")
    monkeypatch.setattr(hfile.FileChecker, "check", stubborn)
    record = hengine.Engine.record
    monkeypatch.setattr(hengine.Engine, "record",
                        lambda self, c, chk, result, *a: results.append((self, result.ok)) or record(self, c, chk,
                                                                                                     result, *a))
    checks = Checks(lambda: None, lambda line: None)
    checks.halt_timeout = 0.05

    def spec(delay):
        cfg = xread.parse(f'[[service]]\nvip = "198.51.100.10"\nport = 80\nproto = "tcp"\ndelay_loop = {delay}\n'
                          'warmup = 0\nconnect_timeout = 0.2\n'
                          f'real = [{{address = "{A}", check = {{kind = "FILE_CHECK", track_file = "{tmp_path}/w"}}}}]\n')
        (s,) = cfg.services
        checks.names[s.key] = s.name
        return s.key, s.health

    async def run():
        key, health = spec(1)
        first = checks._engine(key, health)
        first.core.bootstrap = 0.0
        await first.start()
        await asyncio.sleep(0.3)                # its attempt is stuck (its own timeout cannot end it either)
        key, health = spec(2)
        second = checks._engine(key, health)
        second.core.bootstrap = 0.0
        await checks._replace(key, first, second)
        await asyncio.sleep(0.5)
        behind = [ok for engine, ok in results if engine is second]
        release.set()
        for _ in range(300):
            if any(ok for engine, ok in results if engine is second):
                break
            await asyncio.sleep(0.01)
        await second.stop(timeout=1.0)
        return behind

    behind = asyncio.run(run())
    assert behind and not any(behind), behind           # failed as timeouts while the stuck attempt ran
    assert any(ok for _, ok in results[len(behind):])    # and checks again once it ended
