"""The VIP filter: the bitmap the data plane tests first (bpf/classify.h may_be_vip), so that a packet for no VIP
and no mark-rule prefix passes after a few nanoseconds, not after a connection-table miss and the service lookups.

A bit is set, by a hash, for every VIP and every address of a mark prefix of at most 256 addresses, and for every
/24 (IPv4) or /64 (IPv6) network of a larger prefix. A packet matches if the bit of its destination or of its
network is set; a collision only costs the full lookup. A prefix that would need more than COARSE_MAX networks
(shorter than /12 or /52) turns the filter off. The hashes are bpf/hash.h's, which tests/test_vipfilter.py checks
against the data plane itself."""
import ipaddress

from .hashes import hash_addr, mix32
from ..config.model import addr_bytes
from ..dataplane.structs import DEFINES

WORDS = DEFINES["XLB_VIP_FILTER_WORDS"]
BITS = WORDS * 64
COARSE_MAX = 4096       # networks one prefix may set before the filter is off
FULL_MAX = 256          # addresses a prefix may set one by one
_M32 = 0xFFFFFFFF


def _net(b16, family):
    return b16[:3] + bytes(13) if family == 4 else b16[:8] + bytes(8)


def full_bit(b16):
    return hash_addr(b16) % BITS


def net_bit(b16, family):
    return mix32((hash_addr(_net(b16, family)) + 1) & _M32) % BITS


def prefix_bits(net):
    """The bits for an ipaddress network, or None when it is too large to list."""
    family = net.version
    host_bits = net.max_prefixlen - net.prefixlen
    coarse_len = 24 if family == 4 else 64
    if net.prefixlen > coarse_len and host_bits <= 8:
        return {full_bit(addr_bytes(a)) for a in net}
    if net.prefixlen >= coarse_len:
        return {net_bit(addr_bytes(net.network_address), family)}
    count = 1 << (coarse_len - net.prefixlen)
    if count > COARSE_MAX:
        return None
    step = 1 << (net.max_prefixlen - coarse_len)
    base = int(net.network_address)
    cls = type(net.network_address)
    return {net_bit(addr_bytes(cls(base + i * step)), family) for i in range(count)}


def bits(prefixes):
    """Every bit for marks.vip_prefixes' set of (family, 16 address bytes, prefix length) (each VIP and mark
    destination), or None when a prefix is too large for the filter."""
    out = set()
    for family, b16, plen in prefixes:
        got = prefix_bits(ipaddress.ip_network((ipaddress.ip_address(b16[:4] if family == 4 else b16), plen)))
        if got is None:
            return None
        out |= got
    return out


def words(bitset):
    """The WORDS 64-bit words of a set of bit numbers."""
    w = [0] * WORDS
    for b in bitset:
        w[b >> 6] |= 1 << (b & 63)
    return w
