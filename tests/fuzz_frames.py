"""The fuzzer's frame generator (tests/fuzz.py): random frames of every shape toward the services of
tests/fuzz_services.py and other addresses, and a NAT connection's replies from its real."""
import ipaddress
import struct

from fuzz_services import DST4, DST6, GW, LB, MAC, NO_FOLLOW, PORTS, REAL_MAC, SERVICES

CLIENT = b"\x02\x00\x00\x00\x00\xaa"
NOBODY6 = ipaddress.ip_address("2001:db8:78::").packed[:14]  # no generated frame comes from 2001:db8:78::/64


def _ipv4_options(rnd):
    """Options of every kind, with good and bad lengths (up to the 40 bytes IHL allows, sometimes more)."""
    out = b""
    for _ in range(rnd.randrange(0, 5)):
        kind = rnd.choice([0, 1, 7, 68, 131, 137, 130, 148, 25, 82, rnd.randrange(256)])
        if kind in (0, 1):
            out += bytes([kind])
            continue
        n = rnd.choice([rnd.randrange(2, 12), 0, 1, 255, rnd.randrange(256)])
        body = rnd.randbytes(max(0, min(n, 40) - 2))
        out += bytes([kind, n]) + body
    return out[:rnd.choice([40, 40, 40, 60])]


def _l4(rnd, proto, dport):
    sport = rnd.choice([40000, rnd.randrange(65536), 0])
    payload = rnd.randbytes(rnd.choice([0, 0, 1, 16, rnd.randrange(200)]))
    if proto == 6:
        opts = rnd.randbytes(rnd.choice([0, 0, 4, 12, 40]))
        doff = (20 + len(opts)) // 4 if rnd.random() < 0.8 else rnd.randrange(16)
        return struct.pack("!HHIIBBHHH", sport, dport, rnd.randrange(1 << 32), rnd.randrange(1 << 32),
                           doff << 4, rnd.randrange(256), 8192, 0, 0) + opts + payload
    if proto == 17:
        length = 8 + len(payload) if rnd.random() < 0.8 else rnd.randrange(65536)
        return struct.pack("!HHHH", sport, dport, length, 0) + payload
    if proto == 132:
        return _sctp(rnd, sport, dport)[:rnd.choice([12, 16, 100, rnd.randrange(0, 30)])]
    return rnd.randbytes(rnd.randrange(0, 64))


SCTP_CHUNKS = [0, 1, 1, 6, 7, 8, 10, 14, 3, 255]  # DATA, INIT, ABORT, SHUTDOWN(-ACK), COOKIE ECHO, ...


def _sctp(rnd, sport, dport):
    """An SCTP packet: the common header (any verification tag and CRC32c: xlb carries both unchanged) and
    chunks of each kind, their lengths right or wrong."""
    out = struct.pack("!HHII", sport, dport, rnd.choice([0, rnd.randrange(1 << 32)]), rnd.randrange(1 << 32))
    for _ in range(rnd.choice([0, 1, 1, 1, 2, 3])):
        kind = rnd.choice(SCTP_CHUNKS + [rnd.randrange(256)])
        body = rnd.randbytes(rnd.choice([0, 4, 16, rnd.randrange(40)]))
        n = 4 + len(body) if rnd.random() < 0.85 else rnd.choice([0, 1, 3, 65535, rnd.randrange(65536)])
        out += struct.pack("!BBH", kind, rnd.randrange(256) if rnd.random() < 0.2 else 0, n) + body
        out += bytes(-len(out) % 4)
    return out


CALLID = [b"Call-ID", b"call-id", b"CALL-ID", b"i", b"I", b"Call-Id", b"Call-IDx", b"X-Call-ID", b"Call - ID"]


def _sip(rnd):
    """A SIP message (or the start of one): request or status line, headers, random Call-ID headers (long and
    compact names, any case, blanks, empty, long, repeated, absent), cut anywhere."""
    lines = [rnd.choice([b"INVITE sip:bob@198.51.100.80 SIP/2.0", b"SIP/2.0 200 OK", b"ACK sip:x SIP/2.0",
                         b"BYE sip:x SIP/2.0", rnd.randbytes(rnd.randrange(30))])]
    for _ in range(rnd.randrange(0, 5)):
        lines.append(rnd.choice([b"Via: SIP/2.0/UDP 203.0.113.7:5060;branch=z9hG4bK1", b"Max-Forwards: 70",
                                 b"CSeq: 1 INVITE", b"To: <sip:bob@x>", rnd.randbytes(rnd.randrange(20))]))
    for _ in range(rnd.choice([0, 1, 1, 1, 2])):
        value = rnd.choice([b"a84b4c76e66710@pc33.example.com", b"", b" ", b"x" * rnd.randrange(1, 300),
                            rnd.randbytes(rnd.randrange(1, 40)), b"f81d4fae-7dec-11d0-a765"])
        lines.insert(rnd.randrange(1, len(lines) + 1),
                     rnd.choice(CALLID) + rnd.choice([b":", b": ", b" :  ", b"\t:", b""]) + value)
    sep = rnd.choice([b"\r\n", b"\r\n", b"\n", b"\r"])
    msg = sep.join(lines) + sep + sep
    return msg[:rnd.choice([len(msg)] * 3 + [rnd.randrange(len(msg) + 1)])]


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
        head = bytes([kind, rnd.randrange(5)]) + b"\0\0" + (mtu.to_bytes(4, "big") if v6
                                                            else b"\0\0" + mtu.to_bytes(2, "big"))
        l4 = struct.pack("!HH", rnd.choice(PORTS), rnd.randrange(1024, 65536)) + rnd.randbytes(4)
        client = (ipaddress.ip_address("2001:db8:77::").packed[:14] + rnd.randbytes(2) if v6
                  else bytes([203, 0, 113, rnd.randrange(256)]))
        q = rnd.choice([6, 17, 6, 17, 1])
        quote = (struct.pack("!IHBB16s16s", 6 << 28, len(l4), q, 64, dst, client) if v6 else
                 struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, 0, 64, q, 0, dst, client)) + l4
        return head + quote[:rnd.choice([len(quote)] * 4 + [rnd.randrange(len(quote))])]
    return rnd.randbytes(rnd.randrange(0, 64))


def _proto(rnd):
    return rnd.choice([6] * 6 + [17] * 4 + [1, 58, 47, 50, 132, 132, rnd.randrange(256)])


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
            ext = bytes([nxt, n]) + rnd.randbytes((n + 1) * 8 - 2)
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


def _payload(rnd, proto, port):
    if proto == 17 and port == 5060:
        return _sip(rnd)
    # now and then one near or past the MTU: too big for DR and NAT, for a tunnel's outer headers (PTB)
    return rnd.randbytes(rnd.choice([1, 1, 1, 16, rnd.randrange(1380, 1560)]))


def _service_frame(rnd):
    """A well-formed TCP/UDP/SCTP frame to one of the services (any flag byte but RST, which opens nothing; any
    checksum; DF or not; now and then a TTL NAT cannot decrement)."""
    key = rnd.choice(list(SERVICES))
    if key[0] == "mark":
        family, proto, vip, port = 4, 6, "198.51.100.30", rnd.choice([443, 8443])
    else:
        family, proto, vip, port = key
        port = port or rnd.randrange(1, 65536)
    sport = rnd.randrange(1024, 65536)
    csum = rnd.choice([0, rnd.randrange(65536)])
    if proto == 6:
        l4 = struct.pack("!HHIIBBHHH", sport, port, 1, 0, 0x50, rnd.randrange(256) & ~0x04, 8192, csum, 0)
        l4 += _payload(rnd, proto, port) if rnd.random() < 0.5 else b""
    elif proto == 17:
        body = _payload(rnd, proto, port)
        l4 = struct.pack("!HHHH", sport, port, 8 + len(body), csum) + body
    else:
        l4 = _sctp(rnd, sport, port) + (_payload(rnd, proto, port) if rnd.random() < 0.2 else b"")
    return _ip_frame(rnd, family, proto, _client(rnd, family), ipaddress.ip_address(vip).packed, l4)


def _client(rnd, family):
    if family == 4:
        return bytes([203, 0, 113, rnd.randrange(256)])
    return ipaddress.ip_address("2001:db8:77::").packed[:14] + rnd.randrange(65536).to_bytes(2, "big")


def _ip_frame(rnd, family, proto, src, dst, l4, dmac=LB, smac=CLIENT, ttl=None):
    """An IP frame around l4; one in ten with well-formed IPv4 options (NOP, EOL, a timestamp) or an IPv6
    destination-options header, which every path must step over."""
    ttl = rnd.choice([64] * 20 + [1, 0, 2]) if ttl is None else ttl
    opts = rnd.random() < 0.1
    if family == 4:
        df = rnd.choice([0, 0x4000])
        opt = rnd.choice([b"\x01\x01\x01\x00", b"\x44\x0c\x05\x00" + bytes(8)]) if opts else b""
        ip = struct.pack("!BBHHHBBH4s4s", 0x45 + len(opt) // 4, rnd.randrange(256), 20 + len(opt) + len(l4),
                         rnd.randrange(65536), df, ttl, proto, rnd.randrange(65536), src, dst) + opt + l4
        return dmac + smac + b"\x08\x00" + ip
    ext = bytes([proto, 0]) + bytes(6) if opts else b""
    ip = struct.pack("!IHBB16s16s", (6 << 28) | rnd.randrange(1 << 28), len(ext) + len(l4), 60 if opts else proto,
                     ttl, src, dst) + ext + l4
    return dmac + smac + b"\x86\xdd" + ip


def replies(rnd, flow):
    """Frames from a NAT connection's real toward its client (flow: fuzz_rules.nat_forward's): the reply itself
    (first: it must come out rewritten), then now and then one of another tuple or cut short."""
    family, proto, client, cport, real, rport = (flow[k] for k in ("family", "proto", "client", "cport", "real",
                                                                     "rport"))
    if proto == 6:
        l4 = struct.pack("!HHIIBBHHH", rport, cport, 7, 2, 0x50, rnd.randrange(256), 4096, rnd.randrange(65536),
                         0) + rnd.randbytes(rnd.choice([0, 0, 20]))
    else:
        body = rnd.randbytes(rnd.choice([0, 1, 40]))
        l4 = struct.pack("!HHHH", rport, cport, 8 + len(body), rnd.choice([0, rnd.randrange(65536)])) + body
    mac = MAC[REAL_MAC[ipaddress.ip_address(real).compressed]]
    src = ipaddress.ip_address(real).packed
    out = [_ip_frame(rnd, family, proto, src, client, l4, smac=mac, ttl=64)]
    r = rnd.random()
    if r < 0.2:  # the same ports toward a client no generated frame comes from: no connection's (another port of
        # the same client could be another connection's: 256 clients x 64,512 ports met one in 2,000,000 frames)
        nobody = bytes([192, 0, 2, client[3]]) if family == 4 else NOBODY6 + client[14:]
        out.append(_ip_frame(rnd, family, proto, src, nobody, l4, smac=mac))
    elif r < 0.4:  # the reply cut anywhere past the Ethernet header
        full = out[0]
        out.append(full[:rnd.randrange(14, len(full))])
    return out


def frame(rnd):
    """One generated frame (bytes, at least 14: BPF_PROG_TEST_RUN refuses shorter)."""
    if rnd.random() < 0.2:
        out = _service_frame(rnd)
        if rnd.random() < 0.05:  # well formed, but on a VLAN (802.1Q, or QinQ): not balanced
            out = out[:12] + rnd.choice([b"\x81\x00", b"\x88\xa8\x00\x0a\x81\x00"]) + rnd.randbytes(2) + out[12:]
        return out
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




def followups(rnd, flow):
    """Frames that belong to a connection just forwarded (flow: fuzz_rules.check's), each with what is expected of
    it: the NAT real's replies (fuzz_frames.replies) and an ICMP error from its side about the connection (toward
    the client, rewritten), an ICMP error about the connection from a router on the way back to the client, a
    datagram of the same tuple in two fragments (IPv4, or IPv6's Fragment header); these go to the connection's real
    (the later fragment by the first one's note in frags)."""
    out = []
    if flow.get("real") is not None:
        out += [(r, ("reply", flow) if i == 0 else None) for i, r in enumerate(replies(rnd, flow))]
        if rnd.random() < 0.3:
            out += [(e, ("icmp_out", flow) if i == 0 else None) for i, e in enumerate(_icmp_errors_out(rnd, flow))]
    if flow["key"] in NO_FOLLOW:
        return out  # one-packet scheduling and SIP: no connection entry under the tuple to follow
    if rnd.random() < 0.3:
        out.append((_icmp_error(rnd, flow), ("same", flow)))
    if rnd.random() < 0.3:
        out += [(f, ("same", flow)) for f in _fragments(rnd, flow)]
    return out


ROUTER4, ROUTER6 = bytes([198, 18, 9, 9]), ipaddress.ip_address("2001:db8:9::9").packed


def _csum(b):
    """The Internet checksum of b."""
    b += bytes(len(b) & 1)
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _icmp_msg(rnd, family, src, dst, quoted_src, quoted_dst, proto, ports):
    """An ICMP/ICMPv6 error of a random kind from src to dst quoting a packet quoted_src -> quoted_dst (its ports,
    then 4 or 16 more bytes), every checksum right (the quoted IPv4 header's, the ICMP one, ICMPv6's with its
    pseudo-header): a NAT rewrite must keep them right."""
    l4 = struct.pack("!HH", *ports) + rnd.randbytes(rnd.choice([4, 4, 16]))
    if family == 4:
        kind, code = rnd.choice([(3, 1), (3, 3), (3, 4), (11, 0)])
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4) + 100, 1, 0, 63, proto, 0, quoted_src, quoted_dst)
        quote = ip[:10] + struct.pack("!H", _csum(ip)) + ip[12:] + l4
        msg = struct.pack("!BBHHH", kind, code, 0, 0, 1400 if code == 4 else 0) + quote
        return msg[:2] + struct.pack("!H", _csum(msg)) + msg[4:]
    kind, code = rnd.choice([(1, 0), (1, 4), (2, 0), (3, 0)])
    quote = struct.pack("!IHBB16s16s", 6 << 28, len(l4) + 100, proto, 63, quoted_src, quoted_dst) + l4
    msg = struct.pack("!BBHI", kind, code, 0, rnd.choice([1280, 1400, 1500]) if kind == 2 else 0) + quote
    pseudo = src + dst + struct.pack("!I3xB", len(msg), 58)
    return msg[:2] + struct.pack("!H", _csum(pseudo + msg)) + msg[4:]


def _with_ip_checksum(frame):
    """frame with its outer IPv4 header checksum right (IPv6 has none)."""
    if frame[12:14] != b"\x08\x00":
        return frame
    end = 14 + (frame[14] & 15) * 4
    head = frame[14:24] + b"\0\0" + frame[26:end]
    return frame[:24] + struct.pack("!H", _csum(head)) + frame[26:]


def _icmp_error(rnd, flow):
    """An ICMP/ICMPv6 error from a router about the connection's packet from VIP:port to the client."""
    family = flow["family"]
    router = ROUTER4 if family == 4 else ROUTER6
    msg = _icmp_msg(rnd, family, router, flow["vip"], flow["vip"], flow["client"], flow["proto"],
                    (flow["vport"], flow["cport"]))
    return _with_ip_checksum(_ip_frame(rnd, family, 1 if family == 4 else 58, router, flow["vip"], msg, smac=GW,
                                       ttl=64))


def _icmp_errors_out(rnd, flow):
    """An ICMP/ICMPv6 error from a NAT connection's real's side (the real itself, or a router between it and the
    balancer) toward the client, quoting the client's packet as the real got it (client -> real:rport); now and
    then one quoting another connection's (toward a client no generated frame comes from), or the error cut
    anywhere past the Ethernet header: not ours. Its hop count is now and then 1 or 0 (dropped: xlb is a hop)."""
    family, client = flow["family"], flow["client"]
    real = ipaddress.ip_address(flow["real"]).packed
    src = rnd.choice([real, ROUTER4 if family == 4 else ROUTER6])
    mac = MAC[REAL_MAC[ipaddress.ip_address(real).compressed]]
    out = []
    r = rnd.random()
    for i, to in enumerate([client] + ([bytes([192, 0, 2, client[3]]) if family == 4 else NOBODY6 + client[14:]]
                                       if r < 0.2 else [])):
        msg = _icmp_msg(rnd, family, src, to, to, real, flow["proto"], (flow["cport"], flow["rport"]))
        out.append(_with_ip_checksum(_ip_frame(rnd, family, 1 if family == 4 else 58, src, to, msg, smac=mac,
                                               ttl=rnd.choice([64] * 10 + [1, 0]) if i == 0 else 64)))
    if 0.2 <= r < 0.4:
        out.append(out[0][:rnd.randrange(14, len(out[0]))])
    return out


def _fragments(rnd, flow):
    """The connection's next datagram (client to VIP:port) in a first fragment (with the ports) and a later one."""
    family, proto = flow["family"], flow["proto"]
    body = rnd.randbytes(rnd.choice([8, 24, 100]))
    if proto == 6:
        l4 = struct.pack("!HHIIBBHHH", flow["cport"], flow["vport"], 2, 1, 0x50, 0x10, 8192, 0, 0) + body
    else:
        l4 = struct.pack("!HHHH", flow["cport"], flow["vport"], 8 + len(body), 0) + body
    cut = rnd.choice([24, 32])
    parts = [(l4[:cut], 0, 1), (l4[cut:], cut // 8, 0)]
    ident = rnd.randrange(1 << 16)
    frames = []
    for part, off, more in parts:
        if family == 4:
            ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(part), ident, (more << 13) | off, 64, proto, 0,
                             flow["client"], flow["vip"]) + part
            frames.append(LB + CLIENT + b"\x08\x00" + ip)
        else:
            fh = struct.pack("!BBHI", proto, 0, (off << 3) | more, ident)
            ip = struct.pack("!IHBB16s16s", 6 << 28, 8 + len(part), 44, 64, flow["client"], flow["vip"]) + fh + part
            frames.append(LB + CLIENT + b"\x86\xdd" + ip)
    return frames
