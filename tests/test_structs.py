"""The ctypes mirrors in xlb/dataplane/structs.py against the types bcc builds for the maps (STYLE 7): same size, and every
field at the same offset with the same size, recursively. Also the verdict reasons parsed from bpf/consts.h."""
import ctypes as ct
import re
from pathlib import Path

import pytest

from xlb.dataplane import structs as S

BPF_DIR = Path(__file__).resolve().parent.parent / "bpf"
PERCPU = {"PerCpuArray", "PerCpuHash", "LruPerCpuHash"}


def _layout(t, prefix=""):
    """[(path, offset, size)] of every scalar leaf of ctypes type t, arrays expanded to their element type."""
    if issubclass(t, ct.Array):
        out = [(f"{prefix}[]", 0, ct.sizeof(t)), (f"{prefix}[].len", t._length_, 0)]
        return out + [(p, o, s) for p, o, s in _layout(t._type_, f"{prefix}[0]")]
    if issubclass(t, (ct.Structure, ct.Union)):
        out = []
        for f in t._fields_:
            name = f[0]
            if name.startswith("__pad"):
                continue  # bcc's explicit padding
            desc = getattr(t, name)
            out.append((f"{prefix}.{name}", desc.offset, desc.size))
            out += [(p, o + desc.offset, s) for p, o, s in _layout(f[1], f"{prefix}.{name}")]
        return out
    return []


def _mirrored():
    for name, (key, leaf) in S.MAP_TYPES.items():
        yield name, "Key", key
        yield name, "Leaf", leaf


@pytest.mark.parametrize("name,side,mirror", list(_mirrored()), ids=lambda v: v if isinstance(v, str) else None)
def test_mirror_matches_bcc(bench, name, side, mirror):
    table = bench.prog[name]
    bcc_t = getattr(table, side)
    if side == "Leaf" and type(table).__name__ in PERCPU:
        assert issubclass(bcc_t, ct.Array), f"{name}: bcc's per-CPU Leaf is not an array"
        bcc_t = bcc_t._type_
        if mirror is not None:
            assert ct.sizeof(mirror) % 8 == 0, f"{name}: per-CPU value {mirror.__name__} is not a multiple of 8"
    if mirror is None:
        # A plain integer (index keys are u32; scalar values are what the C says).
        assert issubclass(bcc_t, ct._SimpleCData), f"{name}.{side}: bcc has a struct {bcc_t} but no mirror"
        if side == "Key":
            assert ct.sizeof(bcc_t) == 4, f"{name}: index key is {ct.sizeof(bcc_t)} bytes"
        return
    assert ct.sizeof(mirror) == ct.sizeof(bcc_t), (
        f"{name}.{side}: sizeof {mirror.__name__} = {ct.sizeof(mirror)}, bcc's = {ct.sizeof(bcc_t)}")
    assert _layout(mirror) == _layout(bcc_t), f"{name}.{side}: field layout of {mirror.__name__} differs from bcc's"


def test_every_map_is_listed(bench):
    """A map added to bpf/maps.h without a MAP_TYPES entry would escape the check above."""
    declared = set()
    for args in re.findall(r"^(?:BPF_\w+|XLB_MAP)\((.*)\);", (BPF_DIR / "maps.h").read_text(), re.M):
        args = [a.strip() for a in args.split(",")]
        declared.add(args[3] if args[0].startswith('"') else args[0])
    listed = set(S.MAP_TYPES) | S.PRIVATE_MAPS | set(S.EVENT_MAPS)
    assert declared == listed, declared ^ listed


def test_layout_helper_sees_a_difference():
    """The comparison must be able to fail: a swapped field is caught."""
    class A(ct.Structure):
        _fields_ = [("a", ct.c_uint16), ("b", ct.c_uint8), ("c", ct.c_uint8)]

    class B(ct.Structure):
        _fields_ = [("a", ct.c_uint16), ("c", ct.c_uint8), ("b", ct.c_uint8)]

    assert ct.sizeof(A) == ct.sizeof(B)
    assert _layout(A) != _layout(B)


def test_reasons_numbered_below_max():
    """Unique numbers from zero, XLB_REASON_MAX one past the highest (the verdicts array's size). Topics reserve
    blocks of numbers while their branches merge (tunnels: 26-30), so a branch may leave a gap."""
    nums = sorted(S.REASONS)
    assert nums[0] == 0 and len(set(nums)) == len(nums)
    assert S.ENUMS["xlb_reason"]["XLB_REASON_MAX"] == nums[-1] + 1
    assert len(set(S.REASONS.values())) == len(nums)


def test_reasons_cover_the_code():
    """Every XLB_PASS_/FWD_/DROP_ name the C uses is an enum member, and the names Python code relies on exist."""
    used = set()
    for path in BPF_DIR.glob("*.[ch]"):
        used |= set(re.findall(r"\bXLB_((?:PASS|FWD|DROP)_[A-Z0-9_]+)\b", path.read_text()))
    used = {u for u in used if not u.endswith("_H")}  # include guards (XLB_FWD_H)
    names = set(S.REASONS.values())
    assert {u.lower() for u in used} <= names
    for name in ("pass_not_ip", "pass_no_service", "pass_other_proto", "pass_fragment", "fwd_tx", "fwd_redirect",
                 "drop_trunc_eth", "drop_trunc_ip", "drop_bad_ip", "drop_trunc_l4", "drop_bad_tcp",
                 "drop_fragment", "drop_no_real", "drop_rst_no_conn", "drop_no_neigh", "drop_fib",
                 "drop_not_onlink", "drop_ipv6_ext", "drop_internal", "pass_vlan",
                 "drop_too_big"):
        assert name in names, name
    assert S.REASON["pass_not_ip"] == 0


def test_rr_pos_is_one_position_per_service(bench):
    """rr/wrr rotate per service across CPUs (IPVS): rr_pos is a plain array of struct rr_pos, not a per-CPU one."""
    table = bench.prog["rr_pos"]
    assert type(table).__name__ == "Array"
    assert table.max_entries == bench.prog["svc_stats"].max_entries
