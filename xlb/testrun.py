"""BPF_PROG_TEST_RUN through the raw bpf(2) syscall: run a loaded XDP program on a packet we give it.

Used by the packet fixtures, `xlb trace` and bench/. Needs only the program's fd (no bcc import here).
"""
import ctypes as ct
import os
from dataclasses import dataclass

from .errors import KernelError

_SYS_BPF = 321  # x86_64
_BPF_PROG_TEST_RUN = 10
BPF_F_TEST_XDP_LIVE_FRAMES = 1 << 1

XDP_ACTIONS = {0: "XDP_ABORTED", 1: "XDP_DROP", 2: "XDP_PASS", 3: "XDP_TX", 4: "XDP_REDIRECT"}

_libc = ct.CDLL(None, use_errno=True)
_libc.syscall.restype = ct.c_long


class _TestAttr(ct.Structure):
    # union bpf_attr, the BPF_PROG_TEST_RUN member (include/uapi/linux/bpf.h)
    _fields_ = [("prog_fd", ct.c_uint32), ("retval", ct.c_uint32), ("data_size_in", ct.c_uint32),
                ("data_size_out", ct.c_uint32), ("data_in", ct.c_uint64), ("data_out", ct.c_uint64),
                ("repeat", ct.c_uint32), ("duration", ct.c_uint32), ("ctx_size_in", ct.c_uint32),
                ("ctx_size_out", ct.c_uint32), ("ctx_in", ct.c_uint64), ("ctx_out", ct.c_uint64),
                ("flags", ct.c_uint32), ("cpu", ct.c_uint32), ("batch_size", ct.c_uint32), ("_pad", ct.c_uint32)]


class _XdpMd(ct.Structure):
    _fields_ = [("data", ct.c_uint32), ("data_end", ct.c_uint32), ("data_meta", ct.c_uint32),
                ("ingress_ifindex", ct.c_uint32), ("rx_queue_index", ct.c_uint32),
                ("egress_ifindex", ct.c_uint32)]


@dataclass
class RunResult:
    action: int          # XDP action the program returned
    data: bytes          # the packet after the program ran
    duration_ns: int     # kernel-measured average per run

    @property
    def action_name(self):
        return XDP_ACTIONS.get(self.action, str(self.action))


def test_run(prog_fd, data: bytes, *, ifindex=0, repeat=1, flags=0, batch_size=0) -> RunResult:
    """Run the XDP program once (or `repeat` times on the same buffer) on `data`, as if received on `ifindex`."""
    buf_in = ct.create_string_buffer(bytes(data), len(data))
    out_size = len(data) + 256
    buf_out = ct.create_string_buffer(out_size)
    ctx = _XdpMd(data=0, data_end=len(data), ingress_ifindex=ifindex)
    attr = _TestAttr(prog_fd=prog_fd, data_size_in=len(data), data_size_out=out_size,
                     data_in=ct.addressof(buf_in), data_out=ct.addressof(buf_out), repeat=repeat,
                     ctx_size_in=ct.sizeof(ctx) if ifindex else 0, ctx_in=ct.addressof(ctx) if ifindex else 0,
                     flags=flags, batch_size=batch_size)
    if _libc.syscall(_SYS_BPF, _BPF_PROG_TEST_RUN, ct.byref(attr), ct.sizeof(attr)) < 0:
        err = ct.get_errno()
        raise KernelError(f"BPF_PROG_TEST_RUN failed: {os.strerror(err)}")
    return RunResult(attr.retval, buf_out.raw[:attr.data_size_out], attr.duration)
