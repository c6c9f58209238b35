"""Shared by the health tests: a one-real service on the loopback of a throwaway namespace, an engine whose
results and effects land on one timeline, and waits that end on an event (never on a duration); the state
machine on a fake clock (Sim); a DR lab's health-checked service (config, health_servers, pool)."""
import asyncio
import heapq

from xlb.health import spec as hspec
from xlb.health.checker import label
from xlb.health.engine import Engine
from xlb.health.state import Core, Result
from xlb.lab.demo import REALS4, VIP4
from xlb.lab.servers import tcp_echo_name_server
from xlb.ops import control

HEALTH_PORT = 9000

REAL = "127.0.0.1"


def one_real(check, port, address=REAL, real=None, **svc):
    """A service with one real (address:port) carrying ``check``; service keys as keyword arguments."""
    tbl = dict(real or {}, check=check)
    return hspec.parse_service("[198.51.100.10]:tcp:80", "tcp", dict({"warmup": 0}, **svc),
                               [(address, port, 1, tbl, "service[0].real[0]")], "service[0]")


async def lost_cancel(task, turns):
    """Cancel ``task`` ``turns`` turns of the loop from now and wait for it: what it returned although the cancel
    was asked while it still ran (a lost cancel), else None (the cancel ended it, or it had ended before)."""
    loop, asked = asyncio.get_running_loop(), []

    def later(n):
        if n:
            loop.call_soon(later, n - 1)
        else:
            asked.append(task.cancel())                              # False: the task had ended already
    later(turns)
    try:
        got = await task
    except asyncio.CancelledError:
        return None
    return got if asked == [True] else None


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


def service(reals, **svc):
    """reals: [(address, weight, {real keys incl. check})]."""
    rows = [(a, 80, w, t, f"service[0].real[{i}]") for i, (a, w, t) in enumerate(reals)]
    return hspec.parse_service("[198.51.100.10]:tcp:80", "tcp", dict(svc), rows, "service[0]")


class Sim:
    """Drives Core like the engine does, with scripted results: up(address, t) says whether that real's server
    answers at time t. Checks take no time."""

    def __init__(self, services, up, rand=0.0, misc_status=None, carry=None, now=0.0):
        self.lines, self.effects, self.commands = [], [], []
        self.up = up
        self.misc_status = misc_status
        self.core = Core(services, label, log=self.lines.append, on_effect=self.effects.append,
                         run_command=lambda argv, what: self.commands.append((self.now, argv[0])),
                         rand=lambda: rand, bootstrap=0.0)
        self.now = now
        self.heap = []
        self.runs = []   # (time, address, ok)
        for i, (due, c) in enumerate(self.core.start(now, carry=carry)):
            heapq.heappush(self.heap, (due, i, c))

    def run(self, until):
        while self.heap and self.heap[0][0] <= until:
            due, i, c = heapq.heappop(self.heap)
            self.now = due
            addr = c.real.key[0]
            if self.misc_status:
                status = self.misc_status(addr, due)
                res = Result(status == 0 or 2 <= status <= 255, weight=status - 2 if status >= 2 else None)
            else:
                res = Result(self.up(addr, due), f"probe {addr}")
            self.runs.append((round(due, 6), addr, res.ok))
            heapq.heappush(self.heap, (self.core.report(c, res, due, due), i, c))
        self.now = until

    def times(self, kind, address=None):
        return [e for e in self.effects if e.kind == kind and (address is None or e.real[0] == address)]

    def effect_times(self):
        return [(round(t, 6), a, ok) for t, a, ok in self.runs]


def tcp(**kw):
    return {"check": dict({"kind": "TCP_CHECK"}, **kw)}


def config(extra=""):
    reals = "".join(f'\n  [[service.real]]\n  address = "{r}"\n' for r in REALS4)
    return f"""
[tables]
sweep_interval = 0.2

[[service]]
vip = "{VIP4}"
port = 80
proto = "tcp"
scheduler = "rr"
persistence_timeout = 300
delay_loop = 0.3
{extra}
  [service.check]
  kind = "TCP_CHECK"
  connect_port = {HEALTH_PORT}
  connect_timeout = 0.5
  retry = 1
  delay_before_retry = 0.2
  warmup = 0
{reals}"""


def health_servers(lab):
    return [lab.topo.spawn(ns, tcp_echo_name_server, f"h{i + 1}", [("0.0.0.0", HEALTH_PORT)])
            for i, ns in enumerate(lab.rs)]


def pool(lab):
    """{real address: weight} of the service as the maps hold it (what `xlb ipvsadm -L -n` shows)."""
    (svc,) = control.call("list", path=lab.socket_path)["services"]
    return {r["address"]: r["weight"] for r in svc["reals"]}
