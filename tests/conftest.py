import os
import tempfile

import pytest

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (BPF, network namespaces)")


@pytest.fixture(scope="session")
def bench():
    """The loaded program in its namespace, shared by the packet tests (each test resets the maps)."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    from harness import Bench
    # Per-CPU maps (nh_cache, the flow cache, counters) are read for the CPU BPF_PROG_TEST_RUN runs on: stay on one.
    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cpus)})
    b = Bench()
    try:
        yield b
    finally:
        b.close()
        os.sched_setaffinity(0, cpus)


def pytest_configure(config):
    """A SIGTERM (CI timeout, `timeout`, kill) unwinds like Ctrl-C, so fixtures and `with` blocks still remove
    their namespaces, links and XDP programs."""
    import signal
    main = os.getpid()

    def _interrupt(signum, frame):
        if os.getpid() != main:  # a forked helper (pyroute2, a lab server): die as it would have
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, _interrupt)


@pytest.fixture
def log_path():
    fd, path = tempfile.mkstemp(prefix="xlb-it-", suffix=".log")
    os.close(fd)
    yield path
    os.unlink(path)
