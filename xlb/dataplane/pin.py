"""Pinned maps: where they live, whether their layout is ours, and replacing the attached program atomically.

`xlb run` pins the data plane's maps under one directory per interface (bpf/maps.h XLB_MAP, -DXLB_PIN_DIR), so a
restarted daemon (after a crash, `kill -9` or an upgrade) adopts the live connections, templates and counters,
and the attached program keeps forwarding while no daemon runs.

Never misread a map: next to the maps a one-entry array ``xlb_layout`` holds a digest of every shared struct
layout (the ctypes mirrors, checked against bcc by tests/test_structs.py), the enums and flags of bpf/consts.h
and LAYOUT_VERSION. Before loading, :func:`check_layout` compares it; after loading (bcc reuses a pinned map
whatever its sizes), :func:`check_sizes` compares each adopted map's key/value sizes and entries with what the
program declares. Any difference refuses, before anything is attached or written, pointing at ``--fresh``.

Talks to the kernel through libbpf (ctypes), which bcc depends on anyway.
"""
import ctypes as ct
import ctypes.util
import errno
import fcntl
import hashlib
import json
import os
from pathlib import Path

from . import bpffs
from .links import attached_prog
from . import structs as S
from .bpffs import BPF_ROOT
from .bpffs import mount_bpffs as ensure_bpffs  # noqa: F401  (tests mount it in the init mount namespace)
from ..errors import KernelError

PIN_ROOT = BPF_ROOT / "xlb"  # as seen from the mount namespace the machine booted with
LAYOUT_MAP = "xlb_layout"
LAYOUT_VERSION = 1  # bump on a change of meaning that keeps every size (e.g. a field's units)
BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_PERCPU_ARRAY = 6
XDP_FLAGS_REPLACE = 1 << 4


class PinError(KernelError):
    """Pinned state that cannot be adopted, or a pin directory in use."""


# ---------------------------------------------------------------------------------------------------------------
# libbpf


class _MapInfo(ct.Structure):
    _fields_ = [("type", ct.c_uint32), ("id", ct.c_uint32), ("key_size", ct.c_uint32),
                ("value_size", ct.c_uint32), ("max_entries", ct.c_uint32), ("map_flags", ct.c_uint32),
                ("name", ct.c_char * 16), ("rest", ct.c_uint8 * 64)]


class _ProgInfo(ct.Structure):
    _fields_ = [("type", ct.c_uint32), ("id", ct.c_uint32), ("tag", ct.c_uint8 * 8),
                ("jited_prog_len", ct.c_uint32), ("xlated_prog_len", ct.c_uint32),
                ("jited_prog_insns", ct.c_uint64), ("xlated_prog_insns", ct.c_uint64), ("load_time", ct.c_uint64),
                ("created_by_uid", ct.c_uint32), ("nr_map_ids", ct.c_uint32), ("map_ids", ct.c_uint64),
                ("name", ct.c_char * 16), ("rest", ct.c_uint8 * 160)]


class _XdpAttachOpts(ct.Structure):
    _fields_ = [("sz", ct.c_size_t), ("old_prog_fd", ct.c_int)]


_lib = None


def _libbpf():
    global _lib
    if _lib is None:
        name = ctypes.util.find_library("bpf") or "libbpf.so.1"
        try:
            lib = ct.CDLL(name, use_errno=True)
        except OSError as exc:
            raise KernelError(f"libbpf is not installed ({exc}); it comes with bcc (Debian package libbpf1)") from exc
        lib.bpf_obj_get.argtypes = [ct.c_char_p]
        lib.bpf_obj_pin.argtypes = [ct.c_int, ct.c_char_p]
        lib.bpf_obj_get_info_by_fd.argtypes = [ct.c_int, ct.c_void_p, ct.POINTER(ct.c_uint32)]
        lib.bpf_map_create.argtypes = [ct.c_int, ct.c_char_p, ct.c_uint32, ct.c_uint32, ct.c_uint32, ct.c_void_p]
        lib.bpf_map_lookup_elem.argtypes = [ct.c_int, ct.c_void_p, ct.c_void_p]
        lib.bpf_map_update_elem.argtypes = [ct.c_int, ct.c_void_p, ct.c_void_p, ct.c_uint64]
        lib.bpf_prog_get_fd_by_id.argtypes = [ct.c_uint32]
        lib.bpf_xdp_attach.argtypes = [ct.c_int, ct.c_int, ct.c_uint32, ct.POINTER(_XdpAttachOpts)]
        _lib = lib
    return _lib


def _check(ret, what):
    """libbpf returns -errno (1.x) or -1 with errno set."""
    if ret < 0:
        err = -ret if ret != -1 else ct.get_errno()
        raise KernelError(f"{what}: {os.strerror(err)}")
    return ret


def obj_get(path):
    return _check(_libbpf().bpf_obj_get(str(path).encode()), f"cannot open pinned object {bpffs.shown(path)}")


def map_info(fd):
    info = _MapInfo()
    n = ct.c_uint32(ct.sizeof(info))
    _check(_libbpf().bpf_obj_get_info_by_fd(fd, ct.byref(info), ct.byref(n)), "bpf_obj_get_info_by_fd (map)")
    return info


def pinned_map_info(path):
    fd = obj_get(path)
    try:
        return map_info(fd)
    finally:
        os.close(fd)


def prog_map_ids(prog_id):
    """(name, map ids) of the loaded program with this id."""
    lib = _libbpf()
    fd = _check(lib.bpf_prog_get_fd_by_id(prog_id), f"cannot open XDP program id {prog_id}")
    try:
        info = _ProgInfo()
        n = ct.c_uint32(ct.sizeof(info))
        _check(lib.bpf_obj_get_info_by_fd(fd, ct.byref(info), ct.byref(n)), "bpf_obj_get_info_by_fd (prog)")
        ids = (ct.c_uint32 * info.nr_map_ids)()
        info2 = _ProgInfo(nr_map_ids=info.nr_map_ids, map_ids=ct.addressof(ids))
        n = ct.c_uint32(ct.sizeof(info2))
        _check(lib.bpf_obj_get_info_by_fd(fd, ct.byref(info2), ct.byref(n)), "bpf_obj_get_info_by_fd (prog)")
        return info.name.decode(errors="replace"), set(ids)
    finally:
        os.close(fd)


def xdp_replace(ifindex, new_fd, old_prog_id, mode_flags):
    """Attach new_fd in place of the program old_prog_id in one step (XDP_FLAGS_REPLACE): the interface is never
    without a program, and if someone swapped the program meanwhile the kernel refuses (EEXIST)."""
    lib = _libbpf()
    old_fd = _check(lib.bpf_prog_get_fd_by_id(old_prog_id), f"cannot open XDP program id {old_prog_id}")
    try:
        opts = _XdpAttachOpts(sz=ct.sizeof(_XdpAttachOpts), old_prog_fd=old_fd)
        ret = lib.bpf_xdp_attach(ifindex, new_fd, mode_flags | XDP_FLAGS_REPLACE, ct.byref(opts))
        _check(ret, "replacing the attached XDP program")
    finally:
        os.close(old_fd)


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


def layout_description():
    """Everything a pinned map's meaning depends on besides its sizes: struct layouts, enums, flags."""
    structs = {}
    for name, (key, leaf) in sorted(S.MAP_TYPES.items()):
        for role, t in (("key", key), ("leaf", leaf)):
            if t is not None:
                structs[f"{name}.{role}"] = _struct_layout(t)
    flags = {k: v for k, v in sorted(S.DEFINES.items()) if "_F_" in k or k.startswith("XLB_AF_")}
    return {"version": LAYOUT_VERSION, "structs": structs, "enums": S.ENUMS, "flags": flags}


def _struct_layout(t):
    out = [t.__name__, ct.sizeof(t)]
    for fname, ftype in t._fields_:
        f = getattr(t, fname)
        out.append([fname, f.offset, f.size, _struct_layout(ftype) if hasattr(ftype, "_fields_") else None])
    return out


def _digest(description):
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).digest()


def layout_digest():
    return _digest(layout_description())


# Layout records of earlier xlb releases whose pins this one adopts, each with the pinned maps that must be made anew
# (contents that may start again without losing a connection or a template) and what the operator loses. When a
# change of layout keeps the state maps' meaning, add the record of the release before it here.
EARLIER_LAYOUTS = {
    # cd41803 (stop 10): rr positions per CPU (rr_pos a per-CPU array of __u32); 19 verdict reasons.
    bytes.fromhex("cb704e610207d353bfb6b0a226ff5c76a8591432b6c0c39e5fc19550ff92aca3"): {
        "rr_pos": "rr and wrr start their rotations again, now one per service instead of per CPU",
        "verdicts": "the verdict counters start from zero, with two more reasons",
    },
    # feccb74: before NAT, ICMP, fragments, lblc (struct real's pad now its port and method, both 0 for DR;
    # flow_entry's pad its method, unpinned; new maps nat_revs, svc_out_stats, real_out_stats, lblc, tunnels are
    # made beside the adopted ones); 21 reasons.
    bytes.fromhex("b46b04e0b65d0dd6286c664195e1b5251a3b5cdf48c71894f300e5c7991c1da3"): {
        "verdicts": "the verdict counters start from zero, with the new reasons (NAT, tunnels, ICMP, fragments, "
                    "health, SIP)",
    },
    # 18a3dd3: before the SYN-flood defense (bpf/halfopen.h: new maps half_open, persist_half, nat_half, conn_events
    # are made beside the adopted ones; a new settings flag and enum) and two more reasons (NAT ICMP errors out, a
    # tunnel's frag-needed without DF).
    bytes.fromhex("cbac9807fe2ab84c6908e360a9c8b2db4b1d109f71f71813bc7a47d740f94a89"): {
        "verdicts": "the verdict counters start from zero, with the new reasons (NAT ICMP errors, tunnels)",
    },
    # d49dd53: before the NAT reply cache (bpf/replycache.h: a new unpinned map, reply_cache); every pinned map is
    # adopted as it is.
    bytes.fromhex("45e9e35b8d136458b7830ce17e6eefa8b6c941544f076ed17f0a8c98458aa558"): {},
}


def _migrate(pin_dir, recorded, log):
    """Bring the pins of an earlier release's layout (EARLIER_LAYOUTS) up to this one; True if done. The maps it
    lists are unpinned (a program still attached keeps its own reference) and the loader makes them anew; every
    other map is adopted as it is."""
    remake = EARLIER_LAYOUTS.get(recorded)
    if remake is None:
        return False
    for name in remake:
        (Path(pin_dir) / name).unlink(missing_ok=True)
    write_layout(pin_dir)
    if log:
        anew = "; ".join(f"{name}: {lost}" for name, lost in remake.items()) or "nothing (new maps only)"
        log(f"xlb: {bpffs.shown(pin_dir)}: pinned by the previous xlb's layout; connections and templates are "
            "kept, made anew: " + anew)
    return True


TAIL_CALLS_PREFIX = "progs-"


def pinned_maps(pin_dir):
    """Names of the state maps pinned in pin_dir (the layout record and programs' tail-call arrays aside)."""
    d = Path(pin_dir)
    if not d.is_dir():
        return []
    return sorted(p.name for p in d.iterdir() if p.name != LAYOUT_MAP and not p.name.startswith(TAIL_CALLS_PREFIX))


def obj_pin(fd, path):
    _check(_libbpf().bpf_obj_pin(fd, str(path).encode()), f"pinning {bpffs.shown(path)}")


def prog_id(fd):
    info = _ProgInfo()
    n = ct.c_uint32(ct.sizeof(info))
    _check(_libbpf().bpf_obj_get_info_by_fd(fd, ct.byref(info), ct.byref(n)), "bpf_obj_get_info_by_fd (prog)")
    return info.id


def pin_tail_calls(prog, pin_dir):
    """Pin the program's tail-call array as progs-ID. The kernel empties a prog array when its last user
    reference goes: without this pin, a program left attached by a daemon that died would lose its tail calls
    (new connections). Each program keeps its own array; :func:`drop_tail_calls` removes the others'."""
    path = Path(pin_dir) / f"{TAIL_CALLS_PREFIX}{prog_id(prog.fd)}"
    obj_pin(prog["progs"].map_fd, path)
    return path


def drop_tail_calls(pin_dir, keep=None):
    """Unpin the tail-call arrays of programs that are no longer attached (all but ``keep``)."""
    for p in Path(pin_dir).glob(f"{TAIL_CALLS_PREFIX}*"):
        if p != keep:
            p.unlink()


def read_layout(pin_dir):
    path = Path(pin_dir) / LAYOUT_MAP
    if not path.exists():
        return None
    fd = obj_get(path)
    try:
        key, val = ct.c_uint32(0), (ct.c_uint8 * 32)()
        _check(_libbpf().bpf_map_lookup_elem(fd, ct.byref(key), ct.byref(val)), f"reading {bpffs.shown(path)}")
        return bytes(val)
    finally:
        os.close(fd)


def write_layout(pin_dir):
    """Record this xlb's layout digest next to the maps (created once, with the maps)."""
    path = Path(pin_dir) / LAYOUT_MAP
    if path.exists():
        path.unlink()  # a record with no maps beside it (they were unpinned by hand)
    lib = _libbpf()
    fd = _check(lib.bpf_map_create(BPF_MAP_TYPE_ARRAY, LAYOUT_MAP.encode(), 4, 32, 1, None), "creating xlb_layout")
    try:
        key, val = ct.c_uint32(0), (ct.c_uint8 * 32).from_buffer_copy(layout_digest())
        _check(lib.bpf_map_update_elem(fd, ct.byref(key), ct.byref(val), 0), "writing xlb_layout")
        _check(lib.bpf_obj_pin(fd, str(path).encode()), f"pinning {bpffs.shown(path)}")
    finally:
        os.close(fd)


FRESH_HINT = ("start with --fresh to discard them (established connections and templates are lost), "
              "or run the xlb that made them")


def check_layout(pin_dir, log=None):
    """Before loading: refuse pinned maps made with another data layout, or bring the previous layout's up to
    date where that loses nothing that matters (:func:`_migrate`). Returns the names pinned there."""
    names = pinned_maps(pin_dir)
    if not names:
        return []
    recorded = read_layout(pin_dir)
    if recorded is None:
        raise PinError(f"{bpffs.shown(pin_dir)} holds pinned maps without a layout record (an older or foreign "
                       f"xlb); {FRESH_HINT}")
    if recorded != layout_digest():
        if not _migrate(pin_dir, recorded, log):
            raise PinError(f"the maps pinned in {bpffs.shown(pin_dir)} were made by an xlb whose data layout "
                           f"differs from this one's (structs, enums or flags in bpf/); {FRESH_HINT}")
        names = pinned_maps(pin_dir)
    return names


def check_sizes(prog, pin_dir, names):
    """After loading: bcc reuses a pinned map whatever its sizes; refuse if one is not what the program declares
    (a changed [tables] size, say). Nothing is attached or written yet, so refusing changes nothing."""
    problems = []
    for name in names:
        if name not in S.MAP_TYPES:
            continue  # a map this version no longer has: left alone
        table = prog[name]
        leaf = getattr(table, "sLeaf", table.Leaf)  # bcc widens a per-CPU leaf to one per CPU
        want = (ct.sizeof(table.Key), ct.sizeof(leaf), table.max_entries)
        info = map_info(table.map_fd)
        have = (info.key_size, info.value_size, info.max_entries)
        if have != want:
            problems.append(f"{name} has key/value/entries {have[0]}/{have[1]}/{have[2]}, "
                            f"this program needs {want[0]}/{want[1]}/{want[2]}")
    if problems:
        raise PinError(f"cannot adopt the maps pinned in {bpffs.shown(pin_dir)}: {'; '.join(problems)} "
                       f"(table sizes are fixed while the maps live); {FRESH_HINT}")


def pinned_ids(pin_dir):
    """Kernel ids of the maps pinned in pin_dir: a program using one of them is xlb's own."""
    ids = set()
    d = Path(pin_dir)
    names = [p.name for p in d.iterdir() if p.name != LAYOUT_MAP] if d.is_dir() else []
    for name in names:
        try:
            ids.add(pinned_map_info(Path(pin_dir) / name).id)
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
        if prog is not None and prog_map_ids(prog)[1] & pinned_ids(d):
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
