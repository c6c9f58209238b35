"""The state machine, exactly keepalived 2.2's (check_*.c epilogs, ipwrapper.c): pure, driven by check results and
the times they came in, so tests run it on a fake clock. It decides when each checker runs next, whether a real
is alive, the quorum of each service and the sorry server, logs in keepalived's words once per change, and reports
``Effect``s (with the pool IPVS would now hold) and the commands to run (notify_*, quorum_*)."""
import dataclasses
from dataclasses import dataclass, field

from . import spec as hspec

BOOTSTRAP_DELAY = 1.0   # keepalived starts the first checks one second after start, plus the warmup jitter

# Effect kinds
INIT = "init"                  # the pool at start
REAL_UP = "real_up"
REAL_DOWN = "real_down"        # removed; with inhibit_on_failure kept at weight 0
WEIGHT = "weight"              # misc_dynamic / FILE_CHECK weight change
QUORUM_GAINED = "quorum_gained"
QUORUM_LOST = "quorum_lost"


@dataclass(frozen=True)
class Result:
    ok: bool
    reason: str = ""               # keepalived's words: logged when the state changes (or every failure if asked)
    weight: int | None = None      # a new effective weight (misc_dynamic, FILE_CHECK)


@dataclass(frozen=True)
class Effect:
    kind: str
    service: str
    real: tuple | None = None      # (address, port)
    weight: int | None = None
    pool: dict = field(default_factory=dict)   # (address, port) -> weight: what IPVS would hold now
    failed: frozenset = frozenset()            # (address, port) of the reals that are not alive


def real_weight(w):
    return max(0, min(hspec.WEIGHT_MAX, w))


class CheckerState:
    """One checker of one real: keepalived's is_up / has_run / retry_it."""

    def __init__(self, check, real, label):
        self.check = check            # resolved spec.Check
        self.real = real
        self.label = label            # "[198.18.1.2]:tcp:80" (FMT_CHK)
        self.is_up = not check.alpha
        self.has_run = False
        self.retry_it = check.retry   # one failure is enough at start (alpha: it only logs)
        self.last = None              # (time, Result)
        self.last_change = None


class RealState:
    def __init__(self, spec, service):
        self.spec = spec
        self.service = service
        self.key = spec.key
        self.weight = spec.weight     # effective weight (misc_dynamic moves it)
        self.inhibit = hspec.inhibit(spec, service.spec)
        self.checkers = []
        self.failed = 0               # num_failed_checkers
        self.alive = False
        self.counted = 0              # what it adds to its service's live weight now
        self.last_change = None
        self.reason = ""

    def name(self):
        a, p = self.key
        return f"[{a}]:{self.service.spec.protocol}:{p}" if p else f"[{a}]:0"


class ServiceState:
    """One service's reals, with what a change needs kept up to date as reals change (track): the live weight,
    the pool without the sorry server, the dead reals. A real's change costs O(1) beside copying the pool for
    its Effect (a dict copy): not a pass over every real, which made a switch failure under 10,000 reals
    quadratic."""

    def __init__(self, spec):
        self.spec = spec
        self.reals = [RealState(r, self) for r in spec.reals]
        self.quorum_up = False
        self.sorry_alive = False
        self.live = 0                 # sum of the alive reals' weights
        self.members = {}             # key -> weight: alive reals at their weight, inhibited dead ones at 0
        self.dead = set()             # keys of the reals that are not alive
        self.inhibited = [r.key for r in self.reals if r.inhibit]
        for r in self.reals:
            self.track(r)

    def track(self, r):
        """Account for a change of r.alive or r.weight."""
        now = real_weight(r.weight) if r.alive else 0
        self.live += now - r.counted
        r.counted = now
        if r.alive or r.inhibit:
            self.members[r.key] = now
        else:
            self.members.pop(r.key, None)
        if r.alive:
            self.dead.discard(r.key)
        else:
            self.dead.add(r.key)

    def live_weight(self):
        return self.live

    def pool(self):
        """What IPVS would hold: alive reals at their weight, inhibited dead ones at 0, or the sorry server."""
        s = self.spec
        if s.sorry_server and self.sorry_alive:
            out = dict.fromkeys(self.inhibited, 0)
            out[self._sorry_key()] = 1
            return out
        out = dict(self.members)
        if s.sorry_server and s.sorry_server_inhibit:
            out[self._sorry_key()] = 0
        return out

    def effect(self, kind, real=None, weight=None):
        return Effect(kind, self.spec.name, real, weight, self.pool(), frozenset(self.dead))

    def _sorry_key(self):
        a, p = self.spec.sorry_server
        return (a, p or _service_port(self.spec))


def start_pool(spec):
    """(pool, dead keys) a service's engine starts from, before any check ran: a real with an alpha checker down,
    the others up (Core.start for a real new to it; the quorum's sorry server comes with the engine's first report).
    What the daemon writes for a service whose engine has not started yet."""
    s = ServiceState(spec)
    for r in s.reals:
        r.alive = not any(hspec.resolve(c, r.spec, spec).alpha for c in r.spec.checks)
        s.track(r)
    return s.pool(), frozenset(s.dead)


TIMING = dict.fromkeys(("where", "connect_timeout", "retry", "delay_before_retry", "delay_loop", "warmup", "alpha",
                        "log_all_failures", "misc_timeout"))


def same_checker(a, b):
    """keepalived's checker compare on a reload: same kind, same target and test; its timings may differ."""
    return dataclasses.replace(a, **TIMING) == dataclasses.replace(b, **TIMING)


def checker_key(c):
    """A CheckerState's identity across reloads: its service, its real, and what it checks (same_checker's)."""
    return c.real.service.spec.name, c.real.key, dataclasses.replace(c.check, **TIMING)


def _migrate(r, old):
    """migrate_checkers: ``r`` (new config) takes the state of ``old``, the same real in the config it replaces:
    alive and a weight a checker moved carry over; each checker takes the state of an old one that checks the
    same thing (is_up if it ran, has_run, its retries so far, capped below its new retry); the rest start
    afresh, down when alpha and the real has a failure (or is down with nothing run). A real is alive when no
    checker failed; returns whether it comes up by this (its failing checker left the config)."""
    r.alive, r.last_change, r.reason = old.alive, old.last_change, old.reason
    if old.weight != old.spec.weight:     # misc_dynamic / FILE_CHECK moved it: keepalived keeps its effective weight
        r.weight = old.weight
    left = list(old.checkers)
    for c in r.checkers:
        c.is_up, c.retry_it = True, 0
        o = next((o for o in left if same_checker(o.check, c.check)), None)
        if o is None:
            continue
        left.remove(o)
        if o.has_run:
            c.is_up = o.is_up
        c.has_run, c.last, c.last_change = o.has_run, o.last, o.last_change
        if o.retry_it and c.check.retry:
            c.retry_it = min(o.retry_it, c.check.retry - 1)
    r.failed = sum(1 for c in r.checkers if c.has_run and not c.is_up)
    if r.failed or not (r.alive or any(c.has_run for c in r.checkers)):
        for c in r.checkers:
            if not c.has_run:
                if c.check.alpha:
                    c.is_up = False
                    r.failed += 1
                c.retry_it = c.check.retry    # one failure is enough
    risen = not r.failed and not r.alive
    r.alive = not r.failed
    return risen


def _service_port(svc):
    tail = svc.name.rsplit(":", 1)[-1]
    return int(tail) if tail.isdigit() else 0


class Core:
    """Every service's state; ``start`` once, then ``report`` each result. Effects and commands go to the
    callbacks given: ``on_effect(Effect)``, ``run_command(argv, what)``, ``log(line)``."""

    def __init__(self, services, label, log=print, on_effect=None, run_command=None, rand=None,
                 bootstrap=BOOTSTRAP_DELAY):
        import random
        self.services = [ServiceState(s) for s in services]
        self.log = log
        self.on_effect = on_effect or (lambda e: None)
        self.run_command = run_command or (lambda argv, what: None)
        self.rand = rand or random.random
        self.bootstrap = bootstrap
        self.checkers = []
        for s in self.services:
            for r in s.reals:
                for c in r.spec.checks:
                    rc = hspec.resolve(c, r.spec, s.spec)
                    r.checkers.append(CheckerState(rc, r, label(rc, s.spec.protocol)))
                self.checkers.extend(r.checkers)

    # --- start / stop (init_services, set_quorum_states, clear_services) -----------------------------------------

    def start(self, now, carry=None):
        """Initial states and pools; returns [(first due time, CheckerState)] with the warmup jitter. ``carry``:
        the Core this one replaces on a reload: a service both have keeps its quorum and sorry server, a real both
        have (same address and port) its state and its checkers' (keepalived's clear_diff_services)."""
        before = {s.spec.name: s for s in carry.services} if carry is not None else {}
        for s in self.services:
            old = before.get(s.spec.name)
            olds = {r.key: r for r in old.reals} if old is not None else {}
            risen = []
            for r in s.reals:
                if r.key in olds:
                    if _migrate(r, olds[r.key]):
                        risen.append(r)
                else:
                    r.failed = sum(1 for c in r.checkers if not c.is_up)
                    r.alive = r.failed == 0
                    r.last_change = now
                s.track(r)
            if old is None:
                s.quorum_up = s.live_weight() >= s.spec.quorum + s.spec.hysteresis
            else:
                s.quorum_up = old.quorum_up
                s.sorry_alive = old.sorry_alive and old.spec.sorry_server == s.spec.sorry_server
            for r in risen:      # no checker failed any more (the failing one left the config): up now
                self.log(f"{'Enabl' if r.inhibit else 'Add'}ing service {r.name()} "
                         f"{'of' if r.inhibit else 'to'} VS {s.spec.name}")
                r.last_change = now
                self._rs_notify(r)
            self._update_quorum(s, init=True)
            self.on_effect(s.effect(INIT))
        return [(now + self.bootstrap + c.check.warmup * self.rand(), c) for c in self.checkers]

    def stop(self, successor=None):
        """Shutting down: with omega, the down notifiers of alive reals and of the quorum run, as keepalived's do.
        On a reload (``successor``: the Core that goes on) a real or service it still has is left as it is, and
        the alive reals a going-on service lost get their down notifiers, omega or not, as keepalived's do."""
        going_on = {s.spec.name: {r.key for r in s.reals} for s in successor.services} if successor else {}
        for s in self.services:
            kept = going_on.get(s.spec.name)
            for r in s.reals:
                if r.alive and (kept is None or r.key not in kept):
                    self.log(f"Shutting down service {r.name()} from VS {s.spec.name}")
                    r.alive = False
                    s.track(r)
                    if s.spec.omega or kept is not None:
                        self._notify(r.spec.notify_down, f"notify_down {r.name()}")
            if s.spec.omega and s.quorum_up and kept is None:
                s.quorum_up = False
                self._notify(s.spec.quorum_down, f"quorum_down {s.spec.name}")

    # --- one result (the checkers' epilog) -----------------------------------------------------------------------

    def report(self, c, result, now, started=None):
        """Feed one check result; returns when the checker runs next."""
        c.last = (now, result)
        chk = c.check
        if result.ok and result.weight is not None:
            self._update_weight(c.real, result.weight, now)
        if not result.ok and c.is_up and chk.log_all_failures and result.reason:
            self.log(result.reason)
        delay = chk.delay_loop
        if result.ok or ((c.is_up or not c.has_run) and c.retry_it >= chk.retry):
            if result.ok and (not c.is_up or not c.has_run):
                if result.reason:
                    self.log(result.reason)
                self._checker_state(c, True, now, result.reason)
            elif not result.ok and (c.is_up or not c.has_run):
                if c.is_up and result.reason and not chk.log_all_failures:
                    self.log(result.reason)
                self._log_down(c)
                self._checker_state(c, False, now, result.reason)
            c.retry_it = 0
        elif c.is_up:
            delay = chk.delay_before_retry
            c.retry_it += 1
        c.has_run = True
        base = started if (started is not None and chk.kind == "MISC_CHECK") else now
        return max(now, base + delay)

    def _log_down(self, c):
        kind = {"HTTP_GET": "HTTP_CHECK", "SSL_GET": "SSL_CHECK", "MISC_CHECK": ""}.get(c.check.kind, c.check.kind)
        if not kind:
            return
        if c.check.retry and c.has_run:
            self.log(f"{kind} on service {c.label} failed after {c.check.retry} retries.")
        else:
            self.log(f"{kind} on service {c.label} failed.")

    # --- ipwrapper.c ---------------------------------------------------------------------------------------------

    def _checker_state(self, c, alive, now, reason):
        """update_svr_checker_state: all checkers of a real must pass for it to be alive."""
        r = c.real
        if c.is_up == alive:
            if not c.has_run:
                if c.check.alpha or not alive:
                    self._rs_notify(r)
                c.has_run = True
            return
        c.has_run = True
        c.last_change = now
        if alive and r.failed <= 1:
            self._perform(r, True, now, reason)
        elif not alive and r.failed == 0:
            self._perform(r, False, now, reason)
        c.is_up = alive
        r.failed += -1 if alive else 1

    def _perform(self, r, alive, now, reason):
        """perform_svr_state: the real joins or leaves the pool (or is enabled/disabled with inhibit_on_failure)."""
        if r.alive == alive:
            return
        s = r.service
        verb = ("Enabl" if r.inhibit else "Add") if alive else ("Disabl" if r.inhibit else "Remov")
        prep = "of" if r.inhibit else ("to" if alive else "from")
        self.log(f"{verb}ing service {r.name()} {prep} VS {s.spec.name}")
        r.alive = alive
        s.track(r)
        r.last_change, r.reason = now, reason
        self.on_effect(s.effect(REAL_UP if alive else REAL_DOWN, r.key,
                                real_weight(r.weight) if alive else (0 if r.inhibit else None)))
        self._rs_notify(r)
        self._update_quorum(s, init=False)

    def _rs_notify(self, r):
        argv = r.spec.notify_up if r.alive else r.spec.notify_down
        self._notify(argv, f"notify_{'up' if r.alive else 'down'} {r.name()}")

    def _notify(self, argv, what):
        if argv:
            self.run_command(argv, what)

    def _update_weight(self, r, weight, now):
        """update_svr_wgt: misc_dynamic (exit status - 2) or FILE_CHECK set a new effective weight."""
        old, new = real_weight(r.weight), real_weight(weight)
        r.weight = weight
        r.service.track(r)
        if old == new:
            return
        s = r.service
        self.log(f"Changing weight from {old} to {new} for {'' if r.alive else 'in'}active service {r.name()} "
                 f"of VS {s.spec.name}")
        self.on_effect(s.effect(WEIGHT, r.key, new))
        self._update_quorum(s, init=False)

    def _update_quorum(self, s, init):
        """update_quorum_state: quorum with hysteresis over the sum of live weights; the sorry server."""
        q, h = s.spec.quorum, s.spec.hysteresis
        total = s.live_weight()
        threshold = q + (-h if s.quorum_up else h)
        sorry = s.spec.sorry_server
        if not s.quorum_up and total >= threshold:
            s.quorum_up = True
            self.log(f"Gained quorum {q}+{h}={threshold} <= {total} for VS {s.spec.name}")
            if sorry and s.sorry_alive:
                verb = "Disabling" if s.spec.sorry_server_inhibit else "Removing"
                self.log(f"{verb} sorry server {self._sorry_name(s)} from VS {s.spec.name}")
                s.sorry_alive = False
                self.log(f"Adding alive servers to the pool for VS {s.spec.name}")
            self.on_effect(s.effect(QUORUM_GAINED))
            self._notify(s.spec.quorum_up, f"quorum_up {s.spec.name}")
        elif (s.quorum_up and (not total or total < threshold)) or \
                (init and not s.quorum_up and sorry and not s.sorry_alive):
            s.quorum_up = False
            self.log(f"{'Starting with quorum down' if init else 'Lost quorum'} {q}-{h}={threshold} > {total} "
                     f"for VS {s.spec.name}")
            if sorry and not s.sorry_alive:
                verb = "Enabling" if s.spec.sorry_server_inhibit else "Adding"
                self.log(f"{verb} sorry server {self._sorry_name(s)} to VS {s.spec.name}")
                self.log(f"Removing alive servers from the pool for VS {s.spec.name}")
                s.sorry_alive = True
            self.on_effect(s.effect(QUORUM_LOST))
            self._notify(s.spec.quorum_down, f"quorum_down {s.spec.name}")

    @staticmethod
    def _sorry_name(s):
        a, p = s._sorry_key()
        return f"[{a}]:{s.spec.protocol}:{p}"

    # --- what `xlb list --health` will show ------------------------------------------------------------------------

    def status(self):
        out = []
        for s in self.services:
            reals = []
            for r in s.reals:
                reals.append({
                    "address": r.key[0], "port": r.key[1], "alive": r.alive, "weight": real_weight(r.weight),
                    "inhibited": r.inhibit and not r.alive, "last_change": r.last_change, "reason": r.reason,
                    "checkers": [{"kind": c.check.kind, "target": c.label, "up": c.is_up, "has_run": c.has_run,
                                  "retry_it": c.retry_it, "last_time": c.last[0] if c.last else None,
                                  "last_ok": c.last[1].ok if c.last else None,
                                  "last_reason": c.last[1].reason if c.last else "",
                                  "last_change": c.last_change} for c in r.checkers]})
            out.append({"service": s.spec.name, "quorum_up": s.quorum_up, "sorry_server_active": s.sorry_alive,
                        "live_weight": s.live_weight(), "pool": s.pool(), "reals": reals})
        return out
