"""ctypes mirrors of the structs in bpf/structs.h, and the enums and flags of bpf/consts.h.

bpf/ is the only definition: the enums and #define flags are read from bpf/consts.h at import, and
tests/test_structs.py checks every mirror's size and field offsets against the types bcc builds for the maps.
"""
import ctypes as ct
import re
from importlib import resources
from pathlib import Path

# The C sources, through the package that ships them (bpf/__init__.py): xlb/bpf/ in an installed wheel, the
# checkout's bpf/ in an editable install. Always a directory on disk (bcc compiles from files).
try:
    BPF_DIR = Path(resources.files("xlb.bpf"))
except ModuleNotFoundError as exc:  # an editable install made before bpf/ became the package xlb.bpf
    raise ImportError("xlb.bpf (the data plane's C sources) is not installed: reinstall xlb (`make setup`)") from exc

_u8, _u16, _u32, _u64 = ct.c_uint8, ct.c_uint16, ct.c_uint32, ct.c_uint64
_addr = _u32 * 4  # 16-byte address, network order, IPv4 in [0]


def read_consts(name="consts.h"):
    """({enum: {NAME: value}}, {XLB_ define: value}) of bpf/NAME: one reader for every header shared with Python."""
    text = (BPF_DIR / name).read_text()
    enums = {}
    for name, body in re.findall(r"enum\s+(\w+)\s*\{(.*?)\};", text, re.S):
        body = re.sub(r"/\*.*?\*/", "", body, flags=re.S)
        values, nxt = {}, 0
        for item in (i.strip() for i in body.split(",")):
            if not item:
                continue
            key, _, val = (s.strip() for s in item.partition("="))
            nxt = int(val, 0) if val else nxt
            values[key] = nxt
            nxt += 1
        enums[name] = values
    defines = {k: int(v, 0) for k, v in re.findall(r"#define\s+(XLB_\w+)\s+(0x[0-9a-fA-F]+|\d+)\b", text)}
    return enums, defines


ENUMS, DEFINES = read_consts()

# Verdict reasons by number, and their export names ("pass_no_service", "drop_no_neigh", ...).
REASONS = {v: k[len("XLB_"):].lower() for k, v in ENUMS["xlb_reason"].items() if k != "XLB_REASON_MAX"}
REASON = {name: num for num, name in REASONS.items()}
REASON_MAX = ENUMS["xlb_reason"]["XLB_REASON_MAX"]  # one past the highest (numbers may be reserved in between)
SCHED = {k[len("XLB_SCHED_"):].lower(): v for k, v in ENUMS["xlb_sched"].items()}
METHOD = {k[len("XLB_METHOD_"):].lower(): v for k, v in ENUMS["xlb_method"].items()}
CONN_STATE = {k[len("XLB_CS_"):].lower(): v for k, v in ENUMS["xlb_conn_state"].items() if k != "XLB_CS_MAX"}
# conn_events counters (enum xlb_conn_event): {number: "half_open" | "promoted" | "midstream"}
CONN_EVENTS = {v: k[len("XLB_EV_"):].lower() for k, v in ENUMS["xlb_conn_event"].items() if k != "XLB_EV_MAX"}
CONN_STATES = ENUMS["xlb_conn_state"]["XLB_CS_MAX"]

AF_INET, AF_INET6 = DEFINES["XLB_AF_INET"], DEFINES["XLB_AF_INET6"]
SVC_F_PERSIST = DEFINES["XLB_SVC_F_PERSIST"]
SVC_F_PERSIST_TIMEOUT = DEFINES["XLB_SVC_F_PERSIST_TIMEOUT"]
SVC_F_EXPIRE_QUIESCENT = DEFINES["XLB_SVC_F_EXPIRE_QUIESCENT"]
SVC_F_HASH_PORT = DEFINES["XLB_SVC_F_HASH_PORT"]
SVC_F_FALLBACK = DEFINES["XLB_SVC_F_FALLBACK"]
SVC_F_OPS = DEFINES["XLB_SVC_F_OPS"]
SVC_F_CONSISTENT = DEFINES["XLB_SVC_F_CONSISTENT"]
SVC_F_FAIL_KEEP = DEFINES["XLB_SVC_F_FAIL_KEEP"]
SVC_F_FAIL_RESET = DEFINES["XLB_SVC_F_FAIL_RESET"]
SVC_F_PE_SIP = DEFINES["XLB_SVC_F_PE_SIP"]
REAL_F_LIVE = DEFINES["XLB_REAL_F_LIVE"]
REAL_F_DOWN = DEFINES["XLB_REAL_F_DOWN"]
TUN_F_CSUM = DEFINES["XLB_TUN_F_CSUM"]
TUN_F_BARE = DEFINES["XLB_TUN_F_BARE"]
TUN_TYPE = {k[len("XLB_TUN_"):].lower(): v for k, v in ENUMS["xlb_tun_type"].items()}
RC_F_OVERLOAD = DEFINES["XLB_RC_F_OVERLOAD"]
CAND_MAX = DEFINES["XLB_CAND_MAX"]
SET_F_MARKS = DEFINES["XLB_SET_F_MARKS"]
SET_F_VIP_FILTER = DEFINES["XLB_SET_F_VIP_FILTER"]
SET_F_ECHO = DEFINES["XLB_SET_F_ECHO"]
SET_F_SYNC = DEFINES["XLB_SET_F_SYNC"]
SET_F_HALF_OPEN = DEFINES["XLB_SET_F_HALF_OPEN"]
SET_F_NAT = DEFINES["XLB_SET_F_NAT"]
SET_F_HALF_LOOK = DEFINES["XLB_SET_F_HALF_LOOK"]
HALF_TABLES = ("half_open", "persist_half")   # what SET_F_HALF_LOOK says may hold entries (bpf/halfopen.h)
# trace_rec.flags, by name: {"conn_found": 0x1, ...}
TRACE_F = {k[len("XLB_TRACE_F_"):].lower(): v for k, v in DEFINES.items() if k.startswith("XLB_TRACE_F_")}


class SvcKey(ct.Structure):
    _fields_ = [("addr", _addr), ("mark", _u32), ("port", _u16), ("proto", _u8), ("family", _u8)]


class SvcMeta(ct.Structure):
    _fields_ = [("id", _u32), ("flags", _u32), ("sched", _u8), ("method", _u8), ("pad", _u16),
                ("table_off", _u32), ("table_len", _u32), ("pad2", _u32),
                ("persist_timeout_ns", _u64), ("persist_mask", _addr)]


class Real(ct.Structure):
    _fields_ = [("addr", _addr), ("gen", _u32), ("svc_id", _u32), ("weight", _u16), ("family", _u8),
                ("flags", _u8), ("uthreshold", _u32), ("lthreshold", _u32), ("port", _u16), ("method", _u8),
                ("pad", _u8)]


class Tunnel(ct.Structure):
    _fields_ = [("src", _addr), ("src_host", _addr), ("port", _u16), ("type", _u8), ("flags", _u8), ("family", _u8),
                ("pad", _u8 * 3)]


class RealConns(ct.Structure):
    _fields_ = [("active", ct.c_int64), ("inactive", ct.c_int64), ("flags", _u32), ("pad", _u32)]


class SpinLock(ct.Structure):
    _fields_ = [("val", _u32)]  # struct bpf_spin_lock: the kernel's; never written by us but as zero


class RrPos(ct.Structure):
    _fields_ = [("lock", SpinLock), ("next", _u32)]


class ConnKey(ct.Structure):
    _fields_ = [("src", _addr), ("dst", _addr), ("sport", _u16), ("dport", _u16), ("proto", _u8),
                ("family", _u8), ("pad", _u16)]


class Conn(ct.Structure):
    _fields_ = [("seen_ns", _u64), ("real_id", _u32), ("real_gen", _u32), ("svc_id", _u32), ("state", _u8),
                ("pad", _u8 * 3)]


class NatRev(ct.Structure):
    _fields_ = [("vip", _addr), ("vport", _u16), ("mtu", _u16), ("real_id", _u32), ("svc_id", _u32),
                ("hop_stamp", _u32), ("born_ns", _u64), ("ifindex", _u32), ("dmac", _u8 * 6), ("smac", _u8 * 6)]


class PersistKey(ct.Structure):
    _fields_ = [("svc", SvcKey), ("client", _addr)]


class Persist(ct.Structure):
    _fields_ = [("last_new_ns", _u64), ("held_until_ns", _u64), ("real_id", _u32), ("real_gen", _u32)]


LBLCR_SET = DEFINES["XLB_LBLCR_SET"]


class LblcKey(ct.Structure):
    _fields_ = [("svc_id", _u32), ("family", _u32), ("addr", _addr)]


class LblcDests(ct.Structure):
    _fields_ = [("lastuse_ns", _u64), ("lastmod_ns", _u64), ("real_id", _u32 * LBLCR_SET),
                ("real_gen", _u32 * LBLCR_SET)]


class MarkKey(ct.Structure):
    _fields_ = [("prefixlen", _u32), ("family", _u8), ("proto", _u8), ("port", _u16), ("addr", _addr)]


class MarkVal(ct.Structure):
    _fields_ = [("mark", _u32), ("rule_id", _u32)]


class VipKey(ct.Structure):
    _fields_ = [("prefixlen", _u32), ("family", _u32), ("addr", _addr)]


class Settings(ct.Structure):
    _fields_ = [("timeout_ns", _u64 * CONN_STATES), ("flags", _u32), ("gen", _u32), ("flow_ttl", _u32), ("pad", _u32)]


class Counters(ct.Structure):
    _fields_ = [("packets", _u64), ("bytes", _u64), ("conns", _u64)]


class Nexthop(ct.Structure):
    _fields_ = [("stamp_ns", _u64), ("ifindex", _u32), ("real_gen", _u32), ("dmac", _u8 * 6),
                ("smac", _u8 * 6), ("mtu", _u16), ("pad", _u16)]


class FlowEntry(ct.Structure):
    _fields_ = [("key", ConnKey), ("real_id", _u32), ("real_gen", _u32), ("svc_id", _u32), ("gen", _u32),
                ("stamp", _u32), ("method", _u32)]


class ReplyEntry(ct.Structure):
    _fields_ = [("key", ConnKey), ("real_id", _u32), ("ifindex", _u32), ("svc_id", _u32), ("gen", _u32),
                ("stamp", _u32), ("vport", _u16), ("mtu", _u16), ("vip", _addr), ("dmac", _u8 * 6),
                ("smac", _u8 * 6), ("pad", _u8 * 36)]


class SyncEvent(ct.Structure):
    _fields_ = [("key", ConnKey), ("svc_id", _u32), ("real_id", _u32), ("state", _u8), ("pad", _u8 * 7)]


class TraceRec(ct.Structure):
    _fields_ = [("now_ns", _u64), ("conn_seen_ns", _u64), ("tmpl_last_new_ns", _u64), ("tmpl_held_until_ns", _u64),
                ("svc", SvcKey), ("flags", _u32), ("reason", _u32), ("action", _u32), ("mark", _u32),
                ("rule_id", _u32), ("svc_id", _u32), ("conn_real_id", _u32), ("tmpl_real_id", _u32),
                ("sched_idx", _u32), ("real_id", _u32), ("conn_state", _u8), ("pad", _u8 * 7),
                ("nh_scratch", Nexthop)]


# Which mirror stands for which map's key and value (None: a plain integer type).
MAP_TYPES = {
    "services": (SvcKey, SvcMeta),
    "reals": (None, Real),
    "tunnels": (None, Tunnel),
    "real_conns": (None, RealConns),
    "sched_slots": (None, None),
    "rr_pos": (None, RrPos),
    "conns": (ConnKey, Conn),
    "nat_revs": (ConnKey, NatRev),
    "nat_half": (ConnKey, NatRev),
    "half_open": (ConnKey, Conn),
    "persist_half": (PersistKey, Persist),
    "conn_events": (None, None),
    "persist": (PersistKey, Persist),
    "lblc": (LblcKey, LblcDests),
    "mark_rules": (MarkKey, MarkVal),
    "vip_prefixes": (VipKey, None),
    "vip_filter": (None, None),
    "settings": (None, Settings),
    "nh_cache": (None, Nexthop),
    "flow_cache": (None, FlowEntry),
    "reply_cache": (None, ReplyEntry),
    "svc_stats": (None, Counters),
    "real_stats": (None, Counters),
    "mark_stats": (None, Counters),
    "verdicts": (None, Counters),
    "svc_out_stats": (None, Counters),
    "real_out_stats": (None, Counters),
    "trace_out": (None, TraceRec),
    "sync_lost": (None, None),
}

# Ring buffers (no key, no value type in bcc): the record each one carries (tests/test_sync_export.py checks the size
# the kernel hands the reader).
EVENT_MAPS = {"sync_events": SyncEvent}

# Maps private to the data plane (bpf/maps.h, end): no mirror, the control plane never reads them.
PRIVATE_MAPS = {"progs", "handoffs", "frags"}


def addr_words(b16: bytes):
    """16 address bytes (network order) as the 4-word array the structs hold."""
    return _addr.from_buffer_copy(b16)


def words_bytes(words) -> bytes:
    """The inverse of addr_words."""
    return bytes(words)
