"""Hostile-packet fuzzer (issue 18): generated frames through the loaded xlb program with BPF_PROG_TEST_RUN, every
packet checked against the invariants an operator relies on:

- a packet to no service (its destination address no VIP and in no mark rule's prefix; a non-IP or VLAN-tagged
  frame) leaves byte for byte unchanged with XDP_PASS;
- a passed packet is never modified; a forwarded one keeps its IP packet, and its frame goes from the balancer to a
  real of the service the packet belongs to (destination MAC among that service's reals'): for an ICMP error the
  service of the quoted packet reversed, for a later fragment (no ports) a service of its VIP and protocol;
- an echo request to a VIP may come back (XDP_TX) as its reply: MACs and addresses swapped, the rest of the
  message unchanged;
- the program never returns XDP_ABORTED; per batch, the verdict counters grew by exactly the packets sent, the
  drop reasons by exactly the XDP_DROPs, and drop_internal not at all.

Frames: ICMP/ICMPv6 echo requests and errors quoting packets from the VIPs, truncated and oversized headers, IPv4 options of every kind with good and bad lengths, IPv6 extension-header
chains (hop-by-hop, routing, fragment, destination options, AH, unknown), bad IP and L4 lengths, fragments, 802.1Q
and 802.1ad tags, non-IP ethertypes, every TCP flag byte, to VIPs of several schedulers, a persistent port-zero
service, a fwmark service, and to other addresses.

`make fuzz` runs the full million: `python tests/fuzz.py [COUNT] [SEED]` (as root). tests/test_fuzz.py runs a quick
profile of the same code, and hypothesis-driven frames through the same checks.
"""
import ctypes as ct
import ipaddress
import os
import random
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import LB1_MAC, LB_MAC, REAL_MAC, Bench, in_netns  # noqa: E402
from xlb.dataplane import testrun  # noqa: E402

# -- the services under fuzz ---------------------------------------------------------------------------------------


def _real(addr):
    return f'  [[service.real]]\n  address = "{addr}"\n  weight = 1\n'


def _svc(head, reals, sched, extra=""):
    return f'[[service]]\n{head}scheduler = "{sched}"\n{extra}' + "".join(_real(r) for r in reals)


# (family, proto, vip, port) or ("mark", n) -> its reals
SERVICES = {
    (4, 6, "198.51.100.10", 80): ["198.18.0.11", "198.18.0.12"],
    (4, 17, "198.51.100.10", 53): ["198.18.0.12", "198.18.0.13"],
    (4, 6, "198.51.100.20", 0): ["198.18.0.13"],
    (4, 6, "198.51.100.40", 80): ["198.18.1.11"],
    (6, 6, "2001:db8:100::10", 80): ["2001:db8::11", "2001:db8::12"],
    (6, 17, "2001:db8:100::10", 53): ["2001:db8::13"],
    (6, 17, "2001:db8:100::20", 0): ["2001:db8::11"],
    ("mark", 1): ["198.18.0.11", "198.18.0.13"],
}
# mark rules: (mark, family, network, proto or None for any, ports or None for every port)
MARKS = [(1, 4, ipaddress.ip_network("198.51.100.30/32"), 6, {443, 8443})]

CONFIG = "\n".join([
    _svc('vip = "198.51.100.10"\nport = 80\nproto = "tcp"\n', SERVICES[(4, 6, "198.51.100.10", 80)], "rr"),
    _svc('vip = "198.51.100.10"\nport = 53\nproto = "udp"\n', SERVICES[(4, 17, "198.51.100.10", 53)], "mh"),
    _svc('vip = "198.51.100.20"\nport = 0\nproto = "tcp"\n', SERVICES[(4, 6, "198.51.100.20", 0)], "wlc",
         "persistence_timeout = 60\npersistence_netmask = \"255.255.255.0\"\n"),
    _svc('vip = "198.51.100.40"\nport = 80\nproto = "tcp"\n', SERVICES[(4, 6, "198.51.100.40", 80)], "lc"),
    _svc('vip = "2001:db8:100::10"\nport = 80\nproto = "tcp"\n', SERVICES[(6, 6, "2001:db8:100::10", 80)], "sh"),
    _svc('vip = "2001:db8:100::10"\nport = 53\nproto = "udp"\n', SERVICES[(6, 17, "2001:db8:100::10", 53)], "wrr"),
    _svc('vip = "2001:db8:100::20"\nport = 0\nproto = "udp"\n', SERVICES[(6, 17, "2001:db8:100::20", 0)], "sed",
         "persistence_timeout = 30\n"),
    '[[mark]]\nmark = 1\ndst = "198.51.100.30/32"\nproto = "tcp"\nports = [443, 8443]\n',
    _svc('fwmark = 1\nfamily = "ipv4"\n', SERVICES[("mark", 1)], "sh", "persistence_timeout = 120\n"),
])

# Destination addresses that belong to a service (a VIP or a mark prefix), and others.
OURS = {ipaddress.ip_address(k[2]).packed for k in SERVICES if k[0] != "mark"} | {
    n.network_address.packed for _m, _f, n, _p, _ports in MARKS}
DST4 = ["198.51.100.10", "198.51.100.10", "198.51.100.20", "198.51.100.30", "198.51.100.30", "198.51.100.40",
        "198.51.100.99", "192.0.2.1", "203.0.113.250", "198.18.0.2"]
DST6 = ["2001:db8:100::10", "2001:db8:100::10", "2001:db8:100::20", "2001:db8:100::99", "2001:db8:200::1",
        "2001:db8::2"]
PORTS = [80, 80, 80, 53, 53, 443, 443, 8443, 22, 0, 65535]
MAC = {s: bytes.fromhex(s.replace(":", "")) for s in [LB_MAC, LB1_MAC, *REAL_MAC.values()]}
LB = MAC[LB_MAC]

# -- frames --------------------------------------------------------------------------------------------------------


def _ipv4_options(rnd):
    """Options of every kind, with good and bad lengths (up to the 40 bytes IHL allows, sometimes more)."""
    out = b""
    for _ in range(rnd.randrange(0, 5)):
        kind = rnd.choice([0, 1, 7, 68, 131, 137, 130, 148, 25, 82, rnd.randrange(256)])
        if kind in (0, 1):
            out += bytes([kind])
            continue
        n = rnd.choice([rnd.randrange(2, 12), 0, 1, 255, rnd.randrange(256)])
        body = bytes(rnd.randrange(256) for _ in range(max(0, min(n, 40) - 2)))
        out += bytes([kind, n]) + body
    return out[:rnd.choice([40, 40, 40, 60])]


def _l4(rnd, proto, dport):
    sport = rnd.choice([40000, rnd.randrange(65536), 0])
    payload = bytes(rnd.randrange(256) for _ in range(rnd.choice([0, 0, 1, 16, rnd.randrange(200)])))
    if proto == 6:
        opts = bytes(rnd.randrange(256) for _ in range(rnd.choice([0, 0, 4, 12, 40])))
        doff = (20 + len(opts)) // 4 if rnd.random() < 0.8 else rnd.randrange(16)
        return struct.pack("!HHIIBBHHH", sport, dport, rnd.randrange(1 << 32), rnd.randrange(1 << 32),
                           doff << 4, rnd.randrange(256), 8192, 0, 0) + opts + payload
    if proto == 17:
        length = 8 + len(payload) if rnd.random() < 0.8 else rnd.randrange(65536)
        return struct.pack("!HHHH", sport, dport, length, 0) + payload
    return bytes(rnd.randrange(256) for _ in range(rnd.randrange(0, 64)))


def _icmp(rnd, proto, dst):
    """An ICMP (proto 1) or ICMPv6 (58) message: an echo request, or an error of each kind quoting a packet from
    dst (a VIP, or not) to a client, cut anywhere; else random bytes."""
    v6 = proto == 58
    r = rnd.random()
    if r < 0.3:
        return bytes([128 if v6 else 8, rnd.choice([0, 0, 0, 1]), 0, 0]) + rnd.randbytes(rnd.randrange(4, 60))
    if r < 0.7:
        kind = rnd.choice([1, 2, 3, 4] if v6 else [3, 3, 11, 5])
        mtu = rnd.choice([0, 67, 68, 576, 1279, 1280, 1500])
        head = bytes([kind, rnd.randrange(5)]) + b"\0\0" + (mtu.to_bytes(4, "big") if v6 else b"\0\0" + mtu.to_bytes(2, "big"))
        l4 = struct.pack("!HH", rnd.choice(PORTS), rnd.randrange(1024, 65536)) + rnd.randbytes(4)
        client = (ipaddress.ip_address("2001:db8:77::").packed[:14] + rnd.randbytes(2) if v6
                  else bytes([203, 0, 113, rnd.randrange(256)]))
        q = rnd.choice([6, 17, 6, 17, 1])
        quote = (struct.pack("!IHBB16s16s", 6 << 28, len(l4), q, 64, dst, client) if v6 else
                 struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, 0, 64, q, 0, dst, client)) + l4
        return head + quote[:rnd.choice([len(quote)] * 4 + [rnd.randrange(len(quote))])]
    return rnd.randbytes(rnd.randrange(0, 64))


def _proto(rnd):
    return rnd.choice([6] * 6 + [17] * 4 + [1, 58, 47, 50, 132, rnd.randrange(256)])


def _ipv4(rnd, dst, proto, l4):
    opts = _ipv4_options(rnd) if rnd.random() < 0.3 else b""
    opts += bytes(-len(opts) % 4)
    ihl = (20 + len(opts)) // 4
    if rnd.random() < 0.05:
        ihl = rnd.randrange(16)
    ver = 4 if rnd.random() < 0.97 else rnd.randrange(16)
    frag = 0 if rnd.random() < 0.8 else rnd.choice([0x2000, 0x4000, 0x2000 | rnd.randrange(1, 0x2000),
                                                    rnd.randrange(1, 0x2000), rnd.randrange(0x10000)])
    tot = 20 + len(opts) + len(l4)
    if rnd.random() < 0.08:
        tot = rnd.choice([0, 20, rnd.randrange(tot + 1), tot + rnd.randrange(1, 100), 65535])
    src = bytes([203, 0, 113, rnd.randrange(256)])
    hdr = struct.pack("!BBHHHBBH4s4s", (ver << 4) | (ihl & 15), 0, tot & 0xFFFF, rnd.randrange(65536), frag,
                      64, proto, 0, src, dst)
    return b"\x08\x00", hdr + opts + l4


# hop-by-hop, routing, fragment, dest-opts, AH; mobility, HIP, shim6, experimental, no next header: unknown to xlb
EXT = [0, 43, 44, 60, 51, 135, 139, 140, 253, 254, 59]


def _ipv6(rnd, dst, proto, l4):
    chain = [rnd.choice(EXT) for _ in range(rnd.choice([0] * 6 + [1, 1, 2, 3, 4, 5, 7]))]
    body = l4
    nxt = proto
    for kind in reversed(chain):
        if kind == 44:
            off = 0 if rnd.random() < 0.5 else rnd.randrange(1, 8192)
            ext = struct.pack("!BBHI", nxt, 0, (off << 3) | rnd.choice([0, 1]), rnd.randrange(1 << 32))
        elif kind == 51:
            n = rnd.choice([1, 4, rnd.randrange(256)])
            ext = bytes([nxt, n]) + bytes((n + 2) * 4 - 2)[: rnd.choice([(n + 2) * 4 - 2, 6])]
        else:
            n = rnd.choice([0, 0, 1, rnd.randrange(256)])
            ext = bytes([nxt, n]) + bytes(rnd.randrange(256) for _ in range((n + 1) * 8 - 2))
            if rnd.random() < 0.1:
                ext = ext[: rnd.randrange(2, len(ext) + 1)]
        body = ext + body
        nxt = kind
    plen = len(body) if rnd.random() < 0.92 else rnd.choice([0, rnd.randrange(len(body) + 1), len(body) + 40,
                                                             65535])
    ver = 6 if rnd.random() < 0.97 else rnd.randrange(16)
    src = ipaddress.ip_address("2001:db8:77::").packed[:14] + rnd.randrange(65536).to_bytes(2, "big")
    hdr = struct.pack("!IHBB16s16s", (ver << 28) | rnd.randrange(1 << 20), plen & 0xFFFF, nxt, 64, src, dst)
    return b"\x86\xdd", hdr + body


def _service_frame(rnd):
    """A well-formed TCP/UDP frame to one of the services (any flag byte but RST, which opens nothing)."""
    key = rnd.choice(list(SERVICES))
    if key[0] == "mark":
        family, proto, vip, port = 4, 6, "198.51.100.30", rnd.choice([443, 8443])
    else:
        family, proto, vip, port = key
        port = port or rnd.randrange(1, 65536)
    sport = rnd.randrange(1024, 65536)
    if proto == 6:
        l4 = struct.pack("!HHIIBBHHH", sport, port, 1, 0, 0x50, rnd.randrange(256) & ~0x04, 8192, 0, 0)
    else:
        l4 = struct.pack("!HHHH", sport, port, 9, 0) + b"q"
    dst = ipaddress.ip_address(vip).packed
    if family == 4:
        src = bytes([203, 0, 113, rnd.randrange(256)])
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, 0, 64, proto, 0, src, dst) + l4
        return LB + b"\x02\x00\x00\x00\x00\xaa\x08\x00" + ip
    src = ipaddress.ip_address("2001:db8:77::").packed[:14] + rnd.randrange(65536).to_bytes(2, "big")
    ip = struct.pack("!IHBB16s16s", 6 << 28, len(l4), proto, 64, src, dst) + l4
    return LB + b"\x02\x00\x00\x00\x00\xaa\x86\xdd" + ip


def frame(rnd):
    """One generated frame (bytes, at least 14: BPF_PROG_TEST_RUN refuses shorter)."""
    if rnd.random() < 0.2:
        return _service_frame(rnd)
    kind = rnd.random()
    if kind < 0.05:
        etype = rnd.choice([b"\x08\x06", b"\x88\xcc", b"\x88\x47", b"\x88\x8e", rnd.randbytes(2)])
        ip = rnd.randbytes(rnd.randrange(0, 100))
    else:
        v6 = kind > 0.55
        dst = ipaddress.ip_address(rnd.choice(DST6 if v6 else DST4)).packed
        proto = _proto(rnd)
        if proto == (58 if v6 else 1):
            l4 = _icmp(rnd, proto, dst)
        else:
            l4 = _l4(rnd, proto, rnd.choice(PORTS) if rnd.random() < 0.9 else rnd.randrange(65536))
        etype, ip = (_ipv6 if v6 else _ipv4)(rnd, dst, proto, l4)
    tags = b""
    r = rnd.random()
    if r < 0.06:
        tags = b"\x81\x00" + rnd.randbytes(2)
    elif r < 0.09:
        tags = b"\x88\xa8" + rnd.randbytes(2) + b"\x81\x00" + rnd.randbytes(2)
    elif r < 0.10:
        tags = b"\x81\x00" + rnd.randbytes(2) + b"\x81\x00" + rnd.randbytes(2) + b"\x81\x00" + rnd.randbytes(2)
    dmac = LB if rnd.random() < 0.95 else rnd.choice([b"\xff" * 6, rnd.randbytes(6)])
    out = dmac + b"\x02\x00\x00\x00\x00\xaa" + tags + etype + ip
    if rnd.random() < 0.1:  # truncated anywhere
        out = out[: rnd.randrange(14, len(out) + 1)]
    elif rnd.random() < 0.05:  # Ethernet padding past the IP length
        out += bytes(rnd.randrange(1, 40))
    return out[:3000]


# -- the rules -----------------------------------------------------------------------------------------------------


def destination(data):
    """The IPv4/IPv6 destination address of an untagged frame, when the frame holds it; else None."""
    etype = data[12:14]
    if etype == b"\x08\x00" and len(data) >= 34:
        return data[30:34]
    if etype == b"\x86\xdd" and len(data) >= 54:
        return data[38:54]
    return None


def for_no_service(data):
    """True when no service can claim the frame: not IP, VLAN-tagged (xlb passes tagged frames), or an IP
    destination that is no VIP and in no mark prefix."""
    if data[12:14] not in (b"\x08\x00", b"\x86\xdd"):
        return True
    dst = destination(data)
    return dst is not None and dst not in OURS


def _walk6(data):
    """(next header, its offset, a later fragment?) past the extension headers xlb walks; a later fragment's bytes
    after its Fragment header are payload."""
    nxt, cur = data[20], 54
    while nxt in (0, 43, 60, 51, 44):
        kind, nxt, n = nxt, data[cur], data[cur + 1]
        if kind == 44 and struct.unpack("!H", data[cur + 2:cur + 4])[0] >> 3:
            return nxt, cur + 8, True
        cur += 8 if kind == 44 else (n + 2) * 4 if kind == 51 else (n + 1) * 8
    return nxt, cur, False


def _headers(data):
    """(family, proto, destination, L4 offset, a later fragment?) of a well-formed untagged IP frame."""
    if data[12:14] == b"\x08\x00":
        later = struct.unpack("!H", data[20:22])[0] & 0x1fff != 0
        return 4, data[23], data[30:34], 14 + (data[14] & 15) * 4, later
    proto, l4, later = _walk6(data)
    return 6, proto, data[38:54], l4, later


def reals_for(data):
    """The reals a well-formed forwarded frame may go to: its service's; for an ICMP error, the service of the
    quoted packet reversed; for a later fragment (no ports), any service of its destination and protocol."""
    family, proto, dst, l4, later = _headers(data)
    if proto == (1 if family == 4 else 58):
        if data[l4] not in ((1, 2, 3) if family == 6 else (3, 11)):
            return set()  # not an error: nothing to forward
        q = l4 + 8
        qproto, qsrc, qports = ((data[q + 9], data[q + 12:q + 16], q + (data[q] & 15) * 4) if family == 4
                                else (data[q + 6], data[q + 8:q + 24], q + 40))
        keys = [service_of_tuple(family, qproto, qsrc, struct.unpack("!H", data[qports:qports + 2])[0])]
    elif later:
        addr = ipaddress.ip_address(dst)
        keys = [k for k in SERVICES if k[0] != "mark" and k[:3] == (family, proto, str(addr))]
        keys += [("mark", m) for m, f, net, p, _ports in MARKS if f == family and addr in net and p in (None, proto)]
    else:
        keys = [service_of_tuple(family, proto, dst, struct.unpack("!H", data[l4 + 2:l4 + 4])[0])]
    return {r for k in keys if k is not None for r in SERVICES[k]}


def echo_reply_ok(data, out):
    """Is out the reply to the echo request data: MACs and addresses swapped, TTL / hop limit 64, the type a
    reply's, the message past its checksum unchanged? (The fixtures pin the checksums.)"""
    family, proto, _dst, l4, _later = _headers(data)
    if proto != (1 if family == 4 else 58) or len(out) != len(data) or out[:6] != data[6:12]:
        return False
    if family == 4:
        addrs_ok = out[26:30] == data[30:34] and out[30:34] == data[26:30] and out[22] == 64
        reply, same = 0, out[14:22] + out[23:24] == data[14:22] + data[23:24]
    else:
        addrs_ok = out[22:38] == data[38:54] and out[38:54] == data[22:38] and out[21] == 64
        reply, same = 129, out[14:21] == data[14:21]
    return addrs_ok and same and out[l4] == reply and out[l4 + 1:l4 + 2] == data[l4 + 1:l4 + 2] \
        and out[l4 + 4:] == data[l4 + 4:] and data[l4] == (8 if family == 4 else 128)


def service_of(data):
    """The service key a well-formed forwarded TCP/UDP frame belongs to (service_of_tuple)."""
    family, proto, dst, l4, _later = _headers(data)
    return service_of_tuple(family, proto, dst, struct.unpack("!H", data[l4 + 2:l4 + 4])[0])


def service_of_tuple(family, proto, dst, dport):
    """The service key of (family, proto, destination, destination port), in IPVS's order: mark rule,
    <proto, vip, port>, then the VIP's port-zero service. None: no service."""
    addr = ipaddress.ip_address(dst)
    for mark, mfam, net, mproto, ports in MARKS:
        if mfam == family and addr in net and mproto in (None, proto) and (ports is None or dport in ports):
            if ("mark", mark) in SERVICES:
                return ("mark", mark)
    for port in (dport, 0):
        if (family, proto, str(addr), port) in SERVICES:
            return (family, proto, str(addr), port)
    return None


class Violation(AssertionError):
    pass


def check(data, action, out):
    """Raise Violation when the program's answer to one frame breaks a rule."""
    if action == "XDP_ABORTED":
        raise Violation("XDP_ABORTED")
    if action == "XDP_PASS" and out != data:
        raise Violation("a passed frame was modified")
    if for_no_service(data) and (action, out) != ("XDP_PASS", data):
        raise Violation(f"a frame to no service got {action}")
    if action == "XDP_TX" and out[12:] != data[12:]:
        if not echo_reply_ok(data, out):
            raise Violation("sent back, but not as the echo request's reply")
    elif action in ("XDP_TX", "XDP_REDIRECT"):
        if out[12:] != data[12:]:
            raise Violation("forwarded, but the IP packet changed")
        try:
            reals = reals_for(data)
        except (IndexError, struct.error):
            reals = set()
        if not reals:
            raise Violation("forwarded a frame that belongs to no service")
        allowed = {MAC[REAL_MAC[r]] for r in reals}
        if out[:6] not in allowed or out[6:12] not in (MAC[LB_MAC], MAC[LB1_MAC]):
            raise Violation(f"forwarded to {out[:6].hex(':')} from {out[6:12].hex(':')}: not a real of {reals}")
    elif action not in ("XDP_PASS", "XDP_DROP"):
        raise Violation(f"unexpected action {action}")


# -- running -------------------------------------------------------------------------------------------------------


class Runner:
    """BPF_PROG_TEST_RUN on one frame at a time, buffers and bpf_attr built once (the program runs each frame
    once, as if received on the bench's lb0). Call inside the bench's namespace."""

    def __init__(self, bench, size=4096):
        self.inp = ct.create_string_buffer(size)
        self.out = ct.create_string_buffer(size + 256)
        self.ctx = testrun._XdpMd(data=0, ingress_ifindex=bench.ifindex)
        self.attr = testrun._TestAttr(prog_fd=bench.prog.fd, data_in=ct.addressof(self.inp),
                                      data_out=ct.addressof(self.out), repeat=1, ctx_size_in=ct.sizeof(self.ctx),
                                      ctx_in=ct.addressof(self.ctx))
        self.ref = ct.byref(self.attr)
        self.kernel_ns = 0  # the program's own time, as BPF_PROG_TEST_RUN measures it

    def __call__(self, data):
        ct.memmove(self.inp, data, len(data))
        self.ctx.data_end = len(data)
        self.attr.data_size_in = len(data)
        self.attr.data_size_out = len(self.out)
        if testrun._libc.syscall(testrun._SYS_BPF, testrun._BPF_PROG_TEST_RUN, self.ref, ct.sizeof(self.attr)):
            raise OSError(ct.get_errno(), f"BPF_PROG_TEST_RUN on {data.hex()}")
        self.kernel_ns += self.attr.duration
        return testrun.XDP_ACTIONS.get(self.attr.retval, str(self.attr.retval)), self.out.raw[:self.attr.data_size_out]


def verdict_totals(bench):
    return {k: v.packets for k, v in bench.dp.verdict_counts().items()}


def run_batch(bench, frames, stats=None):
    """Run frames, check each, then the batch's counters. Returns the number of each action; raises Violation
    naming the first frame that broke a rule."""
    before = verdict_totals(bench)
    actions = {}
    run = Runner(bench)
    with in_netns(bench.ns):
        for data in frames:
            action, out = run(data)
            try:
                check(data, action, out)
            except Violation as exc:
                raise Violation(f"{exc}: frame {data.hex()}") from None
            actions[action] = actions.get(action, 0) + 1
    after = verdict_totals(bench)
    grew = {k: after[k] - before[k] for k in after if after[k] != before[k]}
    if sum(grew.values()) != len(frames):
        raise Violation(f"verdict counters grew by {sum(grew.values())} for {len(frames)} frames: {grew}")
    drops = sum(v for k, v in grew.items() if k.startswith("drop_") and k != "drop_internal")
    if drops != actions.get("XDP_DROP", 0) or grew.get("drop_internal"):
        raise Violation(f"{actions.get('XDP_DROP', 0)} XDP_DROPs, counted: {grew}")
    if stats is not None:
        for k, v in grew.items():
            stats[k] = stats.get(k, 0) + v
        stats["_kernel_ns"] = stats.get("_kernel_ns", 0) + run.kernel_ns
    return actions


def fuzz(bench, count, seed=1, batch=10000, log=None):
    """Generate and run count frames in batches; returns (reasons counted, packets/s of generation + run + check).
    Applies the fuzz config first (the maps are reset)."""
    bench.reset(CONFIG)
    rnd = random.Random(seed)
    stats = {}
    start = time.monotonic()
    done = 0
    while done < count:
        n = min(batch, count - done)
        run_batch(bench, [frame(rnd) for _ in range(n)], stats)
        done += n
        if log:
            log(f"{done} frames, {done / (time.monotonic() - start):.0f}/s")
    return stats, count / (time.monotonic() - start)


def main(argv):
    count = int(argv[1]) if len(argv) > 1 else 1_000_000
    seed = int(argv[2]) if len(argv) > 2 else int(time.time())
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    bench = Bench()
    try:
        print(f"fuzz: {count} frames, seed {seed}", flush=True)
        stats, rate = fuzz(bench, count, seed, batch=20000, log=lambda s: print(s, flush=True))
    finally:
        bench.close()
    kernel_ns = stats.pop("_kernel_ns")
    for k, v in sorted(stats.items(), key=lambda kv: -kv[1]):
        print(f"  {k:20} {v}")
    print(f"fuzz: {count} frames, every rule held; {rate:.0f} frames/s (generate, run, check); the program itself "
          f"{kernel_ns / count:.0f} ns a frame")


if __name__ == "__main__":
    main(sys.argv)
