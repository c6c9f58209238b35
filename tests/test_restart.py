"""Restarts lose nothing: pinned maps, their adoption by a new daemon, layout checks, atomic program replacement.

The first tests use the packet bench (one loaded program, unpinned): a second DataPlane adopting the first one's
maps must rebuild the same ids, generations, table regions and trie state, and the next apply must keep them. The
lab tests run `xlb run` in a DR lab and `kill -9` it under live traffic.
"""
import ctypes as ct
import os
import re
import signal
import tempfile
import threading
from pathlib import Path

import pytest
from conftest import needs_root

from xlb.ops import control
from xlb.dataplane import layout, libbpf, pin
from xlb.dataplane.apply import DataPlane
from xlb.lab.demo import CLIENTS4, REALS4, VIP4, xdp_prog_id
from harness import LAB_CONFIG, LINE, DrLab
from clients import LineConnection

CONFIG_A = """
[[mark]]
mark = 1
proto = "tcp"
dst = "198.51.100.10/32"
ports = [80, 443, "8000-8002"]

[[mark]]
mark = 2
dst = "2001:db8:100::/64"

[[service]]
fwmark = 1
scheduler = "wrr"
persistence_timeout = 300

  [[service.real]]
  address = "198.18.0.11"
  weight = 2

  [[service.real]]
  address = "198.18.0.12"

[[service]]
vip = "198.51.100.20"
port = 53
proto = "udp"
scheduler = "mh"
mh_table_size = 13

  [[service.real]]
  address = "198.18.0.13"
"""


def reset(bench, toml):
    """bench.reset, and no real slots left LIVE by earlier tests (the bench reuses one program's maps; a daemon
    never leaves a removed real LIVE)."""
    reals = bench.prog["reals"]
    for i in range(reals.max_entries):
        reals[ct.c_uint32(i)] = reals.Leaf()
    return bench.reset(toml)


def state(dp):
    """Everything adopt() must rebuild, by identity."""
    return {"svc_ids": dict(dp.svc_ids.ids), "real_ids": dict(dp.real_ids.ids), "rule_ids": dict(dp.rule_ids.ids),
            "gens": {rid: g for rid, g in dp.gens.items()}, "mark_entries": dict(dp.mark_entries),
            "vips": set(dp.vips), "tables": {k: (st.id, st.key_bytes, st.table, st.region)
                                             for k, st in dp.services.items()}}


@needs_root
def test_adopt_rebuilds_the_control_plane_state(bench):
    dp = reset(bench, CONFIG_A)
    # A real removed and another added: generation 2 on a reused slot must survive adoption.
    dp.apply(bench.config(CONFIG_A.replace('address = "198.18.0.12"', 'address = "198.18.0.14"')))
    dp.release_old_tables()
    before = state(dp)
    again = DataPlane(bench.prog, dp.tables)
    found = again.adopt()
    assert found == {"services": 2, "reals": 3, "mark_rules": 2}
    after = state(again)
    assert after == before
    # What is used is not free: the next ids and slot regions do not collide with adopted ones.
    assert again.svc_ids.take(("tcp", "x", 1))[0] not in before["svc_ids"].values()
    used = [st.region for st in again.services.values()]
    free = again.slots.free
    for off, n in used:
        assert all(off + n <= fo or fo + fn <= off for fo, fn in free), (used, free)


@needs_root
def test_apply_after_adopt_writes_only_the_difference(bench):
    dp = reset(bench, CONFIG_A)
    before = state(dp)
    svc_stats = bench.prog["svc_stats"]
    leaf = svc_stats.Leaf()
    for cpu in range(len(leaf)):
        leaf[cpu].conns = 3
    svc_stats[ct.c_uint32(before["svc_ids"][("fwm", 4, 1)])] = leaf
    again = DataPlane(bench.prog, dp.tables)
    again.adopt()
    cfg = bench.config(CONFIG_A + '\n[[service]]\nvip = "198.51.100.30"\nport = 80\nproto = "tcp"\n')
    again.apply(cfg)
    after = state(again)
    for key in ("svc_ids", "real_ids", "rule_ids", "gens", "mark_entries"):
        assert {k: v for k, v in after[key].items() if k in before[key]} == before[key], key
    assert after["tables"][("fwm", 4, 1)] == before["tables"][("fwm", 4, 1)]  # same region: not rewritten
    assert again.counters("svc_stats", before["svc_ids"][("fwm", 4, 1)]).conns == 3 * len(leaf)  # counters kept


@needs_root
def test_layout_record_refuses_other_layouts():
    pin.ensure_bpffs()
    d = Path(tempfile.mkdtemp(prefix="xa-layout-", dir=pin.BPF_ROOT))
    try:
        assert layout.check_layout(d) == []
        layout.write_layout(d)
        assert layout.read_layout(d) == layout.layout_digest()
        # A map without a matching record beside it is refused, naming --fresh.
        fd = libbpf.check(libbpf.lib().bpf_map_create(libbpf.BPF_MAP_TYPE_ARRAY, b"conns", 4, 8, 1, None), "create")
        libbpf.check(libbpf.lib().bpf_obj_pin(fd, str(d / "conns").encode()), "pin")
        os.close(fd)
        assert layout.check_layout(d) == ["conns"]
        fd = libbpf.obj_get(d / pin.LAYOUT_MAP)
        key, val = ct.c_uint32(0), (ct.c_uint8 * 32)()
        libbpf.check(libbpf.lib().bpf_map_update_elem(fd, ct.byref(key), ct.byref(val), 0), "update")
        os.close(fd)
        with pytest.raises(pin.PinError, match=r"data layout differs .* start with --fresh"):
            layout.check_layout(d)
        (d / pin.LAYOUT_MAP).unlink()
        with pytest.raises(pin.PinError, match=r"without a layout record.*--fresh"):
            layout.check_layout(d)
    finally:
        pin.remove(d)


def _pin_map(d, name, map_type, value_size, entries=4):
    lib = libbpf.lib()
    fd = libbpf.check(lib.bpf_map_create(map_type, name.encode(), 4, value_size, entries, None), "create")
    try:
        libbpf.check(lib.bpf_obj_pin(fd, str(d / name).encode()), "pin")
    finally:
        os.close(fd)


def _record(d, digest):
    fd = libbpf.obj_get(d / pin.LAYOUT_MAP)
    key, val = ct.c_uint32(0), (ct.c_uint8 * 32).from_buffer_copy(digest)
    libbpf.check(libbpf.lib().bpf_map_update_elem(fd, ct.byref(key), ct.byref(val), 0), "update")
    os.close(fd)


@needs_root
@pytest.mark.parametrize("earlier", [True, False])
def test_pins_of_the_previous_release_are_adopted_and_its_changed_maps_made_anew(earlier):
    """Pins recorded by the release before this one (per-CPU rr positions, 19 verdict reasons): rr_pos and verdicts
    are unpinned (the loader makes them anew), the record updated, everything else adopted. Any other record is
    refused."""
    pin.ensure_bpffs()
    d = Path(tempfile.mkdtemp(prefix="xa-rr-", dir=pin.BPF_ROOT))
    record = next(iter(layout.EARLIER_LAYOUTS)) if earlier else bytes(32)
    logged = []
    try:
        layout.write_layout(d)
        _record(d, record)
        _pin_map(d, "conns", libbpf.BPF_MAP_TYPE_ARRAY, 8)
        _pin_map(d, "rr_pos", libbpf.BPF_MAP_TYPE_PERCPU_ARRAY, 4)
        _pin_map(d, "verdicts", libbpf.BPF_MAP_TYPE_PERCPU_ARRAY, 8)
        if not earlier:
            with pytest.raises(pin.PinError, match=r"data layout differs .* start with --fresh"):
                layout.check_layout(d, logged.append)
            assert sorted(p.name for p in d.iterdir()) == ["conns", "rr_pos", "verdicts", pin.LAYOUT_MAP]
            assert layout.read_layout(d) == record
            return
        assert layout.check_layout(d, logged.append) == ["conns"]
        assert not (d / "rr_pos").exists() and not (d / "verdicts").exists()
        assert layout.read_layout(d) == layout.layout_digest()
        assert len(logged) == 1 and "made anew: rr_pos" in logged[0] and "verdicts" in logged[0]
        assert layout.check_layout(d, logged.append) == ["conns"] and len(logged) == 1
    finally:
        pin.remove(d)


@needs_root
@pytest.mark.parametrize("record,adopted,said", [
    # 18a3dd3's layout differs by the half-open maps (half_open, persist_half, nat_half: the loader makes them
    # beside the adopted ones) and two more verdict reasons: the verdict counters are made anew.
    ("cbac9807fe2ab84c6908e360a9c8b2db4b1d109f71f71813bc7a47d740f94a89", ["conns", "nat_revs"],
     "made anew: verdicts: "),
    # d49dd53's differs only by the NAT reply cache (an unpinned map the loader makes): nothing is made anew.
    ("45e9e35b8d136458b7830ce17e6eefa8b6c941544f076ed17f0a8c98458aa558", ["conns", "nat_revs", "verdicts"],
     "made anew: nothing"),
    # ca23300's differs only by a settings flag (the half-open lookups'), which the first apply writes.
    ("8238c19468dff2e451af14bef9b04d7e7573a7a465e7aa906f78ddbfaa2333f9", ["conns", "nat_revs", "verdicts"],
     "made anew: nothing"),
], ids=["before-flood-defense", "before-reply-cache", "before-half-look"])
def test_pins_of_an_earlier_release_are_adopted(record, adopted, said):
    """The pins an earlier release recorded: its connections and NAT reverse entries are adopted, the maps its
    record lists made anew, and the log says which."""
    pin.ensure_bpffs()
    d = Path(tempfile.mkdtemp(prefix="xa-nh-", dir=pin.BPF_ROOT))
    logged = []
    try:
        layout.write_layout(d)
        _record(d, bytes.fromhex(record))
        for name in ("conns", "nat_revs", "verdicts"):
            _pin_map(d, name, libbpf.BPF_MAP_TYPE_ARRAY, 8)
        assert sorted(layout.check_layout(d, logged.append)) == adopted
        assert layout.read_layout(d) == layout.layout_digest()
        assert len(logged) == 1 and said in logged[0]
    finally:
        pin.remove(d)


def test_this_layout_is_not_an_earlier_one():
    assert layout.layout_digest() not in layout.EARLIER_LAYOUTS


def test_layout_digest_covers_struct_layouts(monkeypatch):
    from xlb.dataplane import structs as S
    d = layout.layout_digest()
    monkeypatch.setitem(S.ENUMS["xlb_conn_state"], "XLB_CS_EST", 7)
    assert layout.layout_digest() != d


# --- a live daemon, killed ------------------------------------------------------------------------------------

NAME_OF = {r: f"rs{i + 1}" for i, r in enumerate(REALS4)}


class AttachWatch:
    """Polls the interface's XDP program id until stopped; records every id seen (None = nothing attached)."""

    def __init__(self, lab):
        self.lab = lab
        self.seen = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self):
        pid = xdp_prog_id(self.lab.lb, "eth0")
        if not self.seen or self.seen[-1] != pid:
            self.seen.append(pid)

    def _run(self):
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(0.02)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()  # the state at exit, even if the poller's last look came just before the replace


def fwm_conns(lab):
    snap = control.call("stats", path=lab.socket_path)
    return next(s["conns"] for s in snap["services"] if s["service"] == "fwm/1")


@needs_root
def test_kill9_restart_keeps_connections_templates_counters(tmp_path):
    log = tmp_path / "xlb.log"
    with DrLab(prefix="xa2", line_ports=(LINE,)) as lab:
        lab.start_xlb(LAB_CONFIG, log_path=str(log))
        client, neighbour = CLIENTS4[0], CLIENTS4[1]  # one /24: one template
        sticky = lab.ask(client, VIP4, 80)
        with LineConnection(lab.cl, CLIENTS4[3], VIP4, LINE) as live:
            serving = live.ask()
            old_id = xdp_prog_id(lab.lb, "eth0")
            lab.kill_xlb()

            # No daemon: the attached program keeps forwarding with the pinned state.
            assert not lab.daemon.is_alive()
            assert xdp_prog_id(lab.lb, "eth0") == old_id
            assert live.ask() == serving
            assert lab.ask(neighbour, VIP4, 443) == sticky

            with AttachWatch(lab) as watch:
                lab.restart_xlb(log_path=str(log))
            text = log.read_text()
            assert re.search(r"xlb: adopted the maps pinned in \S+/eth0 \(2 services, 6 reals", text), text
            new_id = xdp_prog_id(lab.lb, "eth0")
            assert new_id not in (None, old_id)
            assert None not in watch.seen and watch.seen[0] == old_id and watch.seen[-1] == new_id, watch.seen

            # The connection, the template and the counters came through.
            assert live.ask() == serving
            assert lab.ask(neighbour, VIP4, 80) == sticky
            assert fwm_conns(lab) == 3  # 80 before, 443 while no daemon ran, 80 after
            listing = control.call("list", path=lab.socket_path)
            line_svc = next(s for s in listing["services"] if s["port"] == LINE)
            assert [(r["address"], r["active"]) for r in line_svc["reals"] if r["active"]] == \
                [(next(a for a, n in NAME_OF.items() if n == serving), 1)]

            # Runtime edit on the connection's service, then SIGHUP (the file is the truth again): it stays.
            other = next(r for r in REALS4 if NAME_OF[r] != serving)
            control.call("edit", path=lab.socket_path, source="test",
                         ops=[{"op": "real-edit", "service": {"proto": "tcp", "vip": VIP4, "port": LINE},
                               "address": other, "weight": 0}])
            assert live.ask() == serving
            lab.signal_xlb(signal.SIGHUP)
            lab._wait(lambda: "replaces 1 runtime edits" in log.read_text(), 10, "reload")
            assert live.ask() == serving
            assert lab.ask(client, VIP4, 80) == sticky

            # An upgrade: SIGQUIT leaves the program attached; the next daemon adopts and replaces it.
            lab.kill_xlb(signal.SIGQUIT)
            assert "exiting with the program attached" in log.read_text()
            assert xdp_prog_id(lab.lb, "eth0") == new_id
            lab.restart_xlb(log_path=str(log))
            assert xdp_prog_id(lab.lb, "eth0") not in (None, new_id)
            assert live.ask() == serving
            assert lab.ask(neighbour, VIP4, 443) == sticky
            assert fwm_conns(lab) == 5  # and the two since


@needs_root
def test_size_change_refused_then_fresh_starts_empty(tmp_path):
    log = tmp_path / "xlb.log"
    with DrLab(prefix="xa3") as lab:
        lab.start_xlb(LAB_CONFIG, log_path=str(log))
        sticky = lab.ask(CLIENTS4[0], VIP4, 80)
        old_id = xdp_prog_id(lab.lb, "eth0")
        lab.kill_xlb()

        # Another connection-table size: the pinned table cannot be adopted, and the old program keeps running.
        lab.rewrite_config(LAB_CONFIG.replace("conns = 65536", "conns = 131072"))
        with pytest.raises(RuntimeError, match="exited before"):
            lab.restart_xlb(log_path=str(log))
        text = log.read_text()
        assert re.search(r"xlb: error: cannot adopt the maps pinned in \S+: conns has key/value/entries "
                         r"40/24/65536, this program needs 40/24/131072\b.*start with --fresh", text), text
        assert xdp_prog_id(lab.lb, "eth0") == old_id
        assert lab.ask(CLIENTS4[1], VIP4, 80) == sticky

        # A second daemon on the same pinned maps is refused while the first runs.
        lab.rewrite_config(LAB_CONFIG)
        lab.restart_xlb(log_path=str(log))
        assert "adopted the maps" in log.read_text()
        from xlb.lab.process import run_in_netns
        from harness import cli_captured
        out = tmp_path / "second.log"
        rc = run_in_netns(lab.lb, cli_captured, str(out), ["run", "--iface", "eth0", "--config", lab.config_path,
                                                            "--socket", lab.socket_path + ".2"])
        assert rc == 1
        assert "xlb: error: another xlb daemon uses the maps pinned in" in out.read_text()
        lab.kill_xlb()

        # --fresh: empty maps (counters from zero), and the previous program, ours, replaced without --force.
        lab.rewrite_config(LAB_CONFIG.replace("conns = 65536", "conns = 131072"))
        lab.restart_xlb(["--fresh"], log_path=str(log))
        assert "xlb: --fresh: discarded the maps pinned in" in log.read_text()
        assert xdp_prog_id(lab.lb, "eth0") not in (None, old_id)
        assert fwm_conns(lab) == 0
        assert lab.ask(CLIENTS4[0], VIP4, 80) in NAME_OF.values()
        assert fwm_conns(lab) == 1
