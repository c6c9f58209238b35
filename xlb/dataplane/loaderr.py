"""Why bcc could not load bpf/xlb.c, in an operator's words.

bcc raises a bare "Failed to compile BPF module" for every failure and prints the reason on fd 2, including a map
the kernel would not create. On kernels since 5.11 BPF maps are charged to the memory cgroup (RLIMIT_MEMLOCK no
longer applies), so a connection table too large for the service's MemoryMax= fails there, with ENOMEM.
A map that cannot be pinned (a read-only BPF filesystem) fails there too. `captured_stderr()` tees fd 2 while bcc loads; `explain(text)` turns such a line into the message to give.
"""
import contextlib
import os
import re
import tempfile

_MAP_FAILED = re.compile(r"could not open bpf map: (\w+), error: (.+)")
_PIN_FAILED = re.compile(r"failed to pin map: (\S+), error: (.+)")


@contextlib.contextmanager
def captured_stderr(into):
    """Run the block with fd 2 going to a file; afterwards its text is appended to `into` and written to fd 2."""
    with tempfile.TemporaryFile() as f:
        saved = os.dup(2)
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            f.seek(0)
            data = f.read()
            if data:
                os.write(2, data)
            into.append(data.decode(errors="replace"))


def explain(text):
    """The sentence for a map the kernel refused, or could not pin, in bcc's output `text`; or None."""
    m = _PIN_FAILED.search(text)
    if m is not None:
        path, why = m.groups()
        return (f"cannot pin the map {path}: {why} (the maps must be pinned on a writable BPF filesystem that "
                "outlives the daemon: mount one there read-write, or choose another with --pin-dir)")
    m = _MAP_FAILED.search(text)
    if m is None:
        return None
    name, why = m.groups()
    if "Cannot allocate memory" in why:
        return (f"the kernel refused memory for the map {name} (ENOMEM): BPF maps are charged to the memory cgroup "
                "(RLIMIT_MEMLOCK does not apply since Linux 5.11); raise the limit of xlb's cgroup (systemd "
                "MemoryMax=) or make [tables] conns/templates/flow_cache smaller (docs/reliability.md \"Faults\")")
    return f"the kernel would not create the map {name}: {why}"
