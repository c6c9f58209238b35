"""The node-wide settings: the config's [sync] and [bgp] (read, refused with the field and line named, dumped back) and
`xlb run --sync` refusing what cannot work before anything is attached or pinned."""
import os

import pytest

from harness import lb_host
from xlb.config import dump, read
from xlb.config.model import Bgp, Sync
from xlb.dataplane import pin
from xlb.errors import ConfigError


SECTIONS = {"sync": ('[sync]\nmode = "both"\niface = "eth1"\nsyncid = 7\n',
                     Sync(mode="both", iface="eth1", syncid=7, refresh=60.0)),
            "bgp": ('[bgp]\nbird_socket = "/run/bird/bird.ctl"\nbird_include = "/etc/bird/xlb-vips.conf"\n',
                    Bgp(bird_socket="/run/bird/bird.ctl", bird_include="/etc/bird/xlb-vips.conf"))}


@pytest.mark.parametrize("section", SECTIONS)
def test_node_sections_are_read_and_dumped_back(section):
    text, expected = SECTIONS[section]
    cfg = read.parse(text, "x.toml")
    assert getattr(cfg, section) == expected
    assert getattr(read.parse(dump.dumps(dump.to_tree(cfg)), "again"), section) == expected
    assert getattr(read.parse("", "x.toml"), section) == type(expected)()
    assert f"[{section}]" not in dump.dumps(dump.to_tree(read.parse("", "x.toml")))


@pytest.mark.parametrize("text, where, words", [
    ('[sync]\niface = "eth1"\n', "line 1: sync.mode", "mode is required"),
    ('[sync]\nmode = "slave"\niface = "eth1"\n', "line 2: sync.mode", "one of: master, backup, both"),
    ('[sync]\nmode = "master"\n', "sync.iface", "must name the sync interface"),
    ('[sync]\nmode = "master"\niface = "a/b"\n', "line 3: sync.iface", "must name the sync interface"),
    ('[sync]\nmode = "master"\niface = "eth1"\nsyncid = 256\n', "line 4: sync.syncid", "0..255"),
    ('[sync]\nmode = "master"\niface = "eth1"\nrefresh = 0\n', "line 4: sync.refresh", "1..3600"),
    ('[sync]\nmode = "master"\niface = "eth1"\nsync_id = 1\n', "sync.sync_id", "did you mean 'syncid'"),
    *[(f'[sync]\nmode = "both"\niface = "eth1"\n{line}\n', where, words) for line, where, words in [
        ('mcast_group = "198.51.100.1"', "line 4: sync.mcast_group", "multicast address"),
        ('mcast_group = "ff02::1%eth0"', "line 4: sync.mcast_group", "multicast address"),
        ("mcast_group = 5", "line 4: sync.mcast_group", "multicast address"),
        ("mcast_port = 0", "line 4: sync.mcast_port", "1..65535"),
        ("mcast_ttl = 256", "line 4: sync.mcast_ttl", "1..255"),
        ("maxlen = 40", "line 4: sync.maxlen", "80..65507"),
        ('mcast_group = "ff02::8848"\nmaxlen = 65500', "line 5: sync.maxlen", "0..65487")]],
    ('[bgp]\nbird_socket = "/run/bird/bird.ctl"\n', "bgp.bird_include", "bird_include is required with bird_socket"),
    ('[bgp]\nbird_include = "/etc/bird/x.conf"\n', "bgp.bird_socket", "bird_socket is required with bird_include"),
    ('[bgp]\nbird_socket = "bird.ctl"\nbird_include = "/etc/bird/x.conf"\n', "line 2: bgp.bird_socket",
     "absolute file path"),
    ('[bgp]\nbird_socket = "/run/b.ctl"\nbird_include = 3\n', "line 3: bgp.bird_include", "absolute file path"),
    ('[bgp]\nbird_socket = "/run/b"\nbird_include = "/run/b"\n', "bgp.bird_include", "control socket's path"),
    ('[bgp]\nbird_sock = "/run/b"\n', "bgp.bird_sock", "did you mean 'bird_socket'"),
])
def test_bad_sync_and_bgp_settings_name_the_field(text, where, words):
    with pytest.raises(ConfigError) as ei:
        read.parse(text, "x.toml")
    assert where in str(ei.value) and words in str(ei.value), str(ei.value)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_a_start_with_a_missing_sync_interface_is_refused_and_leaves_nothing(tmp_path):
    with lb_host(tmp_path) as host:
        out = tmp_path / "refused.log"
        assert host.run_once(out, host.argv("generic", "--sync", "master", "--sync-iface", "nosuch0")) == 1
        text = out.read_text()
        assert "xlb: error: sync interface nosuch0: no such interface" in text, text
        assert host.xdp() == (None, None)
        assert not pin.netns_pin_root(host.lb).exists()
        # A master sends from the interface's IPv4 address (lo has only host-scope ones): it says what it lacks.
        out = tmp_path / "noaddr.log"
        assert host.run_once(out, host.argv("generic", "--sync", "master", "--sync-iface", "lo")) == 1
        assert "sync interface lo has no IPv4 address to send sync messages from" in out.read_text()
        assert host.xdp() == (None, None)


@pytest.mark.parametrize("args, words", [
    (["--sync", "master"], "--sync needs --sync-iface IF"),
    (["--sync-iface", "eth1"], "--sync-iface and --syncid need --sync"),
    (["--sync", "backup", "--sync-iface", "eth1", "--syncid", "300"], "--syncid must be 0..255"),
])
def test_run_refuses_incomplete_sync_options(tmp_path, capsys, args, words):
    from xlb.cli import main
    cfg = tmp_path / "x.toml"
    cfg.write_text("")
    with pytest.raises(SystemExit) as ei:
        main(["run", "--iface", "eth0", "--config", str(cfg), *args])
    assert ei.value.code == 2 and words in capsys.readouterr().err


def test_sync_group_options_are_read_with_the_kernels_defaults():
    base = '[sync]\nmode = "both"\niface = "eth1"\n'
    assert read.parse(base).sync.mcast_group == "224.0.0.81"
    cfg = read.parse(base + 'mcast_group = "FF02::8848"\nmcast_port = 9000\nmcast_ttl = 3\nmaxlen = 1400\n')
    assert (cfg.sync.mcast_group, cfg.sync.mcast_port, cfg.sync.mcast_ttl, cfg.sync.maxlen) == (
        "ff02::8848", 9000, 3, 1400)
    assert read.parse(dump.dumps(dump.to_tree(cfg)), "again").sync == cfg.sync
