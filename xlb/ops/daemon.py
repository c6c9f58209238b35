"""`xlb run`: load the program, apply the config, attach, then keep the timers until told to stop.

SIGHUP re-reads the config and applies only the difference (a rejected config changes nothing and says why);
SIGUSR1 prints the counters; SIGINT/SIGTERM detach and exit; SIGQUIT exits leaving the program attached (an
upgrade: the next `xlb run` adopts the pinned maps and replaces the program in one step). The control socket
(xlb/ops/control.py) serves the other `xlb` commands; they, the timers and reloads take turns under one lock.
Every sweep also checks that the interface still runs our program (xlb/ops/attachwatch.py).
"""
import contextlib
import dataclasses
import signal
import threading
import time
from pathlib import Path

from ..config import read as xread
from . import commands
from . import control
from ..observe import metrics
from ..dataplane import layout, pin
from ..config import realcheck
from ..config.model import Bgp, Sync
from . import listings
from .attachwatch import AttachWatch, warn_if_down
from .health import Checks
from .announce import Announcements, serving_vips
from .sync import SyncRunner
from ..observe import stats
from ..dataplane import bpffs
from ..dataplane.links import ifindex_of
from ..dataplane.program import Program, cflags_for
from ..dataplane.apply import DataPlane
from ..dataplane.repin import PinWatch
from ..dataplane.sweep import sweep_interval
from ..errors import ConfigError, XlbError, brief
from ..dataplane.forwarding import Sysctls
from ..dataplane.neigh import ensure_neighbours, remove_managed
from ..dataplane.structs import REASON


class Daemon(AttachWatch):
    def __init__(self, iface, config_path, xdp_mode="native", force=False, log=print, socket_path=None,
                 load=None, metrics=None, pin_dir=None, fresh=False, bgp=None, sync=None):
        # One daemon, one set of maps, the program attached to each interface (`--iface A --iface B`: e.g. the
        # clients' side and the reals' side of NAT). The first names the pin directory and the control socket.
        self.ifaces = [iface] if isinstance(iface, str) else list(dict.fromkeys(iface))
        self.iface = self.ifaces[0]
        # Where the config comes from (start and SIGHUP): the TOML file, or e.g. a keepalived import (cli.py).
        self.load = load or (lambda: xread.load(config_path))
        self.pin_dir = pin_dir  # None: pin.default_pin_dir(iface)
        self.fresh = fresh
        self._pin_lock = None
        self._tail_calls = None  # our program's pinned tail-call array
        self.pin_watch = None  # pins that vanish are made again (xlb/dataplane/repin.py)
        self._keep_attached = False
        self._made_pins = False  # this start pinned fresh maps and has not attached yet (close() unpins them)
        self._pin_base = None  # the deepest of the pin directory and its parents that existed before this start
        self.socket_path = socket_path or control.default_socket(iface)
        self.lock = threading.RLock()
        self.control = None
        self.config_path = config_path
        self.xdp_mode = xdp_mode
        self.force = force
        self.log = log
        self.prog = None
        self.dp = None
        self._wake = threading.Event()
        self._reload = False
        self._dump = False
        self._stop = False
        self._no_neigh = 0
        self._stretched = False  # the sweep interval stretched past the configured one (a slow sweep)
        self.metrics = metrics               # --metrics ADDR:PORT, or None
        self.metrics_endpoint = None
        self.reloads = dict.fromkeys(("success", "rejected", "failed"), 0)   # exported by xlb/observe/metrics.py
        self.last_reload_success = None      # Unix time the running config was applied
        self.tracer = None                   # xlb/observe/trace.py, built on the first `trace` command
        self.runtime_edits = 0  # edits over the control socket since the config file was last applied
        self.rates = listings.RateEstimator()
        self.sysctls = Sysctls(self.ifaces, log)
        self.neighbours = set()  # the reals' addresses whose neighbour entries this daemon keeps
        self.exit_code = 0
        self.program_lost = dict.fromkeys(("removed", "replaced"), 0)  # exported by xlb/observe/metrics.py
        self.config = None  # the config given (file, reload, runtime edits); the maps hold health.effective(config)
        self.health = Checks(self._health_changed, log)
        self._health_dirty = False
        self.bgp = bgp  # xlb/ops/announce.py Announcements (--bird-socket/--bird-include, else [bgp]), or None
        self.bgp_spec = None if bgp else Bgp()  # the config's [bgp] in force; None: the command line's wins
        self.sync_override = sync  # `xlb run --sync ...`: {mode, iface, syncid} over the config's [sync]
        self.sync = None  # xlb/ops/sync.py SyncRunner while state sync runs

    def _install_signals(self):
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGQUIT):
            signal.signal(sig, self._signal)

    def start(self):
        """Everything up to a running data plane; on failure nothing stays attached.

        Signal handlers go in first: a SIGTERM that lands between attach and run() must still detach
        (run() then sees the stop flag at once), not kill the process with the program left attached.
        """
        self._install_signals()
        cfg = self.check_reals(self.load())
        for ifname in self.ifaces:
            ifindex_of(ifname)
        if self.bgp_spec is not None and cfg.bgp.bird_socket:
            self.bgp_spec, self.bgp = cfg.bgp, Announcements(cfg.bgp.bird_include, cfg.bgp.bird_socket, self.log)
        try:
            adopted, own_ids = self._pins()
            # Nothing to adopt: what gets pinned from here on is this start's, and goes again if it fails.
            self._made_pins = not adopted
            self.prog = Program(cflags=cflags_for(cfg.tables, self.pin_dir), log=self.log)
            layout.check_sizes(self.prog, self.pin_dir, adopted)
            if not adopted:
                layout.write_layout(self.pin_dir)
            self.dp = DataPlane(self.prog, cfg.tables)
            self.dp.choose_sweep(self.log)
            if adopted:
                found = self.dp.adopt()
                self.log(f"xlb: adopted the maps pinned in {self.shown(self.pin_dir)} ({found['services']} services, "
                         f"{found['reals']} reals, their connections, templates and counters)")
            self.apply_config(cfg)
            self.last_reload_success = time.time()
            # Counted before this start (a previous daemon's life): not news.
            self._no_neigh = self.dp.counters("verdicts", REASON["drop_no_neigh"]).packets
            self.refresh_neighbours()
            self.control = control.Server(self.socket_path, self.dispatch, commands.COMMANDS, log=self.log)
            self.control.start()
            if self.metrics:
                self.metrics_endpoint = metrics.serve_daemon(self, self.metrics)
                self.log(f"xlb: serving Prometheus metrics on http://{self.metrics_endpoint.where}/metrics")
            spec = dataclasses.replace(cfg.sync, **self.sync_override) if self.sync_override else cfg.sync
            if spec.mode:
                self.sync = SyncRunner(self, spec)
                self.sync.start()
            self._tail_calls = pin.pin_tail_calls(self.prog, self.pin_dir)
            for ifname in self.ifaces:
                self.prog.attach(ifname, self.xdp_mode, self.force, own_ids | pin.pinned_ids(self.pin_dir))
            pin.drop_tail_calls(self.pin_dir, keep=self._tail_calls)  # the replaced program's
            self.pin_watch = PinWatch(self.prog, self.pin_dir, self._tail_calls, self._pin_lock, self.log)
            self._made_pins = False
        except BaseException:
            self.close()
            raise
        self.log(f"xlb: attached to {self.names()} ({self.xdp_mode}); {self.summary(cfg)}")
        for ifname in self.ifaces:
            warn_if_down(ifname, self.log)
        if self.bgp:  # serving from here on: announce what can be served
            self.bgp.start()
            self.announce()

    def names(self):
        """The interfaces as the log names them: "eth0", or "eth0, eth1"."""
        return ", ".join(self.ifaces)

    def _pins(self):
        """Lock the pin directory, discard its maps with --fresh, and check what is left can be adopted.

        Returns (names of the maps to adopt, ids of the maps pinned before: a program using them is ours)."""
        if self.pin_dir is None:
            root = bpffs.root()
            if root.note:
                self.log(root.note)
            self.pin_dir = pin.default_pin_dir(self.iface)
        elif bpffs.outer_process() is None:  # --pin-dir: the operator's choice; /sys/fs/bpf mounted as before
            bpffs.mount_bpffs()
        self.pin_dir = Path(self.pin_dir)
        self._pin_base = next((d for d in [self.pin_dir, *self.pin_dir.parents] if d.exists()), None)
        self._pin_lock = pin.DirLock(self.pin_dir).acquire()
        own_ids = pin.pinned_ids(self.pin_dir)
        if self.fresh:
            pin.clear(self.pin_dir)
            self.log(f"xlb: --fresh: discarded the maps pinned in {self.shown(self.pin_dir)}")
        return layout.check_layout(self.pin_dir, self.log), own_ids

    def _unpin_failed_start(self):
        """Take back what a start that failed pinned (its maps, the layout record; the directory if it made it), so
        that the next start is a first start rather than an adoption of empty maps of maybe other sizes. Tail-call
        arrays stay: one may be an attached program's (a --fresh start over a program still running)."""
        self._made_pins = False
        pin.clear(self.pin_dir)
        # The directories this start made (the pin directory, and netns-NAME/ or xlb/ above it), while empty.
        for d in [self.pin_dir, *self.pin_dir.parents]:
            if d == self._pin_base:
                break
            try:
                d.rmdir()
            except OSError:  # not empty: a tail-call array stays, and the directory with it
                break

    def shown(self, path):
        """A path on the BPF filesystem as the operator knows it (not /proc/self/fd/N/...)."""
        return bpffs.shown(path)

    @staticmethod
    def summary(cfg):
        nreals = sum(len(s.reals) for s in cfg.services)
        return f"{len(cfg.services)} services, {nreals} reals, {len(cfg.marks)} mark rules"

    def check_reals(self, cfg, before=None, source=None):
        """cfg, unless a real is one of this balancer's own addresses, which only the daemon knows (a ConfigError;
        xlb/config/realcheck.py). A runtime edit passes the running config and its source: only its new reals count."""
        realcheck.check_local(cfg, realcheck.own_addresses(), self.names(), before, source)
        return cfg

    def refresh_neighbours(self):
        """Neighbour entries for the reals (xlb/dataplane/neigh.py), the address families they use forwarding on; the entries
        xlb made for reals no longer configured go."""
        # the reals given and what the maps hold (a sorry server): a real out of the pool comes back without waiting
        reals = {r.address for cfg in (self.config, self.dp.config) if cfg for s in cfg.services for r in s.reals}
        self.sysctls.need({a.version for a in reals})
        remove_managed(self.neighbours - reals)
        self.neighbours = reals
        tunnelled = {r.address for cfg in (self.config, self.dp.config) if cfg for s in cfg.services
                     if s.method == "tun" for r in s.reals}
        ensure_neighbours(reals, log=self.log, tunnelled=tunnelled)

    def apply_config(self, cfg):
        """Make ``cfg`` the running config: the maps first (a ConfigError there changes nothing), then the health
        engines it asks for (only those whose spec changed restart), then the pools they report."""
        self.dp.apply(self.health.effective(cfg))
        self.config = cfg
        self.health.update(cfg)
        self.dp.apply(self.health.effective(cfg))
        self.announce()

    def announce(self):
        """Tell the BGP worker which VIPs can be served now (the config's, with the health engines' quorum)."""
        if self.bgp and self.prog and self.prog.attached:
            self.bgp.want(serving_vips(self.config, self.health.quorum()))

    def _health_changed(self):
        """From the health loop's thread: a pool changed; the daemon's thread applies it (run())."""
        self._health_dirty = True
        self._wake.set()

    def apply_health(self):
        with self.lock:
            try:
                self.dp.apply(self.health.effective(self.config))
                self.announce()
            except Exception as exc:  # noqa: BLE001 - no health change may end the daemon; the next one applies again
                self.log(f"xlb: applying a health change failed: {brief(exc)}")

    def dispatch(self, cmd, args):
        """Run one control command (xlb/ops/commands.py COMMANDS) with the daemon to itself."""
        with self.lock:
            return commands.COMMANDS[cmd](self, **args)

    def reload(self):
        """Re-read the config; apply it, or keep the running one and say why."""
        with self.lock:
            return self._reload_locked()

    def _reload_locked(self):
        cfg = None
        try:
            cfg = self.check_reals(self.load())
            self.apply_config(cfg)
        except ConfigError as exc:
            self.log(f"xlb: reload rejected, running config unchanged: {exc}")
            self.reloads["rejected"] += 1
            return False
        except XlbError as exc:
            # Checked configs fail here only if the kernel refuses a map write: keep serving, say so.
            self.log(f"xlb: reload failed while applying, some changes may be in force: {exc}")
            self.reloads["failed"] += 1
            return False
        except Exception as exc:  # noqa: BLE001  RecursionError, MemoryError, a bug: no reload may end the daemon
            outcome = "rejected" if cfg is None else "failed"
            state = "running config unchanged" if cfg is None else "some changes may be in force"
            self.log(f"xlb: reload {outcome}, {state}: {self.config_path}: {brief(exc)}")
            self.reloads[outcome] += 1
            return False
        self.reloads["success"] += 1
        self.last_reload_success = time.time()
        if self.runtime_edits:
            self.log(f"xlb: reload: the config file replaces {self.runtime_edits} runtime edits "
                     "(`xlb save` before a reload keeps them)")
            self.runtime_edits = 0
        self.refresh_neighbours()
        if self.sync_override is None and cfg.sync != (self.sync.spec if self.sync else Sync()):  # TOML-driven
            self.log("xlb: reload: [sync] changes take effect when xlb restarts")
        if self.bgp_spec is not None and cfg.bgp != self.bgp_spec:
            self.log("xlb: reload: [bgp] changes take effect when xlb restarts")
        self.log(f"xlb: reloaded {self.config_path}: {self.summary(cfg)}")
        return True

    def tick(self):
        """One timer round: sweep the tables; if packets met an unresolved neighbour, resolve again."""
        with self.lock:
            return self._tick_locked()

    def _tick_locked(self):
        if not self._watch_attachment():
            return None
        if self.pin_watch and self.pin_watch.check():
            self._pin_lock = self.pin_watch.lock
        res = self.dp.sweep()
        if self.dp.walk_error:
            self.log(f"xlb: {self.dp.walk_error}")
            self.dp.walk_error = None
        self.rates.sample(self.dp)
        no_neigh = self.dp.counters("verdicts", REASON["drop_no_neigh"]).packets
        if no_neigh > self._no_neigh:
            self.log(f"xlb: {no_neigh - self._no_neigh} packets met an unresolved neighbour; resolving")
            self.refresh_neighbours()
        self._no_neigh = no_neigh
        return res

    def _say_stretch(self, interval, res):
        """Say when the sweep interval starts or stops being stretched beyond the configured one."""
        stretched = interval > self.dp.config.tables.sweep_interval
        if stretched != self._stretched:
            self._stretched = stretched
            if stretched:
                self.log(f"xlb: a sweep of {res.conns_seen} connections and {res.templates_seen} templates took "
                         f"{res.seconds:.2f} s: sweeping every {interval:.1f} s (at most a tenth of a CPU)")
            else:
                self.log(f"xlb: sweeping every {interval:g} s again")

    def _signal(self, signum, _frame):
        if signum == signal.SIGHUP:
            self._reload = True
        elif signum == signal.SIGUSR1:
            self._dump = True
        else:
            self._keep_attached = signum == signal.SIGQUIT
            self._stop = True
        self._wake.set()

    def run(self):
        """Serve until SIGINT/SIGTERM. Detaches on the way out whatever happens."""
        self._install_signals()
        try:
            interval = self.dp.config.tables.sweep_interval
            next_sweep = time.monotonic() + interval
            while not self._stop:
                self._wake.wait(max(0.0, next_sweep - time.monotonic()))
                self._wake.clear()
                if self._reload:
                    self._reload = False
                    self.reload()
                if self._health_dirty:
                    self._health_dirty = False
                    self.apply_health()
                if self._dump:
                    self._dump = False
                    with self.lock:
                        self.log(stats.render(self.dp))
                if time.monotonic() >= next_sweep:
                    res = self.tick()
                    if res is None:
                        break
                    interval = sweep_interval(self.dp.config.tables.sweep_interval, res.seconds)
                    self._say_stretch(interval, res)
                    next_sweep = time.monotonic() + interval
        finally:
            self.close()
        return self.exit_code

    def close(self):
        if self.bgp:  # withdrawn while the program still forwards what the router sends until it converges;
            self.bgp.close(withdraw=not self._keep_attached)  # SIGQUIT (an upgrade) leaves them announced
            self.bgp = None
        self.health.close()
        if self.sync:
            self.sync.close()
            self.sync = None
        if self.metrics_endpoint:
            self.metrics_endpoint.close()
            self.metrics_endpoint = None
        if self.tracer:
            self.tracer.close()
            self.tracer = None
        if self.control:
            self.control.close()
            self.control = None
        detached = False
        if self.prog:
            prog, self.prog = self.prog, None
            if self._keep_attached and prog.attached:
                prog.release()
                self.log(f"xlb: exiting with the program attached to {self.names()} and its maps pinned in "
                         f"{self.shown(self.pin_dir)}; the next `xlb run` adopts them")
            else:
                detached = prog.close()
                if detached:
                    self.log(f"xlb: detached from {self.names()}")
                if self._tail_calls:
                    self._tail_calls.unlink(missing_ok=True)
        if not self._keep_attached:
            self.sysctls.restore()
            if detached or self._made_pins:  # no program of ours left to need them (an adopted one may be)
                self._forget_neighbours()
        if self._made_pins:
            self._unpin_failed_start()
        if self._pin_lock:
            self._pin_lock.release()
            self._pin_lock = None

    def _forget_neighbours(self):
        """The neighbour entries xlb made for its reals go with the program that needed them."""
        with contextlib.suppress(XlbError):
            remove_managed(self.neighbours)
        self.neighbours = set()
