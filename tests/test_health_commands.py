"""Commands (misc_path, notify_*, quorum_*): argv without a shell, a timeout that kills the whole process
group, the configured user, and never blocking the checks that run meanwhile."""
import asyncio
import os
import pwd
import shutil
import tempfile
import time

from conftest import needs_root
from health_harness import REAL, Watched, lost_cancel, one_real
from xlb.health import commands
from xlb.health.state import REAL_DOWN, REAL_UP


def test_argv_is_not_given_to_a_shell(tmp_path):
    out = tmp_path / "out"
    res = asyncio.run(commands.run(["/bin/sh", "-c", 'printf %s "$1" > "$2"', "sh", "$(id); `id`", out], 5))
    assert res == commands.Outcome(status=0)
    assert out.read_text() == "$(id); `id`"


def test_exit_status_signal_and_missing_program():
    assert asyncio.run(commands.run(["/bin/sh", "-c", "exit 7"], 5)) == commands.Outcome(status=7)
    assert asyncio.run(commands.run(["/bin/sh", "-c", "kill -9 $$"], 5)) == commands.Outcome(signal=9)
    assert "No such file" in asyncio.run(commands.run(["/nonexistent/prog"], 5)).error


def test_a_timeout_kills_the_command_and_everything_it_started(tmp_path):
    pidfile = tmp_path / "pid"
    # the child ignores SIGTERM, its own child sleeps: both must be gone after the timeout and the SIGKILL
    argv = ["/bin/sh", "-c", f'trap "" TERM; sleep 60 & echo $! > {pidfile}; wait']
    res = asyncio.run(commands.run(argv, 0.2))
    assert res == commands.Outcome(timed_out=True)
    # SIGKILL is delivered, not awaited, for the group's orphans: look until the kernel has reaped the sleep (a
    # bound for a loaded machine, not a speed claim; without the kill it would live the full 60 s).
    pid = int(pidfile.read_text())
    deadline = time.monotonic() + 10
    while not gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone(pid)


def gone(pid):
    """Dead: no such process, or a zombie waiting for whoever inherited it to reap it."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@needs_root
def test_runs_as_the_configured_user():
    nobody = pwd.getpwnam("nobody")
    where = tempfile.mkdtemp(prefix="xlb-health-")
    os.chmod(where, 0o777)
    out = f"{where}/id"
    res = asyncio.run(commands.run(["/bin/sh", "-c", f"id -u > {out}; id -G >> {out}"], 5, ("nobody", None)))
    assert res.status == 0, res
    with open(out) as f:
        uid, groups = f.read().split("\n")[:2]
    shutil.rmtree(where)
    assert int(uid) == nobody.pw_uid and groups.split() == [str(nobody.pw_gid)]   # no supplementary root groups
    assert "no such user" in asyncio.run(commands.run(["/bin/true"], 5, ("no-such-user-xlb", None))).error


def test_notifies_run_once_per_change_without_holding_up_the_checks(tmp_path):
    """notify_down hangs far past a delay_loop: the TCP check keeps running and brings the real back meanwhile."""
    log = tmp_path / "log"

    async def scenario():
        server = await asyncio.start_server(lambda r, w: w.close(), REAL, 0)
        port = server.sockets[0].getsockname()[1]
        real = {"notify_down": ["/bin/sh", "-c", f"echo down >> {log}; exec sleep 30"],
                "notify_up": ["/bin/sh", "-c", f"echo up >> {log}"]}
        svc = one_real({"kind": "TCP_CHECK", "retry": 0}, port, real=real, delay_loop=0.05)
        async with Watched([svc], command_timeout=30) as w:
            await w.passing()
            server.close()
            await server.wait_closed()
            await w.effect(REAL_DOWN)
            server = await asyncio.start_server(lambda r, w: w.close(), REAL, port)
            await w.effect(REAL_UP)
            await w.until(lambda: log.exists() and log.read_text() == "down\nup\n", "both notifies ran")
            await w.until(lambda: len(w.engine.runner.pending) == 1, "notify_up done, notify_down still asleep")
        server.close()
        await server.wait_closed()
    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_checker_that_raises_fails_its_check_and_the_engine_goes_on():
    class Broken:
        spec, label = None, "[127.0.0.1]:tcp:9"

        def deadline(self):
            return 1.0

        async def check(self):
            raise EOFError("a bug in a checker")

    async def scenario():
        svc = one_real({"kind": "TCP_CHECK", "retry": 0}, 9, delay_loop=0.05)
        w = Watched([svc])
        (key,) = w.engine.checkers
        Broken.spec = w.engine.checkers[key].spec
        w.engine.checkers[key] = Broken()
        async with w:
            await w.effect(REAL_DOWN)
            await w.results(3)                      # still checking
        assert "TCP_CHECK to [127.0.0.1]:tcp:9 failed: EOFError: a bug in a checker" in w.lines
    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_a_cancel_that_comes_as_the_command_exits_is_not_lost():
    """Engine.halt (a reload) cancels a MISC_CHECK in its command: had the cancel been lost (asyncio.wait_for of
    Python 3.11 returns the result of a command that exits in the same turn of the loop), the checker would go on
    and the reload wait forever. The cancel comes k turns of the loop after the command exited, for every k
    around the command's own wake-up; a cancel asked while the task still ran must end it."""
    async def one(k):
        task = asyncio.create_task(commands.run(["/bin/true"], 5))
        await asyncio.sleep(0)                                       # the command runs, the task waits for it
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT)              # until it exited (left for run() to reap)
        return await lost_cancel(task, k)

    lost = {k: got for k in range(8) if (got := asyncio.run(one(k))) is not None}
    assert not lost
