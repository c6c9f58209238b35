"""xlb.dataplane.kheaders: the merged Debian header tree bcc compiles against when the running kernel has none."""

import os

import pytest

from xlb.dataplane import kheaders
from xlb.errors import KernelError


@pytest.fixture
def fake_host(tmp_path, monkeypatch):
    """A host with no build tree for the running kernel and an empty /usr/src."""
    # setenv first so monkeypatch records the original and restores it, whatever ensure_kernel_headers sets.
    monkeypatch.setenv("BCC_KERNEL_SOURCE", "")
    monkeypatch.delenv("BCC_KERNEL_SOURCE")
    monkeypatch.setattr(kheaders, "MODULES_DIR", tmp_path / "modules")
    monkeypatch.setattr(kheaders, "SRC_DIR", tmp_path / "src")
    monkeypatch.setattr(kheaders, "CACHE_DIR", tmp_path / "cache")
    (tmp_path / "src").mkdir()
    return tmp_path


def debian_headers(src, version):
    common, arch = src / f"linux-headers-{version}-common", src / f"linux-headers-{version}-amd64"
    (common / "include" / "uapi" / "linux").mkdir(parents=True)
    (common / "include" / "uapi" / "linux" / "bpf.h").write_text("/* common */\n")
    (common / "Makefile").write_text("common\n")
    (arch / "include" / "generated").mkdir(parents=True)
    (arch / "include" / "generated" / "autoconf.h").write_text("/* arch */\n")
    (arch / "Makefile").write_text("arch\n")


def test_nothing_to_do_when_bcc_kernel_source_is_set(fake_host, monkeypatch):
    monkeypatch.setenv("BCC_KERNEL_SOURCE", "/somewhere")
    assert kheaders.ensure_kernel_headers(log=None) is None


def test_nothing_to_do_when_the_running_kernel_has_a_build_tree(fake_host):
    (fake_host / "modules" / os.uname().release / "build" / "include").mkdir(parents=True)
    assert kheaders.ensure_kernel_headers(log=None) is None
    assert "BCC_KERNEL_SOURCE" not in os.environ


def test_merges_the_newest_debian_headers_once(fake_host):
    debian_headers(fake_host / "src", "6.1.0-9")
    debian_headers(fake_host / "src", "6.1.0-56")
    lines = []
    tree = kheaders.ensure_kernel_headers(log=lines.append)
    assert tree == str(fake_host / "cache" / "6.1.0-56") == os.environ["BCC_KERNEL_SOURCE"]
    assert len(lines) == 1 and "6.1.0-56" in lines[0] and os.uname().release in lines[0]
    merged = fake_host / "cache" / "6.1.0-56"
    assert (merged / "include" / "uapi" / "linux" / "bpf.h").read_text() == "/* common */\n"
    assert (merged / "include" / "generated" / "autoconf.h").is_symlink()
    assert (merged / "Makefile").read_text() == "arch\n"  # the arch tree wins, as with cp -rsf
    assert [p.name for p in (fake_host / "cache").iterdir()] == ["6.1.0-56"]  # no temp dirs left

    os.environ.pop("BCC_KERNEL_SOURCE")
    assert kheaders.ensure_kernel_headers(log=None) == tree  # cached tree reused


def test_no_headers_at_all_is_an_actionable_error(fake_host):
    with pytest.raises(KernelError, match="make setup"):
        kheaders.ensure_kernel_headers(log=None)
