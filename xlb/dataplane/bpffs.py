"""Which BPF filesystem `xlb run` pins in: one that outlives the daemon, whatever mount namespace it runs in.

In the mount namespace the machine booted with, that is /sys/fs/bpf (mounted there when it is not, as systemd,
iproute2 and Cilium do). `ip netns exec` (and `unshare -m`, some service managers) runs a command in a private mount
namespace with a /sys of its own: a bpffs mounted there dies with the process, and with it every pin, so a restart
would adopt nothing and two daemons would take two different locks. There xlb pins in the BPF filesystem of the
namespace it was started from (the host's /sys/fs/bpf), reached through a process that lives there (the nearest
ancestor whose mount namespace differs: the shell that ran `ip netns exec`, or pid 1) and held open by a directory
descriptor for the daemon's life: paths under ``/proc/self/fd/N/`` resolve to that filesystem. When the private
/sys/fs/bpf is the host's (a bind mount, as systemd's sandboxing leaves it), the ordinary path is used. When no such
filesystem can be found, `xlb run` refuses, saying why and what to pass, rather than pinning into one that vanishes.
"""
import ctypes as ct
import ctypes.util
import os
from pathlib import Path

from ..errors import KernelError

BPF_ROOT = Path("/sys/fs/bpf")
BPF_FS_MAGIC = 0xCAFE4A11


class BpffsError(KernelError):
    """No BPF filesystem that outlives the daemon."""


def _mnt_ns(pid):
    try:
        return os.stat(f"/proc/{pid}/ns/mnt").st_ino
    except OSError:
        return None


def _ppid(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def outer_process():
    """A process in the mount namespace xlb was started from, when this one is private; None when it is not: the
    nearest ancestor (up to pid 1) whose mount namespace differs from ours. Ancestors we may not look at (pid 1 of
    a VM or container with more capabilities than ours) are passed over."""
    mine = _mnt_ns("self")
    pid = _ppid(os.getpid())
    while pid >= 1:
        ns = _mnt_ns(pid)
        if ns is not None and ns != mine:
            return pid
        if pid == 1:
            break
        pid = _ppid(pid)
    return None


def fs_type(path):
    """statfs(2) f_type of path (None if it cannot be read)."""
    buf = ct.create_string_buffer(256)  # struct statfs: f_type is the first field (a long)
    libc = ct.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.statfs(str(path).encode(), buf) != 0:
        return None
    return ct.c_long.from_buffer(buf).value & 0xFFFFFFFF


def is_bpffs(path):
    return fs_type(path) == BPF_FS_MAGIC


def _mounted_here(root):
    with open("/proc/self/mounts") as f:
        return any(line.split()[1:3] == [str(root), "bpf"] for line in f)


def mount_bpffs(root=BPF_ROOT):
    """Mount the BPF filesystem at root when it is not. Returns whether it mounted."""
    if _mounted_here(root):
        return False
    libc = ct.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.mount(b"bpf", str(root).encode(), b"bpf", 0, None) != 0:
        raise BpffsError(f"cannot mount the BPF filesystem at {root}: {os.strerror(ct.get_errno())} "
                         f"(mount it: mount -t bpf bpf {root})")
    return True


REFUSAL = ("xlb runs in a private mount namespace (as `ip netns exec` makes one) and {why}: maps pinned in a "
           "BPF filesystem mounted here would vanish with this process, and a restart would lose every connection "
           "and template. Mount it on the host (`mount -t bpf bpf /sys/fs/bpf`), start xlb with "
           "`nsenter --net=/run/netns/NAME xlb run ...` (the host's mounts), or pass --pin-dir on a BPF filesystem "
           "that outlives this process")


class Root:
    """The resolved BPF filesystem root: ``path`` to use, ``shown`` to tell the operator, ``note`` (said once)."""

    def __init__(self, path, shown=None, note=None, fd=None):
        self.path, self.shown, self.note, self._fd = Path(path), shown or str(path), note, fd

    def show(self, p):
        """p as the operator knows it (/sys/fs/bpf/... rather than /proc/self/fd/N/...)."""
        s = str(p)
        return self.shown + s[len(str(self.path)):] if s.startswith(str(self.path)) else s


_root = None


def shown(p):
    """A path as the operator knows it: /sys/fs/bpf/... rather than /proc/self/fd/N/... (see Root.show)."""
    return _root.show(p) if _root else str(p)


def root():
    """The BPF filesystem to pin in (resolved once per process; see the module docstring)."""
    global _root
    if _root is None:
        _root = _resolve()
    return _root


def _resolve():
    outer = outer_process()
    if outer is None:
        mount_bpffs(BPF_ROOT)
        return Root(BPF_ROOT)
    host = Path(f"/proc/{outer}/root") / str(BPF_ROOT).lstrip("/")
    try:
        fd = os.open(host, os.O_PATH | os.O_DIRECTORY)
    except OSError as exc:
        raise BpffsError(REFUSAL.format(why=f"the host's {BPF_ROOT} cannot be reached through pid {outer} "
                                            f"({exc.strerror})")) from None
    via = f"/proc/self/fd/{fd}"
    if not is_bpffs(via):
        os.close(fd)
        raise BpffsError(REFUSAL.format(why=f"the host has no BPF filesystem at {BPF_ROOT}"))
    if is_bpffs(BPF_ROOT) and os.stat(BPF_ROOT).st_dev == os.stat(via).st_dev:
        os.close(fd)
        return Root(BPF_ROOT)  # ours is the host's (a bind mount)
    return Root(via, shown=str(BPF_ROOT), fd=fd,
                note=f"xlb: this mount namespace is private (as `ip netns exec` makes one): pinning in the host's "
                     f"{BPF_ROOT} (reached through pid {outer}), so the maps outlive this process")
