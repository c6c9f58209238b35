"""Pinned maps: where they live, the tail-call arrays beside them, the directory's lock, `xlb clean`.

`xlb run` pins the data plane's maps under one directory per interface (bpf/maps.h XLB_MAP, -DXLB_PIN_DIR), so a
restarted daemon (after a crash, `kill -9` or an upgrade) adopts the live connections, templates and counters,
and the attached program keeps forwarding while no daemon runs.

Whether pinned maps are this xlb's (the layout record ``xlb_layout`` beside them): xlb/dataplane/layout.py. The
kernel calls: xlb/dataplane/libbpf.py.
"""
import errno
import fcntl
import os
from pathlib import Path

from . import bpffs, libbpf
from .links import attached_prog
from .bpffs import BPF_ROOT
from .bpffs import mount_bpffs as ensure_bpffs  # noqa: F401  (tests mount it in the init mount namespace)
from ..errors import KernelError

PIN_ROOT = BPF_ROOT / "xlb"  # as seen from the mount namespace the machine booted with
LAYOUT_MAP = "xlb_layout"  # the layout record (xlb/dataplane/layout.py)


class PinError(KernelError):
    """Pinned state that cannot be adopted, or a pin directory in use."""


# ---------------------------------------------------------------------------------------------------------------
# Where and whether


NETNS_RUN = Path("/run/netns")


def netns_name():
    """The name (ip netns) of this process's network namespace, or None when it has none (the host's)."""
    me = os.stat("/proc/self/ns/net")
    if NETNS_RUN.is_dir():
        for p in sorted(NETNS_RUN.iterdir()):
            try:
                st = p.stat()
            except OSError:
                continue
            if (st.st_dev, st.st_ino) == (me.st_dev, me.st_ino):
                return p.name
    return None


def netns_dir(iface, root):
    """root/IFACE, or root/netns-NAME/IFACE in a named network namespace: where the per-interface pins and control
    sockets go (the BPF filesystem and /run are shared by every network namespace of the machine, interface names
    are not)."""
    name = netns_name()
    return Path(root) / iface if name is None else Path(root) / f"netns-{name}" / iface


def default_pin_dir(iface):
    """/sys/fs/bpf/xlb/IFACE, or /sys/fs/bpf/xlb/netns-NAME/IFACE in a named network namespace, on the BPF filesystem
    that outlives the daemon (xlb/dataplane/bpffs.py: the host's, also from a private mount namespace)."""
    return netns_dir(iface, bpffs.root().path / "xlb")


TAIL_CALLS_PREFIX = "progs-"


def pinned_maps(pin_dir):
    """Names of the state maps pinned in pin_dir (the layout record and programs' tail-call arrays aside)."""
    d = Path(pin_dir)
    if not d.is_dir():
        return []
    return sorted(p.name for p in d.iterdir() if p.name != LAYOUT_MAP and not p.name.startswith(TAIL_CALLS_PREFIX))


def pin_tail_calls(prog, pin_dir):
    """Pin the program's tail-call array as progs-ID. The kernel empties a prog array when its last user
    reference goes: without this pin, a program left attached by a daemon that died would lose its tail calls
    (new connections). Each program keeps its own array; :func:`drop_tail_calls` removes the others'."""
    path = Path(pin_dir) / f"{TAIL_CALLS_PREFIX}{libbpf.prog_id(prog.fd)}"
    libbpf.obj_pin(prog["progs"].map_fd, path)
    return path


def drop_tail_calls(pin_dir, keep=None):
    """Unpin the tail-call arrays of programs that are no longer attached (all but ``keep``)."""
    for p in Path(pin_dir).glob(f"{TAIL_CALLS_PREFIX}*"):
        if p != keep:
            p.unlink()


def pinned_ids(pin_dir):
    """Kernel ids of the maps pinned in pin_dir: a program using one of them is xlb's own."""
    ids = set()
    d = Path(pin_dir)
    names = [p.name for p in d.iterdir() if p.name != LAYOUT_MAP] if d.is_dir() else []
    for name in names:
        try:
            ids.add(libbpf.pinned_map_info(Path(pin_dir) / name).id)
        except KernelError:
            pass
    return ids


def clear(pin_dir):
    """Unpin the state maps in pin_dir (--fresh); the directory stays (it carries the daemon's lock), and so do
    the tail-call arrays, which the attached program needs until it is replaced."""
    for p in Path(pin_dir).iterdir():
        if not p.name.startswith(TAIL_CALLS_PREFIX):
            p.unlink()


def remove(pin_dir):
    """Unpin everything under pin_dir and remove it (maps live on while a program or process holds them)."""
    d = Path(pin_dir)
    if not d.is_dir():
        return
    for p in d.iterdir():
        if p.is_dir():
            remove(p)
        else:
            p.unlink()
    d.rmdir()


def clean(pin_dir):
    """`xlb clean`: unpin what a stopped daemon left in pin_dir and remove it. Refuses while a daemon holds the
    directory, or while the program it left attached (SIGQUIT, kill -9) runs on those maps: that program would go
    on, but no `xlb run` could adopt its state. Returns how many maps it unpinned."""
    d, shown = Path(pin_dir), bpffs.shown(pin_dir)
    if not d.is_dir():
        raise PinError(f"nothing is pinned in {shown}")
    lock = DirLock(d).acquire()
    try:
        prog, _mode = attached_prog(d.name)  # the directory is named after the interface
        if prog is not None and libbpf.prog_map_ids(prog)[1] & pinned_ids(d):
            raise PinError(f"xlb's program on {d.name} still runs on the maps pinned in {shown} (a daemon left it "
                           f"attached): start `xlb run --iface {d.name}` and stop it with SIGTERM, or take the "
                           f"program off the interface (ip link set dev {d.name} xdp off), then clean")
        n = len(pinned_maps(d))
        remove(d)
    finally:
        lock.release()
    return n


def netns_pin_root(name):
    """/sys/fs/bpf/xlb/netns-NAME: where `xlb run` in the named network namespace pins by default."""
    return PIN_ROOT / f"netns-{name}"


class DirLock:
    """An exclusive lock on the pin directory: one daemon per set of pinned maps. Released when the process dies."""

    def __init__(self, pin_dir):
        self.pin_dir = Path(pin_dir)
        self.fd = None

    def acquire(self):
        try:
            self.pin_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            hint = " (xlb run needs root)" if exc.errno in (errno.EACCES, errno.EPERM) else ""
            raise PinError(f"cannot create the pin directory {bpffs.shown(self.pin_dir)}: "
                           f"{exc.strerror}{hint}") from None
        fd = os.open(self.pin_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise PinError(f"another xlb daemon uses the maps pinned in {bpffs.shown(self.pin_dir)}; stop it "
                               "first (or give this one another --pin-dir)") from None
            raise PinError(f"cannot lock {bpffs.shown(self.pin_dir)}: {exc.strerror}") from None
        self.fd = fd
        return self

    def release(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
