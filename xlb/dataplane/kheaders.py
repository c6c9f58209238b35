"""Kernel headers for bcc when the running kernel has none installed.

bcc compiles our C at load time against ``/lib/modules/$(uname -r)/build``. On hosts running a kernel that
Debian did not build (cloud or CI kernels), that tree does not exist. XDP programs use only UAPI headers
(``linux/bpf.h``, ``linux/if_ether.h``, ...), which are stable across kernel versions, so Debian's
``linux-headers-*`` for any installed version will do. Debian splits them into ``-common`` and ``-amd64``
trees; bcc wants one tree, so we build a merged symlink tree once and point ``BCC_KERNEL_SOURCE`` at it.

Call :func:`ensure_kernel_headers` before the first ``bcc.BPF(...)``. Imports no bcc.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from xlb.errors import KernelError

SRC_DIR = Path("/usr/src")
MODULES_DIR = Path("/lib/modules")
CACHE_DIR = Path("/var/cache/xlb/kernel-headers")
_DEBIAN_COMMON = re.compile(r"^linux-headers-(?P<version>.+)-common$")


def _version_key(version):
    """Sort key for Debian ABI strings such as ``6.1.0-56``: numeric parts compare as numbers."""
    return [int(p) if p.isdigit() else p for p in re.split(r"[.\-+~]", version)]


def _debian_header_pairs(src_dir, arch="amd64"):
    """(version, common_dir, arch_dir) for every complete Debian header pair, newest first."""
    pairs = []
    if not src_dir.is_dir():
        return pairs
    for common in src_dir.iterdir():
        m = _DEBIAN_COMMON.match(common.name)
        if not m or not common.is_dir():
            continue
        version = m.group("version")
        arch_dir = src_dir / f"linux-headers-{version}-{arch}"
        if (arch_dir / "include").is_dir():
            pairs.append((version, common, arch_dir))
    pairs.sort(key=lambda p: _version_key(p[0]), reverse=True)
    return pairs


def _build_merged_tree(common, arch_dir, target):
    """Create ``target`` as ``cp -rs common/. T; cp -rsf arch/. T``, atomically (build aside, then rename)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it 0700; the tree is for every user of bcc
        for src, force in ((common, False), (arch_dir, True)):
            cmd = ["cp", "-rs" + ("f" if force else ""), f"{src}/.", str(tmp)]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                raise KernelError(f"could not build kernel header tree {target}: "
                                  f"{' '.join(cmd)}: {res.stderr.strip()}")
        try:
            os.rename(tmp, target)
        except OSError:
            # A concurrent run renamed its tree into place first; theirs is as good as ours.
            if not (target / "include").is_dir():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def ensure_kernel_headers(log=print) -> str | None:
    """Make sure bcc can find kernel headers; return the tree now in ``BCC_KERNEL_SOURCE``, or None.

    Returns None when nothing needed doing (``BCC_KERNEL_SOURCE`` already set, or the running kernel's
    own build tree exists). Raises KernelError when no usable headers are installed at all.
    """
    if os.environ.get("BCC_KERNEL_SOURCE"):
        return None
    release = os.uname().release
    if (MODULES_DIR / release / "build" / "include").is_dir():
        return None

    pairs = _debian_header_pairs(SRC_DIR)
    if not pairs:
        raise KernelError(
            f"no kernel headers for the running kernel {release} and no Debian linux-headers-* "
            f"in {SRC_DIR}; bcc cannot compile the data plane. "
            f"Install linux-headers-amd64 (apt-get install linux-headers-amd64) or run `make setup`.")
    version, common, arch_dir = pairs[0]
    target = CACHE_DIR / version
    if not (target / "include").is_dir():
        try:
            _build_merged_tree(common, arch_dir, target)
        except OSError as e:
            raise KernelError(f"could not build kernel header tree {target}: {e}; "
                              f"set BCC_KERNEL_SOURCE to a kernel header tree instead") from e
    os.environ["BCC_KERNEL_SOURCE"] = str(target)
    if log is not None:
        log(f"xlb: no kernel headers for {release}; using Debian linux-headers {version} "
            f"(XDP uses only UAPI headers)")
    return str(target)
