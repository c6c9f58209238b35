"""BPF_PROG_TEST_RUN through the raw bpf(2) syscall: run a loaded XDP program on a packet we give it.

Used by the packet fixtures, `xlb trace` and bench/. Needs only the program's fd (no bcc import here).
"""
import ctypes as ct
import os
import struct
from dataclasses import dataclass

from . import bpfsys
from ..errors import KernelError

def inet_checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of data, for frames synthesized for test runs (xlb trace, bench/)."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


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


class PreparedRun:
    """A test run whose buffers and bpf_attr are built once: call it as often as wanted, e.g. in loops of repeat=1
    runs where per-call allocation would dominate (bench/). Returns the kernel-measured ns per run."""

    def __init__(self, prog_fd, data: bytes, *, ifindex=0, repeat=1, flags=0, batch_size=0):
        self._in = ct.create_string_buffer(bytes(data), len(data))
        # Live frames go out through the redirect; the kernel refuses an output buffer for them.
        out_size = 0 if flags & BPF_F_TEST_XDP_LIVE_FRAMES else len(data) + 256
        self._out = ct.create_string_buffer(max(out_size, 1))
        self._ctx = _XdpMd(data=0, data_end=len(data), ingress_ifindex=ifindex)
        self._out_size = out_size
        self.attr = _TestAttr(prog_fd=prog_fd, data_size_in=len(data), data_size_out=out_size,
                              data_in=ct.addressof(self._in), data_out=ct.addressof(self._out) if out_size else 0,
                              repeat=repeat,
                              ctx_size_in=ct.sizeof(self._ctx) if ifindex else 0,
                              ctx_in=ct.addressof(self._ctx) if ifindex else 0, flags=flags, batch_size=batch_size)
        self._attr_ref = ct.byref(self.attr)
        self._attr_size = ct.sizeof(self.attr)

    def __call__(self) -> int:
        self.attr.data_size_out = self._out_size
        if _libc.syscall(_SYS_BPF, _BPF_PROG_TEST_RUN, self._attr_ref, self._attr_size) < 0:
            err = ct.get_errno()
            raise KernelError(f"BPF_PROG_TEST_RUN failed: {os.strerror(err)}")
        return self.attr.duration

    def result(self) -> RunResult:
        """The action, output and duration of the last call."""
        return RunResult(self.attr.retval, self._out.raw[:self.attr.data_size_out], self.attr.duration)


def test_run(prog_fd, data: bytes, *, ifindex=0, repeat=1, flags=0, batch_size=0) -> RunResult:
    """Run the XDP program once (or `repeat` times on the same buffer) on `data`, as if received on `ifindex`."""
    run = PreparedRun(prog_fd, data, ifindex=ifindex, repeat=repeat, flags=flags, batch_size=batch_size)
    run()
    return run.result()


# r0 = XDP_DROP; exit
_XDP_DROP_INSNS = bytes.fromhex("b700000001000000" "9500000000000000")


def live_frames_refusal():
    """None when this kernel runs BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES, else why it does not. Some
    kernels refuse it (EPERM) whatever the program does; the probe is a two-instruction XDP_DROP program run once
    on a zeroed frame in the current namespace, so nothing leaves the host either way."""
    fd = bpfsys.prog_load_xdp(_XDP_DROP_INSNS, name="xlb_live_probe")
    try:
        PreparedRun(fd, bytes(60), flags=BPF_F_TEST_XDP_LIVE_FRAMES)()
    except KernelError as exc:
        return (f"this kernel refuses BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES ({exc}; probed with a "
                f"program that only returns XDP_DROP)")
    finally:
        os.close(fd)
    return None
