"""PING_CHECK: one ICMP (or ICMPv6) echo request to the target over a raw socket (root); the matching echo reply
within connect_timeout passes."""
import asyncio
import os
import socket
import struct

from .checker import Checker
from .state import Result

ECHO = struct.Struct("!BBHHH")   # type, code, checksum, id, sequence
_seq = [0]


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def echo_request(v6, ident, seq, payload=b"xlb health check"):
    kind = 128 if v6 else 8
    body = ECHO.pack(kind, 0, 0, ident, seq) + payload
    if v6:
        return body       # the kernel fills in the ICMPv6 checksum
    return ECHO.pack(kind, 0, checksum(body), ident, seq) + payload


def is_reply(packet, v6, ident, seq):
    if not v6:
        packet = packet[(packet[0] & 0x0F) * 4:] if packet else b""   # a raw IPv4 socket hands us the IP header
    if len(packet) < ECHO.size:
        return False
    kind, _, _, rid, rseq = ECHO.unpack_from(packet)
    return kind == (129 if v6 else 0) and rid == ident and rseq == seq


class PingChecker(Checker):
    def timed_out(self):
        return Result(False, f"ICMP connection to {self.label} timeout.")

    async def check(self):
        v6 = ":" in self.spec.connect_ip
        proto = socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP
        loop = asyncio.get_running_loop()
        ident = os.getpid() & 0xFFFF
        _seq[0] = seq = (_seq[0] + 1) & 0xFFFF
        try:
            sock = self.socket(socket.SOCK_RAW, proto)
        except PermissionError:
            return Result(False, f"ICMP connection to {self.label} failed (raw sockets need root).")

        async def steps():
            sock.connect((self.spec.connect_ip, 0))   # no I/O on a raw socket: only the target's packets reach us
            await loop.sock_sendall(sock, echo_request(v6, ident, seq))
            while not is_reply(await loop.sock_recv(sock, 65536), v6, ident, seq):
                pass
        return await self.exchange(steps, sock.close, f"ICMP connection to {self.label} failed.",
                                   f"ICMP connection to {self.label} success.")


CHECKER = PingChecker
