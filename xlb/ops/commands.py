"""The control commands the daemon answers: one explicit table, COMMANDS, from name to fn(daemon, **args).

Each runs under the daemon's lock (Daemon.dispatch), between timer sweeps and reloads, so it sees and changes a
consistent state; it rejects bad input by raising XlbError, whose message goes back to the client, and changes
nothing then. `edit` applies operations (xlb/ops/admin.py) to the running config through DataPlane.apply, which
writes only the difference; `list` and `conns` read the maps for the ipvsadm-format listings (xlb/ops/listings.py;
xlb/ops/ipvslist.py renders them on the client side); `zero` clears counters; `save` prints the running config as
TOML that `xlb run --config` takes back; `trace` asks the trace build what it would do with a packet
(xlb/observe/trace.py); `drain` withdraws every VIP from BGP and keeps forwarding (xlb/ops/announce.py).
"""
import os
import time

from . import admin
from .parse import ident_name
from .listings import conn_entries, listing, zero
from ..dataplane.links import attached_prog, ifindex_of
from ..errors import XlbError
from ..observe import stats as xstats
from ..observe.trace import Tracer, parse_endpoint


def status(daemon):
    """Who is running where: the interface, mode, config file and what it holds."""
    cfg = daemon.config
    return {"iface": daemon.iface, "ifaces": list(daemon.ifaces), "xdp_mode": daemon.xdp_mode,
            "config": str(daemon.config_path),
            "summary": daemon.summary(cfg), "pid": os.getpid(), "runtime_edits": daemon.runtime_edits,
            "pin_dir": daemon.shown(daemon.pin_dir), "program_id": daemon.prog.attached_id if daemon.prog else None,
            "attached": all(attached_prog(i)[0] == daemon.prog.attached_id for i in daemon.ifaces),
            "program_lost": dict(daemon.program_lost), "bgp": daemon.bgp.status() if daemon.bgp else None,
            "sync": daemon.sync.status() if getattr(daemon, "sync", None) else None}


def stats(daemon):
    """Counters summed over CPUs (xlb/observe/stats.py snapshot)."""
    return xstats.snapshot(daemon.dp)


def edit(daemon, ops, source="xlb"):
    """Apply operations to the running config; all or nothing."""
    new = daemon.check_reals(admin.apply_ops(daemon.config, ops, source), daemon.config, source)
    daemon.apply_config(new)
    daemon.refresh_neighbours()
    daemon.runtime_edits += 1
    what = ", ".join(_describe(op) for op in ops) or "nothing"
    daemon.log(f"xlb: runtime edit ({source}): {what}; {daemon.summary(new)}")
    return {"summary": daemon.summary(new)}


def _describe(op):
    kind = op.get("op", "?")
    if "service" in op:
        kind += f" {ident_name(op['service'])}"
    if "address" in op:
        kind += f" {op['address']}"
    if "mark" in op and kind.startswith("mark"):
        kind += f" {op['mark']}"
    return kind


def list_services(daemon):
    return listing(daemon.dp, daemon.rates)


def health(daemon):
    """Every health-checked real's checkers, state, last result and reason (xlb list --health)."""
    return daemon.health.status()


def conns(daemon):
    return conn_entries(daemon.dp)


def zero_counters(daemon, service=None, source="xlb zero"):
    return {"zeroed": zero(daemon.dp, daemon.rates, service, source)}


def save(daemon):
    header = (f"xlb running state on {daemon.iface}, saved {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
              f"(loaded from {daemon.config_path}; {daemon.runtime_edits} runtime edits since)")
    return admin.save_text(daemon.config, header)


def trace(daemon, src, dst, proto="tcp"):
    """What the loaded program would do with a new connection src -> dst (see xlb/observe/trace.py)."""
    saddr, sport = parse_endpoint(src, "source", need_port=False)
    daddr, dport = parse_endpoint(dst, "destination", need_port=True)
    tracer = getattr(daemon, "tracer", None)
    if tracer is None:
        tracer = daemon.tracer = Tracer(daemon.prog, daemon.dp, ifindex_of(daemon.iface), log=daemon.log)
    return tracer.trace(saddr, daddr, dport, sport=sport, proto=proto)


def drain(daemon, off=False):
    """Withdraw every VIP from BGP (off: announce again); existing flows keep being forwarded."""
    if not daemon.bgp:
        raise XlbError("this daemon announces nothing to drain: start it with --bird-socket PATH --bird-include "
                       "FILE (docs/scale-out.md)")
    if not isinstance(off, bool):
        raise XlbError(f"drain: off must be true or false, got {off!r}")
    daemon.log(f"xlb: {'undrain: announcing the VIPs again' if off else 'drain: withdrawing every VIP'} "
               "(forwarding goes on)")
    return daemon.bgp.drain(on=not off)


COMMANDS = {
    "status": status,
    "stats": stats,
    "edit": edit,
    "list": list_services,
    "health": health,
    "conns": conns,
    "zero": zero_counters,
    "save": save,
    "trace": trace,
    "drain": drain,
}
