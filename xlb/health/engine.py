"""The engine: every checker of every real as one coroutine on one asyncio loop (no thread per check). Each waits
for its next due time, runs one attempt bounded by its deadline, and hands the result to the state machine
(``state.Core``), which says when to run next and reports effects to ``on_effect``."""
import asyncio
import logging
import time

from . import checker as hchecker
from . import commands
from .state import Core, Result

_log = logging.getLogger("xlb.health")


class Engine:
    """``services``: spec.Service list. ``on_effect(Effect)`` is called on the loop's thread for every change
    (and once per service at start with the initial pool). ``script_user``: (user, group) notifies run as.
    ``via(check)``: a check_via_vip check as its checker sends it (with the so_mark the daemon routes)."""

    def __init__(self, services, on_effect=None, log=None, script_user=None, command_timeout=10.0,
                 bootstrap=None, rand=None, clock=time.monotonic, via=None):
        self.log = log or _log.info
        self.clock = clock
        self.runner = commands.Runner(self.log, script_user, command_timeout)
        kw = {} if bootstrap is None else {"bootstrap": bootstrap}
        self.core = Core(services, hchecker.label, log=self.log, on_effect=on_effect,
                         run_command=self.runner.fire, rand=rand, **kw)
        self.checkers = {id(c): hchecker.build(via(c.check) if via and c.check.via else c.check, c.real.spec.weight)
                         for c in self.core.checkers}
        self.tasks = []
        self.durations = {}    # kind -> [count, total seconds]: what a metrics collector will read

    async def start(self):
        """Set the initial states (effects fire now) and start every checker's coroutine."""
        loop = asyncio.get_running_loop()
        for due, c in self.core.start(self.clock()):
            self.tasks.append(loop.create_task(self._loop(c, due), name=f"health {c.label}"))

    async def run(self):
        """start() and run until cancelled; stop() then runs the omega notifiers."""
        await self.start()
        try:
            await asyncio.gather(*self.tasks)
        finally:
            await self.stop()

    async def stop(self, timeout=5.0):
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks = []
        self.core.stop()
        await self.runner.drain(timeout)

    def status(self):
        return self.core.status()

    async def _sleep_until(self, due):
        delay = due - self.clock()
        if delay > 0:
            await asyncio.sleep(delay)

    async def _loop(self, c, due):
        chk = self.checkers[id(c)]
        while True:
            await self._sleep_until(due)
            started = self.clock()
            result = await self.attempt(chk)
            now = self.clock()
            count = self.durations.setdefault(c.check.kind, [0, 0.0])
            count[0] += 1
            count[1] += now - started
            due = self.core.report(c, result, now, started)

    @staticmethod
    async def attempt(chk):
        """One bounded attempt; a checker's own exception is a failure, never the engine's."""
        try:
            async with asyncio.timeout(chk.deadline()):    # no extra task per attempt, unlike wait_for
                return await chk.check()
        except TimeoutError:
            return chk.timed_out()
        except Exception as e:  # noqa: BLE001 - whatever one checker raises is its failure, never the engine's
            return Result(False, f"{chk.spec.kind} to {chk.label} failed: {type(e).__name__}: {e}")
