"""UDP_CHECK: send ``payload`` to the target. With require_reply a reply must come within connect_timeout, of
min..max_reply_length bytes and matching the given hex (X: any nibble) on the bytes both have; without it the
check fails only on an ICMP error (port unreachable...) within connect_timeout, as keepalived does."""
import asyncio
import socket

from .checker import Checker
from .state import Result


def matches(reply, check):
    """keepalived's check_udp_reply: length bounds, then the masked comparison on the common prefix."""
    if check.reply is None:
        return True
    if not check.min_reply_length <= len(reply) <= check.max_reply_length:
        return False
    mask = check.reply_mask or bytes(len(check.reply))
    return all((a ^ b) & ~m & 0xFF == 0 for a, b, m in zip(reply, check.reply, mask))


class UdpChecker(Checker):
    def deadline(self):
        return self.spec.connect_timeout + 1.0   # the check itself waits connect_timeout for an ICMP error

    def timed_out(self):
        return Result(False, f"UDP connection to {self.label} failed.")

    async def check(self):
        loop = asyncio.get_running_loop()
        sock = self.socket(socket.SOCK_DGRAM)
        fail = Result(False, f"UDP connection to {self.label} failed.")
        try:
            try:
                await loop.sock_connect(sock, self.dst())
                await loop.sock_sendall(sock, self.spec.payload)
                async with asyncio.timeout(self.spec.connect_timeout):    # not wait_for: see commands.run
                    reply = await loop.sock_recv(sock, 65536)
            except TimeoutError:
                return fail if self.spec.require_reply else Result(True, f"UDP connection to {self.label} success.")
            except OSError:
                return fail
        finally:
            sock.close()
        if self.spec.require_reply and not matches(reply, self.spec):
            return Result(False, f"UDP check to {self.label} reply data mismatch.")
        return Result(True, f"UDP connection to {self.label} success.")


CHECKER = UdpChecker
