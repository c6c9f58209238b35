"""The daemon's VIP announcements through BIRD (`xlb run --bird-socket PATH --bird-include FILE`; docs/scale-out.md).

A VIP is announced while the node serves (from attach until SIGTERM/SIGINT, before detaching) and every service on
it can serve: a health-checked service while its engine reports quorum, any other while it has a real of weight
above 0. `xlb drain` withdraws every VIP and keeps forwarding (established flows, and whatever the router still
sends while it converges); `xlb drain --off` announces again.

BIRD is driven from one worker thread (xlb/sync/bgp.py VipAnnouncer: the include file and `configure`), so a BIRD
that is slow, gone or refusing its configuration never holds the daemon's lock or its loop: the daemon says what it
wants (``want``), the worker brings BIRD in step, logs a failure once per distinct message and retries with a
back-off of RETRY_MIN doubling to RETRY_MAX seconds. Status and metrics show what is wanted, what BIRD last
accepted (``announced``) and the last error.
"""
import os
import threading
import time

from ..sync.bgp import BirdError, VipAnnouncer

RETRY_MIN, RETRY_MAX = 0.5, 30.0   # seconds between attempts while BIRD is unreachable or refuses
TIMEOUT = 5.0                      # seconds one exchange with BIRD may take (its `configure` takes ~3 ms)


def serving_vips(cfg, quorum):
    """The VIPs to announce for ``cfg``: those whose every service can serve. ``quorum``: {service key: bool} of
    the health-checked services (xlb/ops/health.py Checks.quorum). Firewall-mark services have no VIP of their own:
    the operator announces their prefixes."""
    ok = {}
    for s in cfg.services:
        if s.vip is None:
            continue
        up = quorum[s.key] if s.key in quorum else any(r.weight > 0 for r in s.reals)
        ok[s.vip] = ok.get(s.vip, True) and up
    return frozenset(vip for vip, up in ok.items() if up)


class Announcements:
    """What this daemon announces; ``want()`` and ``drain()`` from the daemon, BIRD driven by the worker."""

    def __init__(self, include_path, socket_path, log, timeout=TIMEOUT):
        self.announcer = VipAnnouncer(include_path, socket_path, timeout)
        self.log = log
        self.wanted = frozenset()     # what the config and health say
        self.draining = False
        self.error = None             # BIRD's last complaint, None once in step
        self.changes = 0              # configurations BIRD accepted
        self._synced = False          # BIRD has confirmed a configuration since we started
        self._cond = threading.Condition()
        self._closed = False
        self._thread = None

    @property
    def target(self):
        return frozenset() if self.draining else self.wanted

    def in_step(self):
        return self._synced and self.announcer.announced == self.target

    def start(self):
        """Write an empty include file if there is none (BIRD refuses to start without it), start the worker."""
        if not os.path.exists(self.announcer.include_path):
            self.announcer.start()
        self._thread = threading.Thread(target=self._work, name="xlb bgp", daemon=True)
        self._thread.start()

    def want(self, vips):
        with self._cond:
            self.wanted = frozenset(vips)
            self._cond.notify_all()

    def drain(self, on=True, wait=TIMEOUT):
        """Withdraw everything (on) or announce again (off); wait up to ``wait`` s for BIRD to confirm."""
        with self._cond:
            self.draining = on
            self._cond.notify_all()
            self._cond.wait_for(lambda: self.in_step() or self._closed, wait)
        return self.status()

    def _work(self):
        delay = RETRY_MIN
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._closed or not self.in_step())
                if self._closed:
                    return
                target = self.target
            try:
                self._apply(target)
                delay = RETRY_MIN
            except (BirdError, OSError) as exc:
                if str(exc) != self.error:
                    self.log(f"xlb: bgp: {exc}; retrying every {RETRY_MAX:g} s at most (forwarding goes on)")
                self.error = str(exc)
                with self._cond:
                    self._cond.wait_for(lambda: self._closed, delay)
                delay = min(delay * 2, RETRY_MAX)

    def _apply(self, target):
        if not self._synced:
            self.announcer.forget()   # the file may be a previous life's: write it and configure whatever it says
        self.announcer.replace(target)
        with self._cond:
            self._synced, self.error = True, None
            self.changes += 1
            self._cond.notify_all()
        shown = ", ".join(map(str, sorted(target, key=lambda a: (a.version, a)))) or "nothing"
        self.log(f"xlb: bgp: announcing {shown}{' (draining)' if self.draining else ''}")

    def status(self):
        def names(vips):
            return [str(a) for a in sorted(vips, key=lambda a: (a.version, a))]
        return {"bird_socket": self.announcer.socket_path, "include": self.announcer.include_path,
                "draining": self.draining, "wanted": names(self.wanted),
                "announced": None if self.announcer.announced is None else names(self.announcer.announced),
                "in_step": self.in_step(), "error": self.error, "changes": self.changes}

    def close(self, withdraw=True, timeout=TIMEOUT):
        """Stop the worker, then withdraw every VIP (SIGTERM: before the program is detached), unless the daemon
        leaves its program attached for the next one (SIGQUIT). Never raises; does nothing if never started."""
        if self._thread is None:
            return
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)
        if not withdraw:
            self.log("xlb: bgp: leaving the VIPs announced for the next `xlb run` (the program stays attached)")
            return
        started = time.monotonic()
        try:
            if not self._synced:
                self.announcer.forget()
            self.announcer.replace(())
            self.log(f"xlb: bgp: withdrew every VIP ({(time.monotonic() - started) * 1000:.0f} ms)")
        except (BirdError, OSError) as exc:
            self.log(f"xlb: bgp: could not withdraw the VIPs: {exc}")
