"""Raw bpf(2) commands that bcc does not offer in the shape we need (no bcc import here):

- ``lookup_batch``: read a whole map (or the first n entries of an array) into two flat byte buffers, for
  scrapes of thousands of per-CPU counters and for counting entries without a Python object per entry;
  ``lookup_batch_into`` reads into the caller's buffers (numpy arrays) instead, for the sweep's 1M entries;
- ``update_batch``: write many entries from two numpy arrays in one BPF_MAP_UPDATE_BATCH (apply's reals, services,
  tables and zeroed counters: no ctypes object per entry);
- ``delete_batch``: delete many keys in BPF_MAP_DELETE_BATCH calls, past keys already gone (the sweep's);
- ``rewrite_u64``: read-modify-write one field of many entries (the sweep's template holds);
- ``prog_load_xdp``: load an XDP program from instruction bytes (the trace build, relinked to the live maps).
"""
import ctypes as ct
import errno
import os
import platform

from ..errors import KernelError

# bpf(2)'s number (asm/unistd.h) by machine
SYS_BPF = {"x86_64": 321, "aarch64": 280, "riscv64": 280, "ppc64le": 361, "s390x": 351}.get(platform.machine(), 321)
_BPF_MAP_LOOKUP_ELEM = 1
_BPF_MAP_UPDATE_ELEM = 2
_BPF_PROG_LOAD = 5
_BPF_MAP_LOOKUP_BATCH = 24
_BPF_MAP_UPDATE_BATCH = 26
_BPF_MAP_DELETE_BATCH = 27
BPF_PROG_TYPE_XDP = 6
BPF_PSEUDO_MAP_FD = 1
BPF_LD_IMM64 = 0x18

_libc = ct.CDLL(None, use_errno=True)
_libc.syscall.restype = ct.c_long


def _bpf(cmd, attr):
    if _libc.syscall(SYS_BPF, cmd, ct.byref(attr), ct.sizeof(attr)) < 0:
        return -ct.get_errno()
    return 0


class _BatchAttr(ct.Structure):
    # union bpf_attr, the BPF_MAP_*_BATCH member
    _fields_ = [("in_batch", ct.c_uint64), ("out_batch", ct.c_uint64), ("keys", ct.c_uint64),
                ("values", ct.c_uint64), ("count", ct.c_uint32), ("map_fd", ct.c_uint32),
                ("elem_flags", ct.c_uint64), ("flags", ct.c_uint64)]


def _batch_calls(map_fd, key_size, limit, chunk, place):
    """The BPF_MAP_LOOKUP_BATCH loop over up to `limit` entries, `chunk` per call: place(total, want) returns the
    addresses (keys, values) where the next call may write `want` entries; yields each call's count."""
    chunk = max(1, min(chunk, limit))
    token = ct.create_string_buffer(max(key_size, 8))  # batch position, opaque (a key or a bucket index)
    total = 0
    first = True
    while total < limit:
        want = min(chunk, limit - total)
        kaddr, vaddr = place(total, want)
        attr = _BatchAttr(in_batch=0 if first else ct.addressof(token), out_batch=ct.addressof(token),
                          keys=kaddr, values=vaddr, count=want, map_fd=map_fd)
        rc = _bpf(_BPF_MAP_LOOKUP_BATCH, attr)
        if rc == -errno.ENOSPC and attr.count == 0 and chunk < limit - total:
            # A hash bucket holds more entries than `chunk`: retry from the same place with room for them all.
            chunk = limit - total
            continue
        if rc < 0 and rc != -errno.ENOENT:
            raise KernelError(f"reading map fd {map_fd} in batches failed: {os.strerror(-rc)}")
        first = False
        total += attr.count
        if attr.count:
            yield attr.count
        if rc == -errno.ENOENT:
            return  # the end of the map


def iter_batches(map_fd, key_size, value_size, limit, chunk=4096):
    """Read up to `limit` entries of a map in chunks: yields (keys, values, n), flat buffers of n keys and n
    values in map order, reused between chunks (copy what you keep).

    value_size is what the kernel copies per entry: for per-CPU maps, round_up(size, 8) * possible CPUs.
    For an array, the first `limit` indexes; for a hash, every entry (limit = max_entries)."""
    bufs = [None, None]

    def place(_total, want):
        if bufs[0] is None or want * key_size > len(bufs[0]):  # first call, or a bucket larger than chunk
            bufs[:] = ct.create_string_buffer(want * key_size), ct.create_string_buffer(want * value_size)
        return ct.addressof(bufs[0]), ct.addressof(bufs[1])

    for n in _batch_calls(map_fd, key_size, limit, chunk, place):
        yield bufs[0], bufs[1], n


def lookup_batch_into(map_fd, keys, values, chunk=65536):
    """Read up to len(keys) entries into `keys` and `values`, contiguous numpy arrays of the map's key and value
    dtypes and of one length, packed from the start; returns how many were read.

    One copy, the kernel's: a sweep of a 1M-entry table reads straight into its arrays."""
    if len(keys) != len(values) or not (keys.flags.c_contiguous and values.flags.c_contiguous):
        raise ValueError("keys and values must be contiguous arrays of one length")
    if not len(keys):
        return 0
    ks, vs = keys.itemsize, values.itemsize
    kbase, vbase = keys.ctypes.data, values.ctypes.data
    return sum(_batch_calls(map_fd, ks, len(keys), chunk, lambda total, _want: (kbase + total * ks,
                                                                                  vbase + total * vs)))


def lookup_batch(map_fd, key_size, value_size, limit, chunk=4096):
    """Up to `limit` entries as (keys bytes, values bytes, n), all in one pair of buffers."""
    ks, vs, total = [], [], 0
    for keys, values, n in iter_batches(map_fd, key_size, value_size, limit, chunk):
        ks.append(keys.raw[:key_size * n])
        vs.append(values.raw[:value_size * n])
        total += n
    return b"".join(ks), b"".join(vs), total


def update_batch(map_fd, keys, values):
    """map[keys[i]] = values[i] for every i, one BPF_MAP_UPDATE_BATCH: `keys` and `values` are contiguous numpy
    arrays of one length whose items are the map's key and value (for a per-CPU map, one value per possible CPU,
    each rounded up to 8 bytes). Returns how many were written."""
    if len(keys) != len(values) or not (keys.flags.c_contiguous and values.flags.c_contiguous):
        raise ValueError("keys and values must be contiguous arrays of one length")
    if not len(keys):
        return 0
    attr = _BatchAttr(keys=keys.ctypes.data, values=values.ctypes.data, count=len(keys), map_fd=map_fd)
    rc = _bpf(_BPF_MAP_UPDATE_BATCH, attr)
    if rc < 0:
        raise KernelError(f"writing {len(keys)} entries of map fd {map_fd} in a batch failed after "
                          f"{attr.count}: {os.strerror(-rc)}")
    return len(keys)


def delete_batch(map_fd, keys):
    """Delete every key of `keys` (a contiguous numpy array of the map's keys) that the map holds: one
    BPF_MAP_DELETE_BATCH, and one more past each key found gone (the kernel stops at the first; an LRU map may
    have evicted it since it was read). Returns how many were deleted."""
    if not keys.flags.c_contiguous:
        raise ValueError("keys must be a contiguous array")
    base, ks, n = keys.ctypes.data, keys.itemsize, len(keys)
    done = deleted = 0
    while done < n:
        attr = _BatchAttr(keys=base + done * ks, count=n - done, map_fd=map_fd)
        rc = _bpf(_BPF_MAP_DELETE_BATCH, attr)
        deleted += attr.count
        done += attr.count
        if rc == -errno.ENOENT:
            done += 1  # this key was gone already
        elif rc < 0:
            raise KernelError(f"deleting entries of map fd {map_fd} in a batch failed: {os.strerror(-rc)}")
    return deleted


class _ElemAttr(ct.Structure):
    # union bpf_attr, the BPF_MAP_*_ELEM member
    _fields_ = [("map_fd", ct.c_uint32), ("_pad", ct.c_uint32), ("key", ct.c_uint64), ("value", ct.c_uint64),
                ("flags", ct.c_uint64)]


def map_update_u32(map_fd, key, value):
    """map[key] = value for a map of u32 keys and values (a prog array: value = a program fd)."""
    k, v = ct.c_uint32(key), ct.c_uint32(value)
    rc = _bpf(_BPF_MAP_UPDATE_ELEM, _ElemAttr(map_fd=map_fd, key=ct.addressof(k), value=ct.addressof(v)))
    if rc < 0:
        raise KernelError(f"updating map fd {map_fd}[{key}] failed: {os.strerror(-rc)}")


def rewrite_u64(map_fd, keys, value_size, offset, values):
    """For each key of `keys` (a contiguous numpy array of the map's keys): read its value, set the u64 at byte
    `offset` to values[i] and write the value back, one entry at a time, so that fields the data plane changed
    since an earlier batch read are kept (bcc's get and set, without a Python object per entry). Entries gone
    in between are skipped. Returns how many were written."""
    val = ct.create_string_buffer(value_size)
    field = ct.c_uint64.from_buffer(val, offset)
    attr = _ElemAttr(map_fd=map_fd, value=ct.addressof(val))
    base, ks = keys.ctypes.data, keys.itemsize
    written = 0
    for i, v in enumerate(values.tolist()):
        attr.key = base + i * ks
        attr.flags = 0
        rc = _bpf(_BPF_MAP_LOOKUP_ELEM, attr)
        if rc == -errno.ENOENT:
            continue
        if rc == 0:
            field.value = v
            rc = _bpf(_BPF_MAP_UPDATE_ELEM, attr)
        if rc < 0:
            raise KernelError(f"rewriting an entry of map fd {map_fd} failed: {os.strerror(-rc)}")
        written += 1
    return written


class _ProgLoadAttr(ct.Structure):
    # union bpf_attr, the BPF_PROG_LOAD member, up to expected_attach_type; the rest stays zero
    _fields_ = [("prog_type", ct.c_uint32), ("insn_cnt", ct.c_uint32), ("insns", ct.c_uint64),
                ("license", ct.c_uint64), ("log_level", ct.c_uint32), ("log_size", ct.c_uint32),
                ("log_buf", ct.c_uint64), ("kern_version", ct.c_uint32), ("prog_flags", ct.c_uint32),
                ("prog_name", ct.c_char * 16), ("prog_ifindex", ct.c_uint32), ("expected_attach_type", ct.c_uint32),
                ("_rest", ct.c_uint8 * 96)]


def prog_load_xdp(insns: bytes, name="xlb", license=b"GPL"):
    """Load XDP instructions; return the program fd (the caller closes it). On a verifier refusal the error
    carries the end of the verifier's log."""
    buf = ct.create_string_buffer(bytes(insns), len(insns))
    lic = ct.create_string_buffer(license)
    for log_size in (0, 1 << 24):
        log = ct.create_string_buffer(log_size) if log_size else None
        attr = _ProgLoadAttr(prog_type=BPF_PROG_TYPE_XDP, insn_cnt=len(insns) // 8, insns=ct.addressof(buf),
                             license=ct.addressof(lic), log_level=1 if log_size else 0, log_size=log_size,
                             log_buf=ct.addressof(log) if log else 0, prog_name=name.encode()[:15])
        fd = _libc.syscall(SYS_BPF, _BPF_PROG_LOAD, ct.byref(attr), ct.sizeof(attr))
        if fd >= 0:
            return fd
        err = ct.get_errno()
        if log is not None:
            tail = log.value.decode(errors="replace").strip().splitlines()[-20:]
            raise KernelError(f"the kernel refused program {name!r}: {os.strerror(err)}\n" + "\n".join(tail))
    raise AssertionError("unreachable")


def relink_maps(insns: bytes, fd_map: dict) -> bytes:
    """The instructions with every map reference (BPF_LD_IMM64 with src_reg BPF_PSEUDO_MAP_FD) to a map fd in
    fd_map replaced by fd_map[fd]. A reference to an fd not in fd_map is an error (it would dangle)."""
    out = bytearray(insns)
    i = 0
    while i + 16 <= len(out):
        if out[i] == BPF_LD_IMM64:
            if out[i + 1] >> 4 == BPF_PSEUDO_MAP_FD:
                fd = int.from_bytes(out[i + 4:i + 8], "little", signed=True)
                if fd not in fd_map:
                    raise KernelError(f"instruction {i // 8} references map fd {fd}, which has no live twin")
                out[i + 4:i + 8] = fd_map[fd].to_bytes(4, "little", signed=True)
            i += 16  # a wide instruction: two slots
        else:
            i += 8
    return bytes(out)
