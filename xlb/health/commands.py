"""Commands (MISC_CHECK's misc_path, notify_up/down, quorum_up/down) run as argv, never through a shell, as a
configured user, with a timeout, awaited on the event loop through a pidfd: no thread and no blocking wait, so a
hung script never holds up a check. A timed-out command's process group gets SIGTERM, then SIGKILL two seconds
later, as keepalived does."""
import asyncio
import os
import signal
import subprocess
from dataclasses import dataclass

TERM_GRACE = 2.0
MAX_PENDING = 64     # fire-and-forget notifies in flight; more are dropped with a log line


@dataclass(frozen=True)
class Outcome:
    status: int | None = None      # exit status
    signal: int | None = None      # killed by this signal (not by us)
    timed_out: bool = False
    error: str | None = None       # could not start it


def _identity(user):
    """(user, group) names -> Popen kwargs; None: the daemon's own identity."""
    if not user:
        return {}
    import grp
    import pwd
    name, group = user
    pw = pwd.getpwnam(name)
    gid = grp.getgrnam(group).gr_gid if group else pw.pw_gid
    return {"user": pw.pw_uid, "group": gid, "extra_groups": []}


async def _exited(proc):
    """Wait for ``proc`` on the loop: its pidfd becomes readable when it exits."""
    loop = asyncio.get_running_loop()
    fd = os.pidfd_open(proc.pid)
    try:
        done = loop.create_future()
        loop.add_reader(fd, lambda: done.done() or done.set_result(None))
        try:
            await done
        finally:
            loop.remove_reader(fd)
    finally:
        os.close(fd)
    return proc.wait()


def _kill(proc, sig):
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


async def run(argv, timeout, user=None):
    """Run ``argv`` to completion or ``timeout`` seconds; never raises for the command's own failures."""
    try:
        proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True,
                                **_identity(user))
    except (OSError, KeyError, subprocess.SubprocessError) as e:
        return Outcome(error=str(e) if not isinstance(e, KeyError) else f"no such user or group {e}")
    timed_out = False
    # asyncio.timeout, not wait_for: Python 3.11's wait_for returns the result of a command that exits in the
    # turn of the loop the task is cancelled in, and a halted engine's checker then never ends (a reload hangs)
    try:
        async with asyncio.timeout(timeout):
            code = await _exited(proc)
    except TimeoutError:
        timed_out = True
        _kill(proc, signal.SIGTERM)
        try:
            async with asyncio.timeout(TERM_GRACE):
                code = await _exited(proc)
        except TimeoutError:
            _kill(proc, signal.SIGKILL)
            code = await _exited(proc)
    except asyncio.CancelledError:
        _kill(proc, signal.SIGKILL)
        await asyncio.shield(_exited(proc))
        raise
    _kill(proc, signal.SIGKILL)   # whatever it left behind in its group
    if timed_out:
        return Outcome(timed_out=True)
    return Outcome(signal=-code) if code < 0 else Outcome(status=code)


class Runner:
    """Fire-and-forget commands (notifies) on the running loop, bounded, each with the same timeout."""

    def __init__(self, log, user=None, timeout=10.0):
        self.log = log
        self.user = user
        self.timeout = timeout
        self.pending = set()

    def fire(self, argv, what):
        if len(self.pending) >= MAX_PENDING:
            self.log(f"{what}: {len(self.pending)} commands still running, not starting {argv[0]}")
            return
        task = asyncio.get_running_loop().create_task(self._one(argv, what))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def _one(self, argv, what):
        out = await run(argv, self.timeout, self.user)
        if out.error:
            self.log(f"{what}: cannot run {argv[0]}: {out.error}")
        elif out.timed_out:
            self.log(f"{what}: {argv[0]} timed out after {self.timeout:g} s")
        elif out.status:
            self.log(f"{what}: {argv[0]} exited with status {out.status}")
        elif out.signal:
            self.log(f"{what}: {argv[0]} killed by signal {out.signal}")

    async def drain(self, timeout=None):
        """Let running commands finish for up to ``timeout`` seconds, then kill what is left."""
        if self.pending:
            await asyncio.wait(set(self.pending), timeout=timeout)
        left = set(self.pending)
        for task in left:
            task.cancel()
        await asyncio.gather(*left, return_exceptions=True)
