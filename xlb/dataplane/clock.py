"""The kernel's tick rate (HZ), which the data plane's flow cache counts its TTL in (bpf_jiffies64: inlined by the
verifier, unlike the coarse clock's helper call; see bpf/flowcache.h). No interface tells a process HZ (USER_HZ,
sysconf's CLK_TCK, is always 100), so it is measured once per process: bpf/xlb.c's xlb_clock program returns
(jiffies, monotonic ns) and two tick boundaries a few ticks apart give the period."""
import struct

from ..errors import KernelError
from .testrun import test_run

KNOWN_HZ = (100, 250, 300, 1000)
_FRAME = bytes(64)
_cache = {}


def _sample(fd):
    res = test_run(fd, _FRAME)
    return struct.unpack_from("=QQ", res.data)


def measure_hz(sample, ticks=2, max_samples=2_000_000):
    """HZ from sample() -> (jiffies, ns): the time between two tick boundaries `ticks` apart, snapped to a usual
    HZ within 10%."""
    def next_tick(after):
        for _ in range(max_samples):
            j, ns = sample()
            if j > after:
                return j, ns
        raise KernelError("jiffies did not advance while measuring the kernel's tick rate")
    j0, _ = sample()
    j1, t1 = next_tick(j0)
    j2, t2 = next_tick(j1 + ticks - 1)
    hz = (j2 - j1) * 1e9 / (t2 - t1)
    near = min(KNOWN_HZ, key=lambda k: abs(k - hz))
    return near if abs(near - hz) <= 0.1 * near else round(hz)


def kernel_hz(prog):
    """HZ of the running kernel, measured with prog's xlb_clock once per process."""
    if "hz" not in _cache:
        _cache["hz"] = measure_hz(lambda: _sample(prog.clock_fd()))
    return _cache["hz"]
