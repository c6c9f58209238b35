"""A small eBPF assembler, the BTF a program with callbacks needs, and the bpf(2) commands to load and run it (no
bcc import here).

For programs bcc cannot load: bcc 0.26 does not relocate a callback's address (`bpf_for_each_map_elem`'s second
argument, a BPF_PSEUDO_FUNC load), and a program with subprograms needs BTF func info. Here a program is written
as named instructions with labels (`Asm`), each subprogram starts at a label given to `Asm.func`, and `load`
builds the BTF (one `int f(void *, ...)` prototype per subprogram), loads it and the program.
Encodings: the kernel's Documentation/bpf/standardization/instruction-set.rst and include/uapi/linux/btf.h.
"""
import ctypes as ct
import os
import struct

from ..errors import KernelError
from .bpfsys import SYS_BPF

_BPF_MAP_CREATE, _BPF_PROG_LOAD, _BPF_PROG_TEST_RUN, _BPF_BTF_LOAD = 0, 5, 10, 18
BPF_PROG_TYPE_XDP = 6
MAP_HASH, MAP_ARRAY = 1, 2
BPF_F_NO_PREALLOC = 1
BPF_F_MMAPABLE = 1 << 10

# instruction classes, sizes, modes, operations, sources
_LDX, _ST, _STX, _JMP, _ALU64 = 0x01, 0x02, 0x03, 0x05, 0x07
SIZES = {1: 0x10, 2: 0x08, 4: 0x00, 8: 0x18}   # B, H, W, DW
_MEM, _IMM_DW = 0x60, 0x18                     # BPF_MEM; BPF_LD | BPF_IMM | BPF_DW (the 16-byte load)
ALU = {"add": 0x00, "sub": 0x10, "mul": 0x20, "or": 0x40, "and": 0x50, "lsh": 0x60, "rsh": 0x70, "xor": 0xa0, "mov": 0xb0}
JUMPS = {"ja": 0x00, "jeq": 0x10, "jgt": 0x20, "jge": 0x30, "jne": 0x50, "jsgt": 0x60, "jsge": 0x70,
         "jlt": 0xa0, "jle": 0xb0, "jslt": 0xc0, "jsle": 0xd0}
_CALL, _EXIT = 0x80, 0x90
_K, _X = 0x00, 0x08
PSEUDO_MAP_FD, PSEUDO_FUNC = 1, 4              # src_reg of a 16-byte load: a map fd, a subprogram's address
FP = 10                                         # the frame pointer

# helper ids (enum bpf_func_id)
MAP_LOOKUP_ELEM, MAP_UPDATE_ELEM, MAP_DELETE_ELEM, FOR_EACH_MAP_ELEM = 1, 2, 3, 164

_libc = ct.CDLL(None, use_errno=True)
_libc.syscall.restype = ct.c_long


def _insn(code, dst=0, src=0, off=0, imm=0):
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


class Asm:
    """Instructions in order, with labels. Registers are ints 0-10; a jump's or a call's target is a label."""

    def __init__(self):
        self.items = []        # (kind, payload): ("insn", bytes) | ("jump", (code, dst, src, imm, label)) | ...
        self.labels = {}       # label -> instruction index
        self.funcs = []        # (label, name, number of arguments): the subprograms, in order
        self.size = 0          # instructions so far (a 16-byte load counts two)

    def label(self, name):
        if name in self.labels:
            raise ValueError(f"label {name!r} twice")
        self.labels[name] = self.size

    def func(self, name, nargs):
        """Start a subprogram (the first is the program's entry); `nargs` pointer arguments, for its BTF."""
        self.label(name)
        self.funcs.append((name, nargs))

    def _add(self, kind, payload, slots=1):
        self.items.append((kind, payload))
        self.size += slots

    def alu(self, op, dst, src=None, imm=0):
        """64-bit dst op= src (a register) or imm."""
        self._add("insn", _insn(_ALU64 | ALU[op] | (_X if src is not None else _K), dst, src or 0, 0, imm))

    def mov(self, dst, src=None, imm=0):
        self.alu("mov", dst, src, imm)

    def load(self, size, dst, src, off):
        """dst = *(u{8*size} *)(src + off)"""
        self._add("insn", _insn(_LDX | _MEM | SIZES[size], dst, src, off))

    def store(self, size, dst, off, src=None, imm=0):
        """*(u{8*size} *)(dst + off) = src (a register) or imm."""
        if src is None:
            self._add("insn", _insn(_ST | _MEM | SIZES[size], dst, 0, off, imm))
        else:
            self._add("insn", _insn(_STX | _MEM | SIZES[size], dst, src, off))

    def jump(self, op, target, dst=0, src=None, imm=0):
        """if (dst op src-or-imm) goto target; op "ja" jumps always."""
        code = _JMP | JUMPS[op] | (_X if src is not None else _K)
        self._add("jump", (code, dst, src or 0, imm, target))

    def call(self, helper):
        self._add("insn", _insn(_JMP | _CALL, imm=helper))

    def exit(self, imm=None):
        """return imm (or r0 as it is)"""
        if imm is not None:
            self.mov(0, imm=imm)
        self._add("insn", _insn(_JMP | _EXIT))

    def map_fd(self, dst, fd):
        """dst = the map of file descriptor fd (the kernel turns the fd into its address)."""
        self._add("insn", _insn(_IMM_DW, dst, PSEUDO_MAP_FD, 0, fd) + _insn(0), slots=2)

    def func_addr(self, dst, target):
        """dst = the address of subprogram `target` (a callback)."""
        self._add("func", (dst, target), slots=2)

    def assemble(self):
        out, at = [], 0
        for kind, p in self.items:
            if kind == "insn":
                out.append(p)
            elif kind == "jump":
                code, dst, src, imm, target = p
                out.append(_insn(code, dst, src, self.labels[target] - at - 1, imm))
            else:
                dst, target = p
                out.append(_insn(_IMM_DW, dst, PSEUDO_FUNC, 0, self.labels[target] - at - 1) + _insn(0))
            at += len(out[-1]) // 8
        return b"".join(out)


# -- BTF: one FUNC per subprogram, as the verifier asks of a program with callbacks -----------------------------
_BTF_KIND_INT, _BTF_KIND_PTR, _BTF_KIND_FUNC, _BTF_KIND_FUNC_PROTO = 1, 2, 12, 13


def func_btf(funcs):
    """BTF bytes declaring `int <name>(void *a0, ...)` for each (name, nargs) of `funcs`; returns (bytes, type ids of
    the FUNCs in order)."""
    strings = bytearray(b"\0")

    def name(s):
        strings.extend(s.encode() + b"\0")
        return len(strings) - len(s) - 1

    types = [struct.pack("<III", name("int"), _BTF_KIND_INT << 24, 4) + struct.pack("<I", 1 << 24 | 32),  # id 1
             struct.pack("<III", 0, _BTF_KIND_PTR << 24, 0)]                                            # id 2: void *
    ids = []
    for fname, nargs in funcs:
        proto = struct.pack("<III", 0, _BTF_KIND_FUNC_PROTO << 24 | nargs, 1)
        proto += b"".join(struct.pack("<II", name(f"a{i}"), 2) for i in range(nargs))
        types.append(proto)
        types.append(struct.pack("<III", name(fname), _BTF_KIND_FUNC << 24, len(types)))  # static linkage
        ids.append(len(types))
    body = b"".join(types)
    header = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(body), len(body), len(strings))
    return header + body + bytes(strings), ids


# -- bpf(2) ------------------------------------------------------------------------------------------------------
class _BtfLoadAttr(ct.Structure):
    _fields_ = [("btf", ct.c_uint64), ("btf_log_buf", ct.c_uint64), ("btf_size", ct.c_uint32),
                ("btf_log_size", ct.c_uint32), ("btf_log_level", ct.c_uint32), ("_rest", ct.c_uint8 * 44)]


class _MapCreateAttr(ct.Structure):
    _fields_ = [("map_type", ct.c_uint32), ("key_size", ct.c_uint32), ("value_size", ct.c_uint32),
                ("max_entries", ct.c_uint32), ("map_flags", ct.c_uint32), ("inner_map_fd", ct.c_uint32),
                ("numa_node", ct.c_uint32), ("map_name", ct.c_char * 16), ("_rest", ct.c_uint8 * 64)]


class _ProgLoadAttr(ct.Structure):
    # union bpf_attr, the BPF_PROG_LOAD member, up to func_info_cnt; the rest stays zero
    _fields_ = [("prog_type", ct.c_uint32), ("insn_cnt", ct.c_uint32), ("insns", ct.c_uint64),
                ("license", ct.c_uint64), ("log_level", ct.c_uint32), ("log_size", ct.c_uint32),
                ("log_buf", ct.c_uint64), ("kern_version", ct.c_uint32), ("prog_flags", ct.c_uint32),
                ("prog_name", ct.c_char * 16), ("prog_ifindex", ct.c_uint32), ("expected_attach_type", ct.c_uint32),
                ("prog_btf_fd", ct.c_uint32), ("func_info_rec_size", ct.c_uint32), ("func_info", ct.c_uint64),
                ("func_info_cnt", ct.c_uint32), ("_rest", ct.c_uint8 * 84)]


class _TestAttr(ct.Structure):
    _fields_ = [("prog_fd", ct.c_uint32), ("retval", ct.c_uint32), ("data_size_in", ct.c_uint32),
                ("data_size_out", ct.c_uint32), ("data_in", ct.c_uint64), ("data_out", ct.c_uint64),
                ("repeat", ct.c_uint32), ("duration", ct.c_uint32), ("_rest", ct.c_uint8 * 48)]


def _bpf(cmd, attr):
    r = _libc.syscall(SYS_BPF, cmd, ct.byref(attr), ct.sizeof(attr))
    return r if r >= 0 else -ct.get_errno()


def map_create(map_type, key_size, value_size, max_entries, flags=0, name="xlb"):
    """A new map's fd (the caller closes it)."""
    fd = _bpf(_BPF_MAP_CREATE, _MapCreateAttr(map_type=map_type, key_size=key_size, value_size=value_size,
                                              max_entries=max_entries, map_flags=flags,
                                              map_name=name.encode()[:15]))
    if fd < 0:
        raise KernelError(f"creating map {name!r} failed: {os.strerror(-fd)}")
    return fd


def _log_tail(log):
    return "\n".join(log.value.decode(errors="replace").strip().splitlines()[-20:])


def load(asm, name, prog_type=BPF_PROG_TYPE_XDP, license=b"GPL"):
    """Load `asm` (an Asm whose subprograms were each started with Asm.func) with its BTF func info; returns the
    program fd (the caller closes it; the BTF is held by the program). A refusal raises KernelError with the end
    of the verifier's log."""
    btf, ids = func_btf(asm.funcs)
    log = ct.create_string_buffer(1 << 16)
    buf = ct.create_string_buffer(btf, len(btf))
    btf_fd = _bpf(_BPF_BTF_LOAD, _BtfLoadAttr(btf=ct.addressof(buf), btf_size=len(btf), btf_log_buf=ct.addressof(log),
                                              btf_log_size=len(log), btf_log_level=1))
    if btf_fd < 0:
        raise KernelError(f"the kernel refused the BTF of {name!r}: {os.strerror(-btf_fd)}\n{_log_tail(log)}")
    try:
        code = asm.assemble()
        insns = ct.create_string_buffer(code, len(code))
        info = (ct.c_uint32 * (2 * len(ids)))(*[v for (label, _), i in zip(asm.funcs, ids)
                                                for v in (asm.labels[label], i)])
        lic = ct.create_string_buffer(license)
        for log_size in (0, 1 << 24):
            log = ct.create_string_buffer(log_size) if log_size else None
            attr = _ProgLoadAttr(prog_type=prog_type, insn_cnt=len(code) // 8, insns=ct.addressof(insns),
                                 license=ct.addressof(lic), log_level=1 if log_size else 0, log_size=log_size,
                                 log_buf=ct.addressof(log) if log else 0, prog_name=name.encode()[:15],
                                 prog_btf_fd=btf_fd, func_info_rec_size=8, func_info=ct.addressof(info),
                                 func_info_cnt=len(ids))
            fd = _bpf(_BPF_PROG_LOAD, attr)
            if fd >= 0:
                return fd
            if log is not None:
                raise KernelError(f"the kernel refused program {name!r}: {os.strerror(-fd)}\n{_log_tail(log)}")
        raise AssertionError("unreachable")
    finally:
        os.close(btf_fd)


def test_run(prog_fd, data=bytes(64)):
    """Run a loaded program once (BPF_PROG_TEST_RUN) on `data`; returns its return value."""
    buf = ct.create_string_buffer(data, len(data))
    attr = _TestAttr(prog_fd=prog_fd, data_size_in=len(data), data_in=ct.addressof(buf), repeat=1)
    rc = _bpf(_BPF_PROG_TEST_RUN, attr)
    if rc < 0:
        raise KernelError(f"running program fd {prog_fd} failed: {os.strerror(-rc)}")
    return attr.retval
