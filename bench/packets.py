"""Frames for the benchmarks, built with struct (thousands per run: a packet library would dominate the set-up).

Checksums are correct: the kernel paths of bench/forward.py (routing, conntrack) verify them."""
import ipaddress
import struct

from xlb.dataplane.testrun import inet_checksum

TCP, UDP = 6, 17
TCP_SYN, TCP_ACK = 0x02, 0x10
MIN_FRAME = 60  # a 64-byte Ethernet frame without its FCS


def mac_bytes(mac):
    return bytes.fromhex(mac.replace(":", ""))


def frame(src, dst, sport, dport, proto=TCP, flags=TCP_ACK, *, src_mac, dst_mac, size=MIN_FRAME):
    """An Ethernet frame carrying TCP or UDP from src:sport to dst:dport, payload-padded to `size` bytes when the
    headers are shorter (IPv4: 60 bytes, i.e. 64 on the wire with the FCS)."""
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    v6 = s.version == 6
    l4_len = 20 if proto == TCP else 8
    head = 14 + (40 if v6 else 20) + l4_len
    payload = bytes(max(0, size - head))
    seg_len = l4_len + len(payload)
    if v6:
        pseudo = s.packed + d.packed + struct.pack("!IxxxB", seg_len, proto)
    else:
        pseudo = s.packed + d.packed + struct.pack("!xBH", proto, seg_len)
    if proto == TCP:
        l4 = struct.pack("!HHIIBBHHH", sport, dport, 1000, 1, 5 << 4, flags, 8192, 0, 0)
        csum = inet_checksum(pseudo + l4 + payload)
        l4 = l4[:16] + struct.pack("!H", csum) + l4[18:]
    else:
        l4 = struct.pack("!HHHH", sport, dport, seg_len, 0)
        csum = inet_checksum(pseudo + l4 + payload) or 0xFFFF
        l4 = l4[:6] + struct.pack("!H", csum)
    if v6:
        ip = struct.pack("!IHBB", 6 << 28, seg_len, proto, 64) + s.packed + d.packed
        ethertype = 0x86DD
    else:
        ip = struct.pack("!BBHHHBBH", 0x45, 0, 20 + seg_len, 0, 0x4000, 64, proto, 0) + s.packed + d.packed
        ip = ip[:10] + struct.pack("!H", inet_checksum(ip)) + ip[12:]
        ethertype = 0x0800
    return mac_bytes(dst_mac) + mac_bytes(src_mac) + struct.pack("!H", ethertype) + ip + l4 + payload


def stored_csums(data):
    """(IPv4 header checksum, TCP/UDP checksum) of a frame as stored (raw 16-bit words, for the generator)."""
    v6 = data[12:14] == b"\x86\xdd"
    l4 = 14 + (40 if v6 else 20)
    proto = data[20] if v6 else data[23]
    ip_csum = 0 if v6 else struct.unpack_from("=H", data, 24)[0]
    l4_csum = struct.unpack_from("=H", data, l4 + (16 if proto == TCP else 6))[0]
    return ip_csum, l4_csum


def verify(data):
    """True if the IPv4 header checksum (if any) and the TCP/UDP checksum of a frame are right."""
    v6 = data[12:14] == b"\x86\xdd"
    if v6:
        proto, seg = data[20], data[54:]
        seg = seg[:struct.unpack_from("!H", data, 18)[0]]
        pseudo = data[22:54] + struct.pack("!IxxxB", len(seg), proto)
    else:
        if inet_checksum(data[14:34]) != 0:
            return False
        proto = data[23]
        seg = data[34:14 + struct.unpack_from("!H", data, 16)[0]]
        pseudo = data[26:34] + struct.pack("!xBH", proto, len(seg))
    return inet_checksum(pseudo + seg) == 0
