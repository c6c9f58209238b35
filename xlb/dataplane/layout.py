"""The layout record beside pinned maps: never misread a map.

Next to the maps a one-entry array ``xlb_layout`` (pin.LAYOUT_MAP) holds a digest of every shared struct layout
(the ctypes mirrors, checked against bcc by tests/test_structs.py), the enums and flags of bpf/consts.h and
LAYOUT_VERSION. Before loading, :func:`check_layout` compares it (bringing an earlier release's pins up to date
where that loses nothing that matters: EARLIER_LAYOUTS); after loading (bcc reuses a pinned map whatever its
sizes), :func:`check_sizes` compares each adopted map's key/value sizes and entries with what the program
declares. Any difference refuses, before anything is attached or written, pointing at ``--fresh``.
"""
import ctypes as ct
import hashlib
import json
import os
from pathlib import Path

from . import bpffs, libbpf, pin
from . import structs as S

LAYOUT_VERSION = 1  # bump on a change of meaning that keeps every size (e.g. a field's units)


def layout_description():
    """Everything a pinned map's meaning depends on besides its sizes: struct layouts, enums, flags."""
    structs = {}
    for name, (key, leaf) in sorted(S.MAP_TYPES.items()):
        for role, t in (("key", key), ("leaf", leaf)):
            if t is not None:
                structs[f"{name}.{role}"] = _struct_layout(t)
    flags = {k: v for k, v in sorted(S.DEFINES.items()) if "_F_" in k or k.startswith("XLB_AF_")}
    return {"version": LAYOUT_VERSION, "structs": structs, "enums": S.ENUMS, "flags": flags}


def _struct_layout(t):
    out = [t.__name__, ct.sizeof(t)]
    for fname, ftype in t._fields_:
        f = getattr(t, fname)
        out.append([fname, f.offset, f.size, _struct_layout(ftype) if hasattr(ftype, "_fields_") else None])
    return out


def _digest(description):
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).digest()


def layout_digest():
    return _digest(layout_description())


# Layout records of earlier xlb releases whose pins this one adopts, each with the pinned maps that must be made anew
# (contents that may start again without losing a connection or a template) and what the operator loses. When a
# change of layout keeps the state maps' meaning, add the record of the release before it here.
EARLIER_LAYOUTS = {
    # cd41803 (stop 10): rr positions per CPU (rr_pos a per-CPU array of __u32); 19 verdict reasons.
    bytes.fromhex("cb704e610207d353bfb6b0a226ff5c76a8591432b6c0c39e5fc19550ff92aca3"): {
        "rr_pos": "rr and wrr start their rotations again, now one per service instead of per CPU",
        "verdicts": "the verdict counters start from zero, with two more reasons",
    },
    # feccb74: before NAT, ICMP, fragments, lblc (struct real's pad now its port and method, both 0 for DR;
    # flow_entry's pad its method, unpinned; new maps nat_revs, svc_out_stats, real_out_stats, lblc, tunnels are
    # made beside the adopted ones); 21 reasons.
    bytes.fromhex("b46b04e0b65d0dd6286c664195e1b5251a3b5cdf48c71894f300e5c7991c1da3"): {
        "verdicts": "the verdict counters start from zero, with the new reasons (NAT, tunnels, ICMP, fragments, "
                    "health, SIP)",
    },
    # 18a3dd3: before the SYN-flood defense (bpf/halfopen.h: new maps half_open, persist_half, nat_half, conn_events
    # are made beside the adopted ones; a new settings flag and enum) and two more reasons (NAT ICMP errors out, a
    # tunnel's frag-needed without DF).
    bytes.fromhex("cbac9807fe2ab84c6908e360a9c8b2db4b1d109f71f71813bc7a47d740f94a89"): {
        "verdicts": "the verdict counters start from zero, with the new reasons (NAT ICMP errors, tunnels)",
    },
    # d49dd53: before the NAT reply cache (bpf/replycache.h: a new unpinned map, reply_cache); every pinned map is
    # adopted as it is.
    bytes.fromhex("45e9e35b8d136458b7830ce17e6eefa8b6c941544f076ed17f0a8c98458aa558"): {},
    # ca23300: before the half-open lookups' own flag (XLB_SET_F_HALF_LOOK, written by the first apply with the rest
    # of the settings); every pinned map is adopted as it is.
    bytes.fromhex("8238c19468dff2e451af14bef9b04d7e7573a7a465e7aa906f78ddbfaa2333f9"): {},
}


def _migrate(pin_dir, recorded, log):
    """Bring the pins of an earlier release's layout (EARLIER_LAYOUTS) up to this one; True if done. The maps it
    lists are unpinned (a program still attached keeps its own reference) and the loader makes them anew; every
    other map is adopted as it is."""
    remake = EARLIER_LAYOUTS.get(recorded)
    if remake is None:
        return False
    for name in remake:
        (Path(pin_dir) / name).unlink(missing_ok=True)
    write_layout(pin_dir)
    if log:
        anew = "; ".join(f"{name}: {lost}" for name, lost in remake.items()) or "nothing (new maps only)"
        log(f"xlb: {bpffs.shown(pin_dir)}: pinned by the previous xlb's layout; connections and templates are "
            "kept, made anew: " + anew)
    return True


def read_layout(pin_dir):
    path = Path(pin_dir) / pin.LAYOUT_MAP
    if not path.exists():
        return None
    fd = libbpf.obj_get(path)
    try:
        key, val = ct.c_uint32(0), (ct.c_uint8 * 32)()
        libbpf.check(libbpf.lib().bpf_map_lookup_elem(fd, ct.byref(key), ct.byref(val)),
                     f"reading {bpffs.shown(path)}")
        return bytes(val)
    finally:
        os.close(fd)


def write_layout(pin_dir):
    """Record this xlb's layout digest next to the maps (created once, with the maps)."""
    path = Path(pin_dir) / pin.LAYOUT_MAP
    if path.exists():
        path.unlink()  # a record with no maps beside it (they were unpinned by hand)
    lib = libbpf.lib()
    fd = libbpf.check(lib.bpf_map_create(libbpf.BPF_MAP_TYPE_ARRAY, pin.LAYOUT_MAP.encode(), 4, 32, 1, None),
                      "creating xlb_layout")
    try:
        key, val = ct.c_uint32(0), (ct.c_uint8 * 32).from_buffer_copy(layout_digest())
        libbpf.check(lib.bpf_map_update_elem(fd, ct.byref(key), ct.byref(val), 0), "writing xlb_layout")
        libbpf.check(lib.bpf_obj_pin(fd, str(path).encode()), f"pinning {bpffs.shown(path)}")
    finally:
        os.close(fd)


FRESH_HINT = ("start with --fresh to discard them (established connections and templates are lost), "
              "or run the xlb that made them")


def check_layout(pin_dir, log=None):
    """Before loading: refuse pinned maps made with another data layout, or bring the previous layout's up to
    date where that loses nothing that matters (:func:`_migrate`). Returns the names pinned there."""
    names = pin.pinned_maps(pin_dir)
    if not names:
        return []
    recorded = read_layout(pin_dir)
    if recorded is None:
        raise pin.PinError(f"{bpffs.shown(pin_dir)} holds pinned maps without a layout record (an older or foreign "
                           f"xlb); {FRESH_HINT}")
    if recorded != layout_digest():
        if not _migrate(pin_dir, recorded, log):
            raise pin.PinError(f"the maps pinned in {bpffs.shown(pin_dir)} were made by an xlb whose data layout "
                               f"differs from this one's (structs, enums or flags in bpf/); {FRESH_HINT}")
        names = pin.pinned_maps(pin_dir)
    return names


def check_sizes(prog, pin_dir, names):
    """After loading: bcc reuses a pinned map whatever its sizes; refuse if one is not what the program declares
    (a changed [tables] size, say). Nothing is attached or written yet, so refusing changes nothing."""
    problems = []
    for name in names:
        if name not in S.MAP_TYPES:
            continue  # a map this version no longer has: left alone
        table = prog[name]
        leaf = getattr(table, "sLeaf", table.Leaf)  # bcc widens a per-CPU leaf to one per CPU
        want = (ct.sizeof(table.Key), ct.sizeof(leaf), table.max_entries)
        info = libbpf.map_info(table.map_fd)
        have = (info.key_size, info.value_size, info.max_entries)
        if have != want:
            problems.append(f"{name} has key/value/entries {have[0]}/{have[1]}/{have[2]}, "
                            f"this program needs {want[0]}/{want[1]}/{want[2]}")
    if problems:
        raise pin.PinError(f"cannot adopt the maps pinned in {bpffs.shown(pin_dir)}: {'; '.join(problems)} "
                           f"(table sizes are fixed while the maps live); {FRESH_HINT}")
