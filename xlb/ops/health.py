"""Health checks in the daemon: xlb/health's engines on one asyncio loop in one background thread, their effects
applied to the data plane the way a runtime edit is (DataPlane.apply, under the daemon's lock).

The daemon keeps two configs: the one it was given (file, reload, runtime edits: what ``xlb save`` writes) and
the one in the maps, :func:`effective`: each health-checked service holds the pool its engine last reported, as
IPVS would under keepalived. A real whose checks fail is absent from listings (IPVS DEL_DEST), or at weight 0
with ``inhibit_on_failure``; either way it stays in the maps marked failed (XLB_REAL_F_DOWN): it takes no new
connection, its persistence templates are void at once, and its established connections do what the service's
``on_real_failure`` says (keep, reschedule, reset). While the quorum is lost the sorry server replaces the reals.
One engine per service: a reload or runtime edit replaces only the engines of services whose health spec changed,
and the new engine carries on the state of the reals both configs have (keepalived's checker migration); the
others keep running. The checks leave from the daemon's network namespace,
the balancer's."""
from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import threading
import time

from ..config.model import Real, real_labels
from ..health.engine import Engine
from ..health.state import start_pool
from .viavip import ViaVip


HALT_TIMEOUT = 2.0   # seconds a reload waits for an engine's checks to end once cancelled (normally: at once)


class _Engine(Engine):
    """The engine, counting results by checker kind for the metrics."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.results = {}     # (kind, ok) -> count

    def record(self, c, chk, result, started, now):
        key = (chk.spec.kind, result.ok)
        self.results[key] = self.results.get(key, 0) + 1
        return Engine.record(self, c, chk, result, started, now)


def effective(cfg, pools):
    """``cfg`` with each health-checked service's reals replaced by what its engine reported, for the services
    ``pools`` has (keyed by the service's key: (pool, failed), the pool (address, port) -> weight, failed the
    (address, port) of the reals that failed their checks: a real is its address and port, its own under NAT, else
    the service's); the others as they are. A failed real stays in the maps, marked failed: "inhibited" (in the
    pool at weight 0) or "removed" (not in it, as IPVS DEL_DEST)."""
    services = []
    for s in cfg.services:
        got = pools.get(s.key) if s.health is not None else None
        if got is None:
            services.append(s)
            continue
        pool, failed = got
        weights = dict(pool)
        port = s.port or 0
        reals = []
        for r in s.reals:
            key = (str(r.address), port if r.port is None else r.port)
            if key in failed:
                reals.append(dataclasses.replace(r, weight=0, failed="inhibited" if key in weights else "removed"))
            elif key in weights:
                reals.append(dataclasses.replace(r, weight=weights.pop(key)))
        if s.health.sorry_server:
            addr, own = s.health.sorry_server
            key = (addr, own or port)
            if key in weights and key not in failed:
                reals.append(Real(address=ipaddress.ip_address(addr), weight=weights[key],
                                  where=f"{s.where}.sorry_server", port=own or None if s.method == "nat" else None))
        services.append(dataclasses.replace(s, reals=tuple(reals)))
    return dataclasses.replace(cfg, services=tuple(services))


class Checks:
    """The engines of one daemon. ``changed()`` is called from the loop's thread when a pool changes: it only wakes
    the daemon, whose own thread then takes the lock and writes :func:`effective` to the maps (the loop never waits
    for the lock, so the daemon may start and stop engines while holding it)."""

    def __init__(self, changed, log):
        self.changed = changed
        self.log = log
        self.pools = {}       # service key -> (the pool its engine last reported, addresses of its failed reals)
        self.engines = {}     # service key -> (health spec, Engine)
        self.names = {}       # service key -> its xlb name (tcp/198.51.100.10:80), as the metrics label it
        self.counts = {}      # (kind, ok) -> checks, and (kind, None) -> seconds, of engines stopped since
        self.loop = None
        self.thread = None
        self.via = ViaVip(log)  # check_via_vip's marks and policy routes
        self.halt_timeout = HALT_TIMEOUT
        self.leftovers = {}   # the engines' checks that ignored a halt, for their successors (health/engine.py)

    def effective(self, cfg):
        """What the maps should hold for ``cfg``: the pools the engines of its services last reported. Before a
        reload's engines replace the old ones, a real the old engine failed stays failed and a real new to the
        service waits for its engine (:func:`effective`); a service with no engine yet (new, or given health keys)
        holds what its engine will start with (state.start_pool: alpha reals down). The data plane sees no up the
        checks did not say."""
        pools = {k: self.pools[k] for k in list(self.engines) if k in self.pools}
        for s in cfg.services:
            if s.health is not None and s.key not in pools:   # its engine starts after this write: as it will
                pools[s.key] = start_pool(s.health)
        return effective(cfg, pools)

    def _ensure_loop(self):
        if self.loop is None:
            self.loop = asyncio.new_event_loop()
            self.thread = threading.Thread(target=self.loop.run_forever, name="xlb health", daemon=True)
            self.thread.start()

    def _call(self, coro, timeout=30.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def update(self, cfg):
        """Run the engines ``cfg`` asks for: start new ones, stop the ones it no longer has, and replace those
        whose spec changed by engines that carry their state on, as keepalived's reload does (state.Core.start)."""
        want = {s.key: s.health for s in cfg.services if s.health is not None}
        for key in [k for k in self.engines if k not in want]:
            self._stop(key)
        for key, spec in want.items():
            old = self.engines.get(key)
            if old is not None and old[0] == spec:
                continue
            self._ensure_loop()
            engine = self._engine(key, spec)
            self.names[key] = next(s.name for s in cfg.services if s.key == key)
            self.engines[key] = (spec, engine)
            if old is None:
                self._call(engine.start())
            else:
                self._call(self._replace(key, old[1], engine))
                self._count(old[1])
        self.via.keep_only({self.via.key(c.check) for _, e in self.engines.values()
                            for c in e.core.checkers if c.check.via})

    def _engine(self, key, spec):
        """A new engine for the service ``key``: what it reports goes to the pools while it is that service's."""
        box = []
        engine = _Engine([spec], on_effect=lambda e: self._effect(key, box[0], e), log=self.log, via=self.via.mark,
                         script_user=spec.script_user, leftovers=self.leftovers)
        box.append(engine)
        return engine

    async def _replace(self, key, old, new):
        """On the loop: the old engine's checks stop, the new one starts from their states, then the old one's
        shutdown (the notifiers of what the new one no longer has). A check that does not end within
        halt_timeout of its cancel does not hold the reload (nor the daemon's lock): the new engine takes over
        anyway, as keepalived's reload always does, and what the stuck check reports later goes nowhere; the new
        engine's same checker fails its attempts as timeouts while it runs (health/engine.py leftovers) rather than get
        stuck beside it."""
        if not await old.halt(self.halt_timeout):
            self.log(f"xlb: health checks of VS {self.names[key]} did not stop within {self.halt_timeout:g} s of "
                     "the reload: replaced anyway (their late results are ignored)")
        try:
            await new.start(carry=old)
        finally:
            try:
                await old.stop(successor=new)
            except Exception as exc:  # noqa: BLE001 - as _stop
                self.log(f"xlb: health checks replaced did not stop cleanly: {type(exc).__name__}: {exc}")

    def _stop(self, key):
        _, engine = self.engines.pop(key)
        self.pools.pop(key, None)
        self._count(engine)
        try:
            self._call(engine.stop())
        except Exception as exc:  # noqa: BLE001 - a stop that fails must not keep the daemon from going on
            self.log(f"xlb: health checks of {key} did not stop cleanly: {type(exc).__name__}: {exc}")

    def _count(self, engine):
        """Keep the counts of an engine that goes (counters never go back)."""
        for k, n in self._counts([engine]).items():
            self.counts[k] = self.counts.get(k, 0) + n

    def _effect(self, key, engine, effect):
        got = self.engines.get(key)
        if got is None or got[1] is not engine:
            return
        self.pools[key] = (effect.pool, frozenset(effect.failed))
        self.changed()

    def quorum(self):
        """{service key: whether its engine reports quorum} of the health-checked services (xlb/ops/announce.py)."""
        return {key: all(s.quorum_up for s in engine.core.services) for key, (_, engine) in list(self.engines.items())}

    def status(self):
        """Every health-checked service's state (xlb/health/state.py Core.status), times as Unix times."""
        shift = time.time() - time.monotonic()
        out = []
        for _, engine in self.engines.values():
            for s in engine.status():
                for r in s["reals"]:
                    r["last_change"] = _wall(r["last_change"], shift)
                    for c in r["checkers"]:
                        c["last_time"], c["last_change"] = _wall(c["last_time"], shift), _wall(c["last_change"], shift)
                s["pool"] = [[a, p, w] for (a, p), w in s["pool"].items()]
                out.append(s)
        return out

    def metrics(self):
        """(rows of xlb_real_up: ((service, real), 0|1), {(kind, ok): checks}, {kind: seconds}) for
        xlb/observe/metrics.py."""
        up = []
        for key, (_, engine) in list(self.engines.items()):
            for s in engine.status():
                labels = real_labels([(r["address"], r["port"]) for r in s["reals"]])
                up.extend(((self.names[key], label), int(r["alive"])) for r, label in zip(s["reals"], labels))
        counts = self._counts(e for _, e in list(self.engines.values()))
        for k, n in self.counts.items():
            counts[k] = counts.get(k, 0) + n
        return (up, {k: n for k, n in counts.items() if k[1] is not None},
                {k[0]: n for k, n in counts.items() if k[1] is None})

    @staticmethod
    def _counts(engines):
        out = {}
        for engine in engines:
            for k, n in list(engine.results.items()):
                out[k] = out.get(k, 0) + n
            for kind, (_, secs) in list(engine.durations.items()):
                out[(kind, None)] = out.get((kind, None), 0) + secs
        return out

    def close(self):
        for key in list(self.engines):
            self._stop(key)
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()
            self.loop = None
        self.via.close()


def _wall(t, shift):
    return None if t is None else t + shift


def render(status) -> str:
    """``xlb list --health``: per service its quorum and pool, per real its state and time of the last change, per
    checker its state and last result (with the reason in keepalived's words)."""
    if not status:
        return "no health checks: no service has health keys\n"
    lines = []
    for s in status:
        quorum = "up" if s["quorum_up"] else "lost"
        sorry = ", sorry server in" if s["sorry_server_active"] else ""
        lines.append(f"VS {s['service']}  quorum {quorum}{sorry}, live weight {s['live_weight']}, "
                     f"{len(s['pool'])} in the pool")
        lines.append(f"  {'real':<28} {'state':<9} {'weight':>6}  {'since':<19}  {'checker':<10} {'last':<4}  reason")
        for r in s["reals"]:
            state = "up" if r["alive"] else ("inhibited" if r["inhibited"] else "down")
            where = _endpoint(r["address"], r["port"])
            head = f"  {where:<28} {state:<9} {r['weight']:>6}  {_time(r['last_change']):<19}"
            if not r["checkers"]:
                lines.append(f"{head}  {'(none)':<10} {'-':<4}  no checker: always up")
            for i, c in enumerate(r["checkers"]):
                last = "-" if c["last_ok"] is None else ("ok" if c["last_ok"] else "fail")
                lead = head if i == 0 else " " * len(head)
                lines.append(f"{lead}  {c['kind']:<10} {last:<4}  {c['last_reason'] or ('up' if c['up'] else 'down')}")
    return "\n".join(lines) + "\n"


def _endpoint(addr, port):
    host = f"[{addr}]" if ":" in addr else addr
    return f"{host}:{port}" if port else host


def _time(t):
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))
