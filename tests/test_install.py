"""A real install: the wheel built from this checkout, installed (not editable) into a fresh venv, runs.

The wheel is built offline from a copy of the sources (`pip wheel --no-deps --no-build-isolation`, with the suite's
setuptools), and installed with `--no-deps` into a venv of its own that sees Debian's bcc the way `make setup`
links it. The runtime dependencies (pyroute2, prometheus-client, numpy) come from the suite's venv through a .pth
line, as installing them from an index would need the network; that venv holds no xlb of its own (its editable
install is a finder that only its own .pth starts), and the tests check that `xlb` is the installed copy.
"""
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import pytest
from conftest import needs_root

from harness import lb_host

REPO = Path(__file__).resolve().parent.parent
DEBIAN_BCC = Path("/usr/lib/python3/dist-packages/bcc")  # the Makefile's BCC_SRC
SAMPLE = REPO / "tools" / "xlb.toml.example"  # the sample /etc/xlb/IFACE.toml
SUBCOMMANDS = ("run", "check", "status", "trace", "top", "demo")


def _run(argv, **kw):
    r = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=300, **kw)
    assert r.returncode == 0, f"{' '.join(map(str, argv))}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r


def _copy_sources(dst):
    """The checkout without what a build or a run leaves in it (venv, git, caches, build output)."""
    skip = shutil.ignore_patterns(".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache")
    shutil.copytree(REPO, dst, ignore=lambda d, names: skip(d, names) | ({"out"} if d.endswith("bench") else set()))


class Install:
    """The wheel and the venv it is installed in."""

    def __init__(self, tmp):
        self.tmp = tmp
        src = tmp / "src"
        _copy_sources(src)
        _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
              "-w", tmp / "wheels", src])
        (self.wheel,) = (tmp / "wheels").glob("xlb-*.whl")
        self.venv = tmp / "venv"
        _run([sys.executable, "-m", "venv", "--without-pip", self.venv])
        self.python = self.venv / "bin" / "python"
        _run([sys.executable, "-m", "pip", "--python", self.python, "install", "-q", "--no-deps", "--no-index",
              self.wheel])
        site = Path(_run([self.python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
                    .stdout.strip())
        (site / "bcc").symlink_to(DEBIAN_BCC)  # as `make bcc-link` does
        (site / "xlb-test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
        self.xlb = self.venv / "bin" / "xlb"
        self.env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}

    def run(self, *argv, prefix=()):
        """The installed `xlb` with these arguments, from a directory outside the checkout."""
        return _run([*prefix, self.xlb, *argv], cwd=self.tmp, env=self.env)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    return Install(tmp_path_factory.mktemp("install"))


def test_the_wheel_holds_the_c_sources_and_every_package(installed):
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    sources = sorted(p.name for p in (REPO / "bpf").glob("*.[ch]"))
    assert "xlb.c" in sources
    assert [n for n in sources if f"xlb/bpf/{n}" not in names] == []
    # setup.cfg lists the packages (xlb.bpf is mapped to bpf/): a subpackage added under xlb/ must be listed too.
    packages = [p.parent.relative_to(REPO).as_posix() for p in (REPO / "xlb").rglob("__init__.py")]
    assert [p for p in packages if f"{p}/__init__.py" not in names] == []


def test_installed_xlb_finds_its_sources_in_the_installed_package(installed):
    r = _run([installed.python, "-c", "import xlb, xlb.dataplane.structs as s; print(xlb.__file__); print(s.BPF_DIR)"],
             cwd=installed.tmp, env=installed.env)
    module, bpf_dir = map(Path, r.stdout.split())
    site = installed.venv / "lib"
    assert module.is_relative_to(site) and bpf_dir == module.parent / "bpf", r.stdout
    assert (bpf_dir / "xlb.c").is_file() and (bpf_dir / "consts.h").is_file()


def test_installed_xlb_help_and_check(installed):
    out = installed.run("--help").stdout
    assert [c for c in SUBCOMMANDS if c not in out] == []
    r = installed.run("check", SAMPLE)
    assert r.stdout.startswith(f"{SAMPLE}: OK ("), r.stdout


@needs_root
def test_installed_xlb_compiles_and_loads_its_program(installed, tmp_path):
    """`xlb run` from the installed package in a namespace of its own: it compiles bpf/xlb.c from the package,
    attaches, answers `xlb trace` (the trace build, compiled from the package too) and detaches on SIGTERM."""
    log = tmp_path / "xlb.log"
    daemon = None
    try:
        with lb_host(tmp_path) as host:  # its namespaces and pins go, whatever happens
            inside = ("nsenter", f"--net=/run/netns/{host.lb}")
            with open(log, "w") as out:
                daemon = subprocess.Popen([*inside, installed.xlb, *host.argv("generic", "--pin-dir", host.pin_dir)],
                                          stdout=out, stderr=subprocess.STDOUT, cwd=installed.tmp, env=installed.env)
            deadline = time.monotonic() + 120
            while "xlb: attached to eth0" not in log.read_text():
                assert daemon.poll() is None, log.read_text()
                assert time.monotonic() < deadline, f"no attach within 120 s:\n{log.read_text()}"
                time.sleep(0.2)
            r = installed.run("trace", "203.0.113.7", "198.51.100.10:80", "--socket", host.tmp / "xlb.sock",
                              prefix=inside)
            assert "real:       198.18.0.11 (by the scheduler)" in r.stdout, r.stdout
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(60) == 0, log.read_text()
            assert "xlb: detached from eth0" in log.read_text()
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.kill()
            daemon.wait()
