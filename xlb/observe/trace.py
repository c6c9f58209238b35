"""`xlb trace`: ask the loaded program what it would do with a packet, without changing anything.

The trace build of bpf/xlb.c (``-DXLB_TRACE``, see bpf/trace.h) has every write to live state compiled out
(connection inserts and touches, template inserts and refreshes, rr positions, counters, the next-hop cache) and
records its decisions in the one-entry ``trace_out`` map. ``bpfprog.relinked_build`` compiles it and points every
map reference at the running program's same-named map, so it reads the live connections, templates and tables;
``bpfsys.prog_load_xdp`` loads it and ``testrun.test_run`` runs it on a packet synthesized here. The answer says
which mark rule and service matched, whether a connection or a persistence template was found (and when it
expires), which real was chosen and why. Reading an LRU entry marks it recently used; nothing else changes.

Use:
    tracer = Tracer(prog, dp, ifindex)            # compiles lazily on the first trace (a few seconds)
    answer = tracer.trace("203.0.113.7", "198.51.100.10", 80, proto="tcp")
    print(render(answer))

The daemon serves it as the control command ``trace`` (one Tracer per daemon); `xlb trace` is the client.
"""
import ipaddress
import os
import struct

from ..dataplane import structs as S
from ..errors import XlbError
from ..dataplane.testrun import inet_checksum

NS = 1_000_000_000
# The trace build's own maps are never used (every reference is relinked to the live maps): keep them tiny.
TRACE_CFLAGS = ["-DXLB_TRACE", "-DXLB_CONNS=1024", "-DXLB_TEMPLATES=1024", "-DXLB_MAX_SERVICES=64",
                "-DXLB_MAX_REALS=64", "-DXLB_SCHED_SLOTS=64", "-DXLB_MARK_ENTRIES=64", "-DXLB_MAX_MARK_RULES=64",
                "-DXLB_VIP_PREFIXES=64"]
FIRST_SPORT = 49152  # a source port left out: the first free one from here (no connection entry)
_PROTO = {"tcp": 6, "udp": 17}
_TCP_SYN = 0x02
_SRC_MAC = bytes.fromhex("020000000001")
_DST_MAC = bytes.fromhex("020000000002")
_STATE_NAMES = {v: k for k, v in S.CONN_STATE.items()}


class TraceError(XlbError):
    """A trace request that cannot be answered (bad address, family mismatch)."""


# -- the packet ---------------------------------------------------------------------------------------------------
def parse_endpoint(text, what, need_port):
    """'198.51.100.10:80', '[2001:db8::1]:80', '198.51.100.10' or '2001:db8::1' -> (address, port or None)."""
    text = text.strip()
    port = None
    host = text
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise TraceError(f"{what} {text!r}: expected [IPv6]:PORT")
        port = rest[1:] or None
    elif text.count(":") == 1:
        host, port = text.split(":")
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise TraceError(f"{what} {text!r}: not an IP address (IPv6 with a port: [2001:db8::1]:80)") from None
    if port is not None:
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise TraceError(f"{what} {text!r}: port must be 1..65535")
        port = int(port)
    if need_port and port is None:
        raise TraceError(f"{what} {text!r}: a port is required ({host}:PORT)")
    return addr, port


def build_packet(src, sport, dst, dport, proto="tcp"):
    """An Ethernet frame carrying a TCP SYN (a new connection) or a one-byte UDP datagram from src to dst."""
    src, dst = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if src.version != dst.version:
        raise TraceError(f"source {src} and destination {dst} are of different IP versions")
    num = _PROTO[proto]
    if proto == "tcp":
        l4 = struct.pack("!HHIIBBHHH", sport, dport, 1000, 0, 5 << 4, _TCP_SYN, 8192, 0, 0)
    else:
        l4 = struct.pack("!HHHH", sport, dport, 9, 0) + b"q"
    if src.version == 4:
        pseudo = src.packed + dst.packed + struct.pack("!BBH", 0, num, len(l4))
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, 0, 64, num, 0, src.packed, dst.packed)
        ip = ip[:10] + struct.pack("!H", inet_checksum(ip)) + ip[12:]
        ethertype = 0x0800
    else:
        pseudo = src.packed + dst.packed + struct.pack("!IxxxB", len(l4), num)
        ip = struct.pack("!IHBB16s16s", 6 << 28, len(l4), num, 64, src.packed, dst.packed)
        ethertype = 0x86DD
    off = 16 if proto == "tcp" else 6
    l4 = l4[:off] + struct.pack("!H", inet_checksum(pseudo + l4)) + l4[off + 2:]
    return _DST_MAC + _SRC_MAC + struct.pack("!H", ethertype) + ip + l4


def conn_key(src, sport, dst, dport, proto):
    from ..dataplane.mapkeys import htons
    src, dst = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    return S.ConnKey(src=S.addr_words(_addr16(src)), dst=S.addr_words(_addr16(dst)), sport=htons(sport),
                     dport=htons(dport), proto=_PROTO[proto], family=S.AF_INET if src.version == 4 else S.AF_INET6)


def _addr16(a):
    return a.packed.ljust(16, b"\0")


# -- running it -------------------------------------------------------------------------------------------------
class Tracer:
    """The trace build relinked to prog's maps, loaded once (lazily); traces run one at a time (the daemon's lock)."""

    def __init__(self, prog, dp, ifindex, log=None):
        self.prog = prog
        self.dp = dp
        self.ifindex = ifindex
        self.log = log
        self.fd = None
        self._fds = []  # the trace build's tail-call programs and private maps (progs, handoffs)

    def load(self):
        """Compile, relink and load the trace build once: its entry and its tail-call programs, reached through the
        build's own prog array (the live one holds the live programs, which write)."""
        if self.fd is None:
            from ..dataplane.program import Program, relinked_build
            from ..dataplane.bpfsys import map_update_u32, prog_load_xdp
            tails = Program.TAIL_CALLS
            insns, own = relinked_build(self.prog, TRACE_CFLAGS, S.MAP_TYPES, [Program.FUNC, *tails.values()],
                                        log=self.log)
            self._fds = list(own.values())
            try:
                for idx, func in tails.items():
                    fd = prog_load_xdp(insns[func], name="xlb_trace_" + str(idx))
                    self._fds.append(fd)
                    map_update_u32(own["progs"], idx, fd)
                self.fd = prog_load_xdp(insns[Program.FUNC], name="xlb_trace")
            except BaseException:
                self.close()
                raise
        return self.fd

    def close(self):
        for fd in self._fds + ([self.fd] if self.fd is not None else []):
            os.close(fd)
        self._fds = []
        self.fd = None

    def run(self, frame: bytes):
        """Run the trace build on one frame: (TraceRec, testrun.RunResult)."""
        from ..dataplane.testrun import test_run
        fd = self.load()
        self.dp.reset_trace()
        res = test_run(fd, frame, ifindex=self.ifindex)
        return self.dp.trace_record(), res

    def free_sport(self, src, dst, dport, proto):
        """The first source port from FIRST_SPORT with no connection entry to dst:dport (a new connection)."""
        for sport in range(FIRST_SPORT, 65536):
            if not self.dp.has_connection(conn_key(src, sport, dst, dport, proto)):
                return sport
        raise TraceError(f"every source port of {src} to {dst}:{dport} has a connection entry; name one")

    def trace(self, src, dst, dport, sport=None, proto="tcp"):
        """What the program would do with a new connection's first packet (TCP SYN / UDP) src -> dst:dport."""
        if proto not in _PROTO:
            raise TraceError(f"proto must be tcp or udp, got {proto!r}")
        if sport is None:
            sport = self.free_sport(src, dst, dport, proto)
        frame = build_packet(src, sport, dst, dport, proto)
        rec, res = self.run(frame)
        answer = explain(rec, res, self.dp)
        flow = f"{proto} {_hostport(src, sport)} -> {_hostport(dst, dport)}"
        answer["packet"] = flow + (" (SYN)" if proto == "tcp" else "")
        return answer


def _hostport(addr, port):
    addr = ipaddress.ip_address(addr)
    return f"[{addr}]:{port}" if addr.version == 6 else f"{addr}:{port}"


# -- what it means ------------------------------------------------------------------------------------------------
def explain(rec, res, dp):
    """The trace record in operator terms (JSON-able)."""
    F = S.TRACE_F
    flags = rec.flags
    now = rec.now_ns
    real_addr = dp.real_addresses()
    timeouts = dp.timeouts()
    answer = {"verdict": S.REASONS.get(rec.reason, str(rec.reason)), "action": res.action_name,
              "mark_rule": None, "service": None, "connection": None, "template": None, "scheduler": None,
              "real": real_addr.get(rec.real_id) if rec.real_id else None, "why": None}
    if flags & F["mark"]:
        rule = dp.rule_of(rec.rule_id)
        answer["mark_rule"] = {"rule": rule.where if rule else f"id {rec.rule_id}", "mark": rec.mark}
    # A followed connection skips the service lookup; the record then holds the connection's service id.
    st = dp.service_by_id(rec.svc_id) if flags & (F["svc"] | F["conn_hit"]) else None
    if flags & (F["svc"] | F["conn_hit"]):
        answer["service"] = st.svc.name if st else f"id {rec.svc_id}"
    if flags & F["conn_found"]:
        state = _STATE_NAMES.get(rec.conn_state, str(rec.conn_state))
        timeout = timeouts[rec.conn_state] if rec.conn_state < S.CONN_STATES else 0
        left = (rec.conn_seen_ns + timeout - now) / NS
        conn = {"state": state, "real": real_addr.get(rec.conn_real_id, f"id {rec.conn_real_id}"),
                "expires_in": round(left, 3), "followed": bool(flags & F["conn_hit"])}
        if not conn["followed"]:
            if left < 0:
                conn["not_followed"] = "expired"
            elif rec.conn_state == S.CONN_STATE["fin"]:
                conn["not_followed"] = "closing; a SYN starts a new connection on the tuple"
            else:
                conn["not_followed"] = "its real was removed; rescheduled"
        answer["connection"] = conn
        if conn["followed"]:
            answer["why"] = "connection"
    if flags & F["tmpl_found"]:
        svc = st.svc if st else None
        timeout_ns = (svc.persistence_timeout or 0) * NS if svc else 0
        until = rec.tmpl_last_new_ns + timeout_ns
        if svc and svc.persistence_mode == "lvs":
            until = max(until, rec.tmpl_held_until_ns)
        tmpl = {"real": real_addr.get(rec.tmpl_real_id, f"id {rec.tmpl_real_id} (removed)"),
                "expires_in": round((until - now) / NS, 3), "used": bool(flags & F["tmpl_hit"])}
        if tmpl["used"]:
            tmpl["note"] = f"a new connection restarts its timer ({svc.persistence_timeout} s)" if svc else ""
            answer["why"] = "persistence"
        else:
            tmpl["not_used"] = "expired" if until - now <= 0 else "its real was removed or is quiescent"
        answer["template"] = tmpl
    if flags & F["sched"] and answer["why"] is None:
        answer["scheduler"] = {"name": st.svc.scheduler if st else "?", "slot": rec.sched_idx,
                               "slots": len(st.table) if st else None}
        if rec.real_id:
            answer["why"] = "scheduler"
    if res.action_name in ("XDP_TX", "XDP_REDIRECT") and len(res.data) >= 6:
        answer["next_hop_mac"] = ":".join(f"{b:02x}" for b in res.data[:6])
    return answer


def render(a):
    """The answer as an operator reads it."""
    lines = [f"packet:     {a['packet']}"]
    if a["mark_rule"]:
        lines.append(f"mark rule:  {a['mark_rule']['rule']} -> mark {a['mark_rule']['mark']}")
    lines.append(f"service:    {a['service'] or 'none (the packet passes to the kernel)'}")
    c = a["connection"]
    if c:
        s = f"connection: {c['state']} -> {c['real']}, expires in {c['expires_in']:g} s"
        lines.append(s + ("" if c["followed"] else f" (not followed: {c['not_followed']})"))
    elif a["service"]:
        lines.append("connection: none (a new connection)")
    t = a["template"]
    if t:
        s = f"template:   -> {t['real']}, expires in {t['expires_in']:g} s"
        lines.append(s + (f"; {t['note']}" if t["used"] else f" (not used: {t['not_used']})"))
    if a["scheduler"]:
        sc = a["scheduler"]
        lines.append(f"scheduler:  {sc['name']} picked slot {sc['slot']} of {sc['slots']}")
    why = {"connection": "its connection entry", "persistence": "the persistence template",
           "scheduler": "the scheduler"}.get(a["why"], "")
    lines.append(f"real:       {a['real'] or 'none'}" + (f" (by {why})" if why else ""))
    lines.append(f"verdict:    {a['verdict']} ({a['action']})"
                 + (f", next hop {a['next_hop_mac']}" if a.get("next_hop_mac") else ""))
    return "\n".join(lines)
