"""The fuzzer's rules (tests/fuzz.py): what the program's answer to one frame may be, from the services of
tests/fuzz_services.py alone."""
import ipaddress
import struct

from fuzz_services import GW, LBS, MAC, MARKS, METHOD, NAT_PORT, OURS, REAL_MAC, SERVICES


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


def keys_for(data):
    """The services a well-formed forwarded frame may belong to: its own; for an ICMP error, the service of the
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
    return {k for k in keys if k is not None}


def reals_for(data):
    """The reals a well-formed forwarded frame may go to (those of keys_for's services)."""
    return {r for k in keys_for(data) for r in SERVICES[k]}


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


def _osum(b):
    """The ones'-complement sum of b as 16-bit words, modulo 0xFFFF (so +0 and -0 are one)."""
    if len(b) & 1:
        b += b"\0"
    return sum(struct.unpack(f"!{len(b) // 2}H", b)) % 0xFFFF


def _addrs(data):
    return data[26:34] if data[12:14] == b"\x08\x00" else data[22:54]


def nat_rewritten(data, out, side, hop=1):
    """Check out is data with one side's address (and port, when the frame has its L4 header) replaced, hop fewer
    hops (1; 0 when passed to the kernel, which takes its own), and each checksum updated as incrementally as it
    came (the ones'-complement sums over what each covers unchanged; an IPv4 UDP checksum of 0 stays 0). Returns
    (address, port or None) of that side in out."""
    if len(out) != len(data) or data[12:14] != out[12:14]:
        raise Violation("rewritten, but the frame's length or type changed")
    family, proto, _dst, l4, later = _headers(data)
    want = bytearray(data)
    want[:12] = out[:12]
    a, at = ((26, 22) if family == 4 else (22, 21))
    a += (4 if family == 4 else 16) * (side == "dst")
    n = 4 if family == 4 else 16
    want[a:a + n] = out[a:a + n]
    want[at] = (data[at] - hop) & 0xFF
    if family == 4:
        want[24:26] = out[24:26]
        if _osum(out[14:l4]) != _osum(data[14:l4]):
            raise Violation("the IPv4 header checksum was not updated with the rewrite")
    port = None
    if proto in (6, 17) and not later and len(data) >= l4 + (20 if proto == 6 else 8):
        p = l4 + 2 * (side == "dst")
        want[p:p + 2] = out[p:p + 2]
        port = struct.unpack("!H", out[p:p + 2])[0]
        c = l4 + (16 if proto == 6 else 6)
        want[c:c + 2] = out[c:c + 2]
        if proto == 17 and family == 4 and data[c:c + 2] == b"\0\0":
            if out[c:c + 2] != b"\0\0":
                raise Violation("an IPv4 UDP datagram without a checksum got one")
        elif _osum(_addrs(out) + out[l4:]) != _osum(_addrs(data) + data[l4:]):
            raise Violation("the L4 checksum was not updated with the rewrite")
    if bytes(want) != out:
        raise Violation("rewritten beyond the address, port, hop count and checksums")
    return ipaddress.ip_address(out[a:a + n]), port


def nat_icmp_rewritten(data, out, side, hop=1):
    """Check out is the ICMP error data rewritten as IPVS rewrites one about a NAT connection: side "dst" (toward
    the real) the outer destination and the quoted source address and port, side "src" (toward the client) the
    outer source and the quoted destination address and port; hop fewer hops; the outer and quoted IPv4 header
    checksums and the ICMP checksum (ICMPv6's with its pseudo-header) updated (the ones'-complement sums over what
    each covers unchanged: a valid checksum stays valid); nothing else, the quoted L4 checksum included. Returns
    (outer address, quoted address, quoted port) in out."""
    if len(out) != len(data) or data[12:14] != out[12:14]:
        raise Violation("an ICMP error rewritten, but the frame's length or type changed")
    family, _proto, _dst, l4, _later = _headers(data)
    n, q = (4 if family == 4 else 16), l4 + 8
    a, at = (26, 22) if family == 4 else (22, 21)
    qa, qports = (q + 12, q + (data[q] & 15) * 4) if family == 4 else (q + 8, q + 40)
    a, qa, qp = a + n * (side == "dst"), qa + n * (side == "src"), qports + 2 * (side == "src")
    end = 14 + struct.unpack("!H", data[16:18])[0] if family == 4 else 54 + struct.unpack("!H", data[18:20])[0]
    want = bytearray(data)
    want[at] = (data[at] - hop) & 0xFF
    spans = {"ICMP": lambda b: b[l4:end]} if family == 4 else {"ICMPv6": lambda b: _addrs(b) + b[l4:end]}
    if family == 4:
        spans.update({"outer IPv4 header": lambda b: b[14:l4], "quoted IPv4 header": lambda b: b[q:qports]})
    for off, k in ((0, 12), (a, n), (qa, n), (qp, 2), (l4 + 2, 2)) + (((24, 2), (q + 10, 2)) if family == 4 else ()):
        want[off:off + k] = out[off:off + k]
    for what, span in spans.items():
        if _osum(span(out)) != _osum(span(data)):
            raise Violation(f"the {what} checksum was not updated with the rewrite")
    if bytes(want) != out:
        raise Violation("an ICMP error rewritten beyond the addresses, quoted port, hop count and checksums")
    return (ipaddress.ip_address(out[a:a + n]), ipaddress.ip_address(out[qa:qa + n]),
            struct.unpack("!H", out[qp:qp + 2])[0])


def nat_icmp_forward(data, out, keys):
    """An ICMP error to a VIP about a NAT connection (quoting VIP:vport -> client): to a real of the quoted flow's
    service, the outer destination and the quoted source its address, the quoted source port its (mapped) port.
    Returns the real's address and port."""
    family, _proto, _dst, l4, _later = _headers(data)
    real, quoted, port = nat_icmp_rewritten(data, out, "dst")
    ok = [k for k in keys if str(real) in SERVICES[k]]
    if not ok or quoted != real or out[:6] != MAC[REAL_MAC[str(real)]]:
        raise Violation(f"an ICMP error about a NAT flow to {real} (quoting {quoted}) at {out[:6].hex(':')}: "
                        f"not a real of {keys}")
    q = l4 + 8
    qports = q + (data[q] & 15) * 4 if family == 4 else q + 40
    vport = struct.unpack("!H", data[qports:qports + 2])[0]
    if port != NAT_PORT.get((ok[0], str(real)), vport):
        raise Violation(f"an ICMP error about a NAT flow quotes port {port} of {real}, not its real's port")
    return real, port


def nat_forward(data, out, keys):
    """A NAT forward: to a real of the service, to its address and (mapped) port. Returns the real's address and
    port (its reply's source) for a packet with ports."""
    family, proto, dst, l4, later = _headers(data)
    real, port = nat_rewritten(data, out, "dst")
    ok = [k for k in keys if str(real) in SERVICES[k]]
    if not ok or out[:6] != MAC[REAL_MAC[str(real)]]:
        raise Violation(f"NAT to {real} at {out[:6].hex(':')}: not a real of {keys}")
    if port is None:
        return {}
    dport = struct.unpack("!H", data[l4 + 2:l4 + 4])[0]
    if port != NAT_PORT.get((ok[0], str(real)), dport):
        raise Violation(f"NAT to {real} port {port}: the real's port is {NAT_PORT.get((ok[0], str(real)), dport)}")
    return {"real": real, "rport": port}


def nat_reply(data, action, out, flow):
    """The reply of a NAT connection's real, sent right after the connection's first packet: it must leave with
    its source rewritten to VIP:port toward the client (the gateway's MAC), or be passed so rewritten (the
    client's neighbour unresolved; the kernel takes the hop)."""
    _to_client(action, out, "a NAT reply")
    addr, port = nat_rewritten(data, out, "src", hop=int(action != "XDP_PASS"))
    if addr.packed != flow["vip"] or port != flow["vport"]:
        raise Violation(f"a NAT reply left from {addr} port {port}, not from its VIP and port")


def nat_icmp_out(data, action, out, flow):
    """An ICMP error from a NAT connection's real's side (the real, or a router between it and the balancer)
    quoting the client's packet as the real got it (client -> real:rport): rewritten as IPVS does, the outer
    source and the quoted destination VIP:vport, toward the client as the connection's replies go; dropped when
    its hop count would reach 0 in xlb's hop (drop_ttl: the batch checks each drop has its reason)."""
    if data[22 if data[12:14] == b"\x08\x00" else 21] <= 1:
        if action != "XDP_DROP":
            raise Violation(f"an ICMP error from a NAT real's side with no hop left got {action}")
        return
    _to_client(action, out, "an ICMP error from a NAT real's side")
    src, quoted, port = nat_icmp_rewritten(data, out, "src", hop=int(action != "XDP_PASS"))
    if src.packed != flow["vip"] or quoted.packed != flow["vip"] or port != flow["vport"]:
        raise Violation(f"an ICMP error from a NAT real's side left from {src} quoting {quoted} port {port}, not "
                        "its VIP and port")


def _to_client(action, out, what):
    if action not in ("XDP_TX", "XDP_REDIRECT", "XDP_PASS"):
        raise Violation(f"{what} got {action}")
    if action != "XDP_PASS" and (out[:6] != GW or out[6:12] not in LBS):
        raise Violation(f"{what} left to {out[:6].hex(':')} from {out[6:12].hex(':')}, not to the gateway")


def tunnelled(data, out, reals):
    """A tunnel forward: the original IP packet whole after an outer IP header (and a GUE/GRE header) from the
    balancer to a real of the service, the outer lengths and IPv4 header checksum right."""
    inner = data[14:]
    if not out.endswith(inner) or len(out) - len(inner) < 34:
        raise Violation("tunnelled, but the inner packet is not the original")
    start = len(out) - len(inner)
    # the inner packet's own length (Ethernet padding after it rides along, outside the outer lengths)
    ilen = struct.unpack("!H", data[16:18])[0] if data[12:14] == b"\x08\x00" else 40 + struct.unpack(
        "!H", data[18:20])[0]
    if out[12:14] == b"\x08\x00":
        dst, end = out[30:34], 34
        lens_ok = out[14] == 0x45 and struct.unpack("!H", out[16:18])[0] == start - 14 + ilen and _osum(
            out[14:34]) == 0
    elif out[12:14] == b"\x86\xdd":
        dst, end = out[38:54], 54
        lens_ok = struct.unpack("!H", out[18:20])[0] == start - 54 + ilen
    else:
        raise Violation("tunnelled, but the outer header is not IP")
    if not lens_ok or start - end not in (0, 4, 8, 12, 16):
        raise Violation("tunnelled with a wrong outer header")
    real = str(ipaddress.ip_address(dst))
    if real not in reals or out[:6] != MAC[REAL_MAC[real]]:
        raise Violation(f"tunnelled to {real} at {out[:6].hex(':')}: not a real of {reals}")


def too_big_ok(data, out):
    """Is out the frag-needed / Packet Too Big the balancer answers for a packet its tunnel cannot carry (IPv4 with
    DF or without, IPv6): back to the sender, from the VIP, quoting the packet's start (the largest IPv4 header and
    8 bytes, 68; IPv6: what fits 1,280 bytes, 1,232), an MTU from the family's minimum to below the packet's length,
    its lengths and checksums right?"""
    if out[:6] != data[6:12] or out[6:12] != data[:6] or out[12:14] != data[12:14] or len(out) < 62:
        return False
    if data[12:14] == b"\x08\x00":
        mtu, least, quote = struct.unpack("!H", out[40:42])[0], 68, out[42:]
        ok = out[14] == 0x45 and out[23] == 1 and out[34:36] == b"\x03\x04" and out[26:30] == data[30:34] and \
            out[30:34] == data[26:30] and struct.unpack("!H", out[16:18])[0] == len(out) - 14 and \
            _osum(out[14:34]) == 0 and _osum(out[34:]) == 0 and len(quote) == 68
        size = struct.unpack("!H", data[16:18])[0]
    else:
        mtu, least, quote = struct.unpack("!I", out[58:62])[0], 1280, out[62:]
        ok = out[20] == 58 and out[54:56] == b"\x02\x00" and out[22:38] == data[38:54] and \
            out[38:54] == data[22:38] and struct.unpack("!H", out[18:20])[0] == len(out) - 54 and \
            _osum(out[22:54] + struct.pack("!IxxxB", len(out) - 54, 58) + out[54:]) == 0 and len(quote) == 1232
        size = 40 + struct.unpack("!H", data[18:20])[0]
    return ok and least <= mtu < size and data[14:].startswith(quote)


def check(data, action, out, expect=None):
    """Raise Violation when the program's answer to one frame breaks a rule. expect: ("reply", flow), data is the
    real's reply to the NAT connection flow (nat_reply); ("icmp_out", flow), an ICMP error from flow's real's side
    about it (nat_icmp_out); ("same", flow), data belongs to flow (an ICMP error about it, a fragment of its
    datagram) and must go to flow's real (a NAT flow's ICMP error rewritten to its address and port).
    Returns the connection a TCP/UDP forward with ports opened or followed (for its follow-ups), else None."""
    if action == "XDP_ABORTED":
        raise Violation("XDP_ABORTED")
    if expect and expect[0] in ("reply", "icmp_out"):
        return (nat_reply if expect[0] == "reply" else nat_icmp_out)(data, action, out, expect[1])
    flow = _check(data, action, out)
    if expect:
        was = expect[1]
        if action not in ("XDP_TX", "XDP_REDIRECT") or out[:6] != was["mac"]:
            raise Violation(f"{action} to {out[:6].hex(':')}: not its connection's real, {was['mac'].hex(':')}")
        if was["method"] == "nat" and _headers(data)[1] in (1, 58):
            real, _quoted, port = nat_icmp_rewritten(data, out, "dst")
            if (real, port) != (was["real"], was["rport"]):
                raise Violation(f"an ICMP error about a NAT connection to {real} port {port}, not its real's "
                                f"{was['real']} port {was['rport']}")
    return flow


def _check(data, action, out):
    if action == "XDP_PASS" and out != data:
        raise Violation("a passed frame was modified")
    if for_no_service(data) and (action, out) != ("XDP_PASS", data):
        raise Violation(f"a frame to no service got {action}")
    if action in ("XDP_PASS", "XDP_DROP"):
        return None
    if action not in ("XDP_TX", "XDP_REDIRECT"):
        raise Violation(f"unexpected action {action}")
    if action == "XDP_TX" and out[12:] != data[12:] and (echo_reply_ok(data, out) or too_big_ok(data, out)):
        return None
    try:
        keys = keys_for(data)
    except (IndexError, struct.error):
        keys = set()
    if not keys:
        raise Violation("forwarded a frame that belongs to no service")
    methods = {METHOD[k] for k in keys}
    reals = {r for k in keys for r in SERVICES[k]}
    if len(methods) != 1 or out[6:12] not in LBS:
        raise Violation(f"forwarded from {out[6:12].hex(':')} for services {keys}")
    method = methods.pop()
    flow = {}
    family, proto, dst, l4, later = _headers(data)
    if method == "nat" and proto in (1, 58):
        nat_icmp_forward(data, out, keys)  # keys_for found a service: an ICMP error
    elif method == "nat":
        flow = nat_forward(data, out, keys)
    elif method == "tun":
        tunnelled(data, out, reals)
    elif out[12:] != data[12:]:
        raise Violation("forwarded, but the IP packet changed")
    elif out[:6] not in {MAC[REAL_MAC[r]] for r in reals}:
        raise Violation(f"forwarded to {out[:6].hex(':')}: not a real of {reals}")
    if proto not in (6, 17) or later or len(keys) != 1 or len(data) < l4 + 4:
        return None
    key = keys.pop()
    flow.update(family=family, proto=proto, client=_addrs(data)[:len(dst)], vip=dst, key=key, method=method,
                cport=struct.unpack("!H", data[l4:l4 + 2])[0], vport=struct.unpack("!H", data[l4 + 2:l4 + 4])[0],
                mac=out[:6])
    return flow
