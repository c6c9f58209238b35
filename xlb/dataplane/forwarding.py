"""The interface settings bpf_fib_lookup needs, set for the daemon's life and put back after it.

bpf_fib_lookup answers BPF_FIB_LKUP_RET_FWD_DISABLED unless forwarding is on for the interface the packet came in
on: xlb turns on net.ipv4.conf.IF.forwarding and/or net.ipv6.conf.IF.forwarding for the address families its reals
use, nothing else (not net.ipv4.ip_forward, not `all`, not other interfaces). On IPv6, forwarding on an interface
stops it accepting router advertisements while accept_ra is 1 (a host relying on SLAAC would lose its default
route), so where accept_ra is 1 xlb sets it to 2 (accept them even when forwarding) first. It says so in one line,
and on exit (SIGTERM, SIGINT, a failed start) puts back each value it changed, unless someone changed it again
meanwhile. SIGQUIT leaves them: the program stays attached and still needs them (the next daemon finds them set,
does not know they were xlb's, and leaves them set when it exits). So does a daemon whose program another replaced
(`xlb run --force`, another tool): that program came while they were set and may need them.
"""
from pathlib import Path

from ..errors import KernelError

PROC_SYS = Path("/proc/sys")


def _name(path):
    return path.replace("/", ".")


class Sysctls:
    """What this daemon changed on its interfaces: {sysctl path: (value before, value set)}."""

    def __init__(self, ifname, log=print, root=PROC_SYS):
        """ifname: an interface name, or a list of them (xlb run --iface A --iface B)."""
        self.ifnames = [ifname] if isinstance(ifname, str) else list(ifname)
        self.ifname, self.log, self.root = self.ifnames[0], log, Path(root)
        self.changed = {}

    def _read(self, path):
        return (self.root / path).read_text().strip()

    def _write(self, path, value):
        (self.root / path).write_text(value)

    def need(self, families):
        """Make bpf_fib_lookup answer for these address families (4, 6) on the interface; say what changed."""
        plan = []
        for fam in sorted(families):
            for ifname in self.ifnames:
                conf = f"net/ipv{fam}/conf/{ifname}"
                if fam == 6:
                    plan.append((f"{conf}/accept_ra", {"1": "2"}))
                plan.append((f"{conf}/forwarding", {"0": "1"}))
        said = []
        for path, change in plan:
            try:
                old = self._read(path)
                if old in change:
                    self._write(path, change[old])
                    self.changed.setdefault(path, (old, change[old]))
                    said.append(f"{_name(path)}={change[old]} (was {old})")
            except OSError as exc:
                raise KernelError(f"cannot set {_name(path)}: {exc.strerror}") from exc
        if said:
            why = "bpf_fib_lookup answers only on an interface that forwards"
            if any("accept_ra" in s for s in said):
                why += "; accept_ra=2 keeps router advertisements accepted while forwarding"
            self.log(f"xlb: set {', '.join(said)}: {why}; put back when xlb exits")

    def restore(self):
        """Put back what need() changed (not what someone changed since). Safe twice."""
        said = []
        for path, (old, new) in reversed(list(self.changed.items())):
            try:
                if self._read(path) == new:
                    self._write(path, old)
                    said.append(f"{_name(path)}={old}")
            except OSError:
                pass  # the interface went away: nothing to put back
        self.changed = {}
        if said:
            self.log(f"xlb: put back {', '.join(said)}")
