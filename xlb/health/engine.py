"""The engine: every checker of every real on one asyncio loop (no thread per check). Each checker waits for its
next due time, runs one attempt bounded by its deadline, and hands the result to the state machine
(``state.Core``), which says when to run next and reports effects to ``on_effect``.

Two ways to run a checker, the same semantics: a checker with ``begin`` (TCP_CHECK, HTTP_GET without TLS) runs
as callbacks, with no task, future or timer handle of its own: its due times and deadlines go to a timer
wheel (one loop timer per TICK that has any). Every other kind is one coroutine (``check()``) per checker.

A coroutine checker that ignores its cancel (stuck beyond asyncio's reach) cannot be ended from outside: a halted
engine leaves it in ``leftovers`` (shared by the engines that replace one another), and the next engine's same
checker (state.checker_key) never starts another attempt beside it: each of its attempts waits for it at most its
own deadline and, while it still runs, fails as a timeout (``_behind``). So reloads leave at most one stuck attempt
per checker, however many there are."""
import asyncio
import logging
import select
import time

from . import checker as hchecker
from . import commands
from .state import Core, Result, checker_key

_log = logging.getLogger("xlb.health")

TICK = 0.01     # the wheel's resolution: a check runs at most this late (keepalived's timers: 1 µs, its loop: later)


class Engine:
    """``services``: spec.Service list. ``on_effect(Effect)`` is called on the loop's thread for every change
    (and once per service at start with the initial pool). ``script_user``: (user, group) notifies run as.
    ``via(check)``: a check_via_vip check as its checker sends it (with the so_mark the daemon routes)."""

    def __init__(self, services, on_effect=None, log=None, script_user=None, command_timeout=10.0,
                 bootstrap=None, rand=None, clock=time.monotonic, via=None, leftovers=None):
        self.log = log or _log.info
        self.clock = clock
        self.runner = commands.Runner(self.log, script_user, command_timeout)
        kw = {} if bootstrap is None else {"bootstrap": bootstrap}
        self.core = Core(services, hchecker.label, log=self.log, on_effect=on_effect,
                         run_command=self.runner.fire, rand=rand, **kw)
        self.checkers = {id(c): hchecker.build(via(c.check) if via and c.check.via else c.check, c.real.spec.weight)
                         for c in self.core.checkers}
        self.tasks = {}        # task -> the CheckerState it runs
        # checker_key -> the task of a halted engine's attempt that ignored its cancel (and the engines after it)
        self.leftovers = {} if leftovers is None else leftovers
        self.driven = []       # the callback-driven checkers (_Driven)
        self.wheel = None
        self.poller = None
        self.halted = False
        self.stopped = None    # a future run() waits on
        self.durations = {}    # kind -> [count, total seconds]: what a metrics collector will read

    async def start(self, carry=None):
        """Set the initial states (effects fire now) and start every checker. ``carry``: the halted engine this
        one replaces on a reload, whose states go on (state.Core.start)."""
        loop = asyncio.get_running_loop()
        self.wheel = Wheel(loop)
        self.poller = Poller(loop, self.log, self._crashed)
        self.stopped = loop.create_future()
        self.halted = False
        for due, c in self.core.start(self.clock(), carry=carry.core if carry is not None else None):
            chk = self.checkers[id(c)]
            if getattr(chk, "begin", None) is not None:
                d = chk.driven = _Driven(self, loop, c, chk)
                self.driven.append(d)
                d.schedule(due)
            else:
                after = self._leftover(c)
                self.tasks[loop.create_task(self._loop(c, due, after), name=f"health {c.label}")] = c

    def _crashed(self, chk, e):
        """A callback of checker ``chk`` raised: its attempt ends now as a failure naming the exception (what the
        coroutine path's ``attempt`` reports), its sockets closed, not at its deadline as a timeout."""
        d = getattr(chk, "driven", None)
        if d is None or d.abort_attempt is None:
            self.log(f"xlb: health: a check's callback failed: {type(e).__name__}: {e}")
            return
        d.crash(e)

    async def run(self):
        """start() and run until cancelled; stop() then runs the omega notifiers."""
        await self.start()
        try:
            await asyncio.gather(self.stopped, *self.tasks)
        finally:
            await self.stop()

    async def halt(self, timeout=None):
        """Stop every checker: no result comes in any more (the states stay as they are). Returns False when a
        checker did not end within ``timeout`` seconds of being cancelled (a checker that ignores it): it is left
        to end on its own, and what it reports then changes this halted engine only."""
        self.halted = True      # a checker that ignored its cancel does not run again (_loop)
        for t in self.tasks:
            t.cancel()
        halted = True
        if self.tasks:
            _done, stuck = await asyncio.wait(self.tasks, timeout=timeout)
            halted = not stuck
            for t in stuck:
                self._leave(self.tasks[t], t)
        self.tasks = {}
        for d in self.driven:
            d.abort()
        self.driven = []
        if self.wheel is not None:
            self.wheel.close()
            self.poller.close()
        if self.stopped is not None and not self.stopped.done():
            self.stopped.cancel()
        return halted

    async def stop(self, timeout=5.0, successor=None):
        """halt(), then the shutdown notifiers (``successor``: the engine that goes on after a reload: what it
        still has is left alone, state.Core.stop) and the commands still running."""
        await self.halt(timeout)
        self.core.stop(successor.core if successor is not None else None)
        await self.runner.drain(timeout)

    def status(self):
        return self.core.status()

    def record(self, c, chk, result, started, now):
        """One attempt's result: counted, then fed to the state machine; returns when the checker runs next."""
        count = self.durations.get(c.check.kind)
        if count is None:
            count = self.durations[c.check.kind] = [0, 0.0]
        count[0] += 1
        count[1] += now - started
        return self.core.report(c, result, now, started)

    async def _sleep_until(self, due):
        delay = due - self.clock()
        if delay > 0:
            await asyncio.sleep(delay)

    def _leftover(self, c):
        """The stuck attempt of a halted engine's same checker, while it runs (None: none)."""
        if not self.leftovers:
            return None
        t = self.leftovers.get(checker_key(c))
        return None if t is None or t.done() else t

    def _leave(self, c, task):
        """``task`` ignored its cancel: the engines after this one wait for it; it leaves ``leftovers`` when it
        ends."""
        key, leftovers = checker_key(c), self.leftovers
        leftovers[key] = task
        task.add_done_callback(lambda t: leftovers.pop(key) if leftovers.get(key) is t else None)

    async def _loop(self, c, due, after=None):
        chk = self.checkers[id(c)]
        while not self.halted:
            await self._sleep_until(due)
            started = self.clock()
            result = None
            if after is not None and not after.done():
                result = await self._behind(chk, after)
            if result is None:
                result = await self.attempt(chk)
            if self.halted:     # it ignored the halt's cancel: its result is no longer wanted
                return
            due = self.record(c, chk, result, started, self.clock())

    @staticmethod
    async def _behind(chk, after):
        """A halted engine's attempt of this checker ignored its cancel and still runs: this attempt waits for it, at
        most its own deadline, never running a second one beside it. Still running then: the attempt failed as a
        timeout (a check that hangs is a failing one); ended: None, the attempt runs. A halt cancels the wait,
        never ``after``."""
        await asyncio.wait((after,), timeout=chk.deadline())
        return None if after.done() else chk.timed_out()

    @staticmethod
    async def attempt(chk):
        """One bounded attempt; a checker's own exception is a failure, never the engine's."""
        try:
            async with asyncio.timeout(chk.deadline()):    # no extra task per attempt, unlike wait_for
                return await chk.check()
        except TimeoutError:
            return chk.timed_out()
        except Exception as e:  # noqa: BLE001 - whatever one checker raises is its failure, never the engine's
            return crashed(chk, e)


def crashed(chk, e):
    return Result(False, f"{chk.spec.kind} to {chk.label} failed: {type(e).__name__}: {e}")


class Wheel:
    """Timers batched per TICK: ``at(when, fn, arg)`` runs fn(arg) at the first tick at or after ``when`` (loop
    time), with one loop timer per tick that has any, so 10,000 checkers do not keep 20,000 handles in the loop's
    heap."""

    def __init__(self, loop, tick=TICK):
        self.loop = loop
        self.tick = tick
        self.slots = {}        # tick number -> [(fn, arg)]
        self.handles = {}      # tick number -> the loop's TimerHandle

    def at(self, when, fn, arg):
        slot = -int(-when // self.tick)       # the tick at or after `when`
        todo = self.slots.get(slot)
        if todo is None:
            todo = self.slots[slot] = []
            self.handles[slot] = self.loop.call_at(slot * self.tick, self._fire, slot)
        todo.append(fn)       # flat, no (fn, arg) tuple: an entry lives up to a deadline (seconds), and every
        todo.append(arg)      # object the collector tracks that lives that long makes its full passes come sooner

    def _fire(self, slot):
        self.handles.pop(slot, None)
        todo = self.slots.pop(slot, ())
        for i in range(0, len(todo), 2):
            todo[i](todo[i + 1])

    def close(self):
        for h in self.handles.values():
            h.cancel()
        self.handles.clear()
        self.slots.clear()


class Poller:
    """Readiness of many short-lived sockets through one epoll of the engine's own, itself one reader of the
    loop: ``add_writer(fd, callback)`` / ``add_reader`` / ``remove_writer(fd)`` as the loop's, without its
    selector keys and handles per socket (a third of a TCP check's CPU in the engine). One-shot: a callback runs
    once; the socket stays in the epoll, disarmed, until it is closed, so a further wait on the same socket is
    ``rearm``. Closing the socket takes it out of the epoll."""

    def __init__(self, loop, log, crashed):
        self.loop, self.log, self.crashed = loop, log, crashed   # crashed(checker, exception): a callback raised
        self.epoll = select.epoll()
        self.callbacks = {}     # fd -> callback
        loop.add_reader(self.epoll.fileno(), self._ready)

    def add_writer(self, fd, callback):
        self._arm(self.epoll.register, fd, select.EPOLLOUT, callback)

    def add_reader(self, fd, callback):
        self._arm(self.epoll.register, fd, select.EPOLLIN, callback)

    def rearm(self, fd, readable, callback):
        """Wait again on a socket this poller waited on before (its callback ran)."""
        self._arm(self.epoll.modify, fd, select.EPOLLIN if readable else select.EPOLLOUT, callback)

    def _arm(self, how, fd, event, callback):
        how(fd, event | select.EPOLLONESHOT)
        self.callbacks[fd] = callback

    def remove_writer(self, fd):
        """No callback for ``fd`` any more (a reader's too)."""
        if self.callbacks.pop(fd, None) is not None:     # not yet run: still armed
            try:
                self.epoll.unregister(fd)
            except OSError:
                pass

    def _ready(self):
        for fd, _ in self.epoll.poll(0):
            callback = self.callbacks.pop(fd, None)
            if callback is None:
                continue
            try:
                callback()
            except Exception as e:  # noqa: BLE001 - one checker's bug must not lose the others' events
                self.crashed(getattr(callback, "__self__", None), e)   # callbacks are the checker's bound methods

    def close(self):
        if self.epoll.closed:       # closed already (Engine.halt, then stop)
            return
        self.loop.remove_reader(self.epoll.fileno())
        self.epoll.close()
        self.callbacks.clear()


class _Driven:
    """One callback-driven checker: ``chk.begin(loop, done)`` starts an attempt and returns how to abort it (None
    when it already called ``done``); ``done(result)`` ends it. A generation number voids the wheel's entries
    of an attempt that ended (its deadline) or of a stopped checker."""

    __slots__ = ("engine", "loop", "c", "chk", "gen", "abort_attempt", "started", "fire", "expire", "done")

    def __init__(self, engine, loop, c, chk):
        self.engine, self.loop, self.c, self.chk = engine, loop, c, chk
        self.gen = 0
        self.abort_attempt = None
        self.started = None
        # bound once: a bound method made per attempt is one more object for the collector to track
        self.fire, self.expire, self.done = self._fire, self._deadline, self._done

    def schedule(self, due):
        """Run the next attempt at ``due`` (the engine's clock)."""
        wheel = self.engine.wheel
        wheel.at(self.loop.time() + (due - self.engine.clock()), self.fire, self.gen)

    def _fire(self, gen):
        if gen != self.gen:
            return
        self.started = self.engine.clock()
        self.gen += 1
        gen = self.gen
        self.engine.wheel.at(self.loop.time() + self.chk.deadline(), self.expire, gen)
        try:
            abort = self.chk.begin(self.engine.poller, self.done)
        except Exception as e:  # noqa: BLE001 - whatever one checker raises is its failure, never the engine's
            abort = None
            if gen == self.gen:
                self._done(crashed(self.chk, e))
        if gen == self.gen:        # still in progress
            self.abort_attempt = abort

    def _deadline(self, gen):
        if gen == self.gen:
            self._stop_attempt()
            self._done(self.chk.timed_out())

    def crash(self, e):
        """The attempt in progress raised in one of its callbacks: abort it, and it failed."""
        self._stop_attempt()
        self._done(crashed(self.chk, e))

    def _stop_attempt(self):
        abort, self.abort_attempt = self.abort_attempt, None
        if abort is not None:
            try:
                abort()
            except Exception as e:  # noqa: BLE001
                self.engine.log(f"{self.chk.spec.kind} to {self.chk.label}: aborting failed: {e}")

    def _done(self, result):
        self.gen += 1
        self.abort_attempt = None
        due = self.engine.record(self.c, self.chk, result, self.started, self.engine.clock())
        self.schedule(due)

    def abort(self):
        """The engine stops: abort an attempt in progress, void every entry in the wheel."""
        self.gen += 1
        self._stop_attempt()
