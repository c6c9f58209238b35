"""Shared by the health tests: a one-real service on the loopback of a throwaway namespace, an engine whose
results and effects land on one timeline, and waits that end on an event (never on a duration)."""
import asyncio

from xlb.health import spec as hspec
from xlb.health.engine import Engine

REAL = "127.0.0.1"


def one_real(check, port, address=REAL, real=None, **svc):
    """A service with one real (address:port) carrying ``check``; service keys as keyword arguments."""
    tbl = dict(real or {}, check=check)
    return hspec.parse_service("[198.51.100.10]:tcp:80", "tcp", dict({"warmup": 0}, **svc),
                               [(address, port, 1, tbl, "service[0].real[0]")], "service[0]")


class Watched:
    """An Engine over ``services`` recording ("result", ok) and ("effect", kind) in order, and its log lines."""

    def __init__(self, services, **kw):
        self.timeline, self.lines, self.effects = [], [], []
        self.engine = Engine(services, on_effect=self._effect, log=self.lines.append, bootstrap=0.0,
                             rand=lambda: 0.0, **kw)
        report = self.engine.core.report

        def recorded(c, result, now, started=None):
            self.timeline.append(("result", result.ok))
            return report(c, result, now, started)
        self.engine.core.report = recorded

    def _effect(self, e):
        self.effects.append(e)
        self.timeline.append(("effect", e.kind))

    async def __aenter__(self):
        await self.engine.start()
        return self

    async def __aexit__(self, *exc):
        await self.engine.stop(timeout=0.5)

    async def until(self, predicate, what, timeout=20.0):
        """Wait for predicate() to hold (the timeout only stops a broken test from hanging)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while not predicate():
            if loop.time() > end:
                raise AssertionError(f"never happened: {what}; log: {self.lines}")
            await asyncio.sleep(0.01)

    async def effect(self, kind, n=1):
        await self.until(lambda: sum(e.kind == kind for e in self.effects) >= n, f"{n} x {kind}")
        return [e for e in self.effects if e.kind == kind][n - 1]

    async def results(self, n):
        await self.until(lambda: sum(t == "result" for t, _ in self.timeline) >= n, f"{n} results")

    async def passing(self, n=1):
        """Wait for ``n`` results; the first must be a pass (the server is up when a test starts)."""
        await self.results(n)
        assert next(v for t, v in self.timeline if t == "result"), self.lines

    def failures_before(self, kind):
        """How many failed results came in a row right before the first effect ``kind``."""
        idx = self.timeline.index(("effect", kind))
        count = 0
        for t, v in reversed(self.timeline[:idx]):
            if t == "result":
                if v:
                    break
                count += 1
        return count
