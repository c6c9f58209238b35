"""libbpf through ctypes (bcc depends on it anyway): the object calls the pin directory, the layout record and
the program's atomic replacement need: open, pin and describe pinned maps, the maps a loaded program uses, and
XDP_FLAGS_REPLACE. Errors are KernelErrors naming what failed.
"""
import ctypes as ct
import ctypes.util
import os

from . import bpffs
from ..errors import KernelError

BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_PERCPU_ARRAY = 6
XDP_FLAGS_REPLACE = 1 << 4


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


def lib():
    """libbpf, loaded once, with the argument types of the calls xlb makes."""
    global _lib
    if _lib is None:
        name = ctypes.util.find_library("bpf") or "libbpf.so.1"
        try:
            cdll = ct.CDLL(name, use_errno=True)
        except OSError as exc:
            raise KernelError(f"libbpf is not installed ({exc}); it comes with bcc (Debian package libbpf1)") from exc
        cdll.bpf_obj_get.argtypes = [ct.c_char_p]
        cdll.bpf_obj_pin.argtypes = [ct.c_int, ct.c_char_p]
        cdll.bpf_obj_get_info_by_fd.argtypes = [ct.c_int, ct.c_void_p, ct.POINTER(ct.c_uint32)]
        cdll.bpf_map_create.argtypes = [ct.c_int, ct.c_char_p, ct.c_uint32, ct.c_uint32, ct.c_uint32, ct.c_void_p]
        cdll.bpf_map_lookup_elem.argtypes = [ct.c_int, ct.c_void_p, ct.c_void_p]
        cdll.bpf_map_update_elem.argtypes = [ct.c_int, ct.c_void_p, ct.c_void_p, ct.c_uint64]
        cdll.bpf_prog_get_fd_by_id.argtypes = [ct.c_uint32]
        cdll.bpf_xdp_attach.argtypes = [ct.c_int, ct.c_int, ct.c_uint32, ct.POINTER(_XdpAttachOpts)]
        _lib = cdll
    return _lib


def check(ret, what):
    """libbpf returns -errno (1.x) or -1 with errno set."""
    if ret < 0:
        err = -ret if ret != -1 else ct.get_errno()
        raise KernelError(f"{what}: {os.strerror(err)}")
    return ret


def obj_get(path):
    return check(lib().bpf_obj_get(str(path).encode()), f"cannot open pinned object {bpffs.shown(path)}")


def map_info(fd):
    info = _MapInfo()
    n = ct.c_uint32(ct.sizeof(info))
    check(lib().bpf_obj_get_info_by_fd(fd, ct.byref(info), ct.byref(n)), "bpf_obj_get_info_by_fd (map)")
    return info


def pinned_map_info(path):
    fd = obj_get(path)
    try:
        return map_info(fd)
    finally:
        os.close(fd)


def prog_map_ids(prog_id):
    """(name, map ids) of the loaded program with this id."""
    bpf = lib()
    fd = check(bpf.bpf_prog_get_fd_by_id(prog_id), f"cannot open XDP program id {prog_id}")
    try:
        info = _ProgInfo()
        n = ct.c_uint32(ct.sizeof(info))
        check(bpf.bpf_obj_get_info_by_fd(fd, ct.byref(info), ct.byref(n)), "bpf_obj_get_info_by_fd (prog)")
        ids = (ct.c_uint32 * info.nr_map_ids)()
        info2 = _ProgInfo(nr_map_ids=info.nr_map_ids, map_ids=ct.addressof(ids))
        n = ct.c_uint32(ct.sizeof(info2))
        check(bpf.bpf_obj_get_info_by_fd(fd, ct.byref(info2), ct.byref(n)), "bpf_obj_get_info_by_fd (prog)")
        return info.name.decode(errors="replace"), set(ids)
    finally:
        os.close(fd)


def xdp_replace(ifindex, new_fd, old_prog_id, mode_flags):
    """Attach new_fd in place of the program old_prog_id in one step (XDP_FLAGS_REPLACE): the interface is never
    without a program, and if someone swapped the program meanwhile the kernel refuses (EEXIST)."""
    bpf = lib()
    old_fd = check(bpf.bpf_prog_get_fd_by_id(old_prog_id), f"cannot open XDP program id {old_prog_id}")
    try:
        opts = _XdpAttachOpts(sz=ct.sizeof(_XdpAttachOpts), old_prog_fd=old_fd)
        ret = bpf.bpf_xdp_attach(ifindex, new_fd, mode_flags | XDP_FLAGS_REPLACE, ct.byref(opts))
        check(ret, "replacing the attached XDP program")
    finally:
        os.close(old_fd)


def obj_pin(fd, path):
    check(lib().bpf_obj_pin(fd, str(path).encode()), f"pinning {bpffs.shown(path)}")


def prog_id(fd):
    info = _ProgInfo()
    n = ct.c_uint32(ct.sizeof(info))
    check(lib().bpf_obj_get_info_by_fd(fd, ct.byref(info), ct.byref(n)), "bpf_obj_get_info_by_fd (prog)")
    return info.id
