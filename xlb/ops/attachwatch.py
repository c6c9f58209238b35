"""The daemon's watch on its program (docs/operations.md, "When the program is taken off"): every sweep checks
that each interface still runs it. Taken off (the slot is empty), it is attached again and the daemon goes on;
replaced by another program, the daemon says so and exits with status 1, leaving that program and its own pinned
maps alone. And a warning when the program is attached to an interface that is down.
"""
from pyroute2 import IPRoute

from ..dataplane import libbpf
from ..dataplane.links import attached_prog
from ..dataplane.program import AttachError
from ..errors import KernelError

IFF_UP = 0x1


def warn_if_down(ifname, log):
    """Attaching to a down interface works, but it passes no traffic: say so."""
    with IPRoute() as ipr:
        link = ipr.get_links(ifname=ifname)[0]
    if not link["flags"] & IFF_UP:
        log(f"xlb: warning: {ifname} is down: the program is attached but sees no traffic until "
            f"`ip link set {ifname} up`")


class AttachWatch:
    """The Daemon's part that keeps its program on its interfaces (ops/daemon.py Daemon: its ``ifaces``, ``prog``,
    ``xdp_mode`` and ``log``; it counts ``program_lost`` and, replaced, sets ``exit_code`` and stops the daemon)."""

    def _watch_attachment(self):
        """Is our program still on every interface? Taken off: attach it again. Replaced: say so and stop (exit 1).
        Returns whether the daemon goes on."""
        return all(self._watch_one(ifname) for ifname in self.ifaces)

    def _watch_one(self, ifname):
        now, _mode = attached_prog(ifname)
        ours = self.prog.attached_id
        if now == ours:
            return True
        if now is None:
            self.program_lost["removed"] += 1
            self.log(f"xlb: warning: xlb's XDP program {ours} was taken off {ifname} (nothing attached there "
                     "now): attaching it again")
            try:
                self.prog.attach(ifname, self.xdp_mode)
            except AttachError as exc:
                self.log(f"xlb: error: cannot attach again, exiting: {exc}")
            else:
                self.log(f"xlb: attached to {ifname} again ({self.xdp_mode})")
                return True
        else:
            self.program_lost["replaced"] += 1
            try:
                name = f" ({libbpf.prog_map_ids(now)[0]})"
            except KernelError:
                name = ""
            self.log(f"xlb: error: XDP program {now}{name} replaced xlb's program {ours} on {ifname}; xlb does "
                     "not fight another tool for the interface: exiting, that program left alone, the maps left "
                     f"pinned in {self.shown(self.pin_dir)} (`xlb run --force` takes the interface back and "
                     "adopts them)")
            self.sysctls.changed = {}  # the program now attached came while forwarding was on: it may need it
        self.prog.links.pop(ifname, None)  # nothing of ours to detach there (the other interfaces: detached on exit)
        self.exit_code = 1
        self._stop = True
        return False
