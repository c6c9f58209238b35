"""DNS_CHECK: one query over UDP (``type``, default SOA, for ``name``, default the root "."), recursion desired;
a reply with our id and QR set passes when its RCODE is 0. Replies with another id, or queries, are ignored
until the timeout, as keepalived does."""
import asyncio
import random
import socket
import struct

from .checker import Checker
from .spec import DNS_TYPES
from .state import Result

HEADER = struct.Struct("!HHHHHH")   # id, flags, qdcount, ancount, nscount, arcount
FLAG_RD = 0x0100
FLAG_QR = 0x8000


def query(qid, name, qtype):
    labels = [p for p in name.rstrip(".").split(".") if p] if name != "." else []
    qname = b"".join(bytes([len(p)]) + p.encode("idna") for p in labels) + b"\0"
    return HEADER.pack(qid, FLAG_RD, 1, 0, 0, 0) + qname + struct.pack("!HH", DNS_TYPES[qtype], 1)


def verdict(qid, reply):
    """None: not our answer (keep waiting); else the RCODE."""
    if len(reply) < HEADER.size:
        return None
    rid, flags = HEADER.unpack_from(reply)[:2]
    if rid != qid or not flags & FLAG_QR:
        return None
    return flags & 0xF


class DnsChecker(Checker):
    def timed_out(self):
        return Result(False, f"DNS_CHECK ({self.label}) read timeout from socket")

    async def check(self):
        loop = asyncio.get_running_loop()
        qid = random.getrandbits(16)
        sock = self.socket(socket.SOCK_DGRAM)
        try:
            try:
                await loop.sock_connect(sock, self.dst())
                await loop.sock_sendall(sock, query(qid, self.spec.name, self.spec.type))
            except OSError as e:
                return Result(False, f"DNS_CHECK ({self.label}) failed to write socket. ({e.strerror})")
            while True:
                try:
                    reply = await loop.sock_recv(sock, 4096)
                except OSError as e:
                    return Result(False, f"DNS_CHECK ({self.label}) failed to read socket; errno {e.errno} "
                                         f"({e.strerror})")
                rcode = verdict(qid, reply)
                if rcode is None:
                    continue
                if rcode:
                    return Result(False, f"DNS_CHECK ({self.label}) read error occurred. (rcode = {rcode})")
                return Result(True, f"DNS_CHECK ({self.label}) succeeded.")
        finally:
            sock.close()


CHECKER = DnsChecker
