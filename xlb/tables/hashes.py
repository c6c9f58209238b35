"""The data plane's hashes (bpf/hash.h, bpf/persist.h) in Python, for what the control plane must predict: the VIP
filter's bits, and the real a consistent-placement service gives a client (the same answer on every balancer).

The data plane reads an address's four 32-bit words in the machine's order (little-endian here), so these do too;
balancers of different byte orders would hash differently. tests/test_vipfilter.py and tests/test_placement.py
check them against the loaded program."""
import struct

_M32 = 0xFFFFFFFF


def mix32(h):
    """bpf/hash.h mix32 (murmur3's finalizer)."""
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _M32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _M32
    return h ^ (h >> 16)


def hash_addr(b16):
    """bpf/hash.h hash_addr over 16 address bytes in network order (as the data plane loads them: the words are
    read in the machine's order, little-endian here)."""
    a = struct.unpack("<4I", b16)
    return mix32(a[0] ^ (a[1] * 0x9E3779B1 & _M32) ^ (a[2] * 0x85EBCA77 & _M32) ^ (a[3] * 0xC2B2AE3D & _M32))


def placement_hash(client16, svc_addr16, mark, port, proto, family):
    """bpf/persist.h placement_hash: ``client16`` the masked client (16 bytes), the service key's fields as the
    data plane holds them (``port`` the host-order number; the map holds it in network order)."""
    port_word = int.from_bytes(port.to_bytes(2, "big"), "little")
    svc = (hash_addr(svc_addr16) ^ (mark * 0x85EBCA77 & _M32)
           ^ (((port_word << 16) | (proto << 8) | family) * 0xC2B2AE3D & _M32))
    return mix32(hash_addr(client16) ^ (mix32(svc) * 0x9E3779B1 & _M32))
