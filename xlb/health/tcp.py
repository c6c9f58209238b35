"""TCP_CHECK: the check passes when a TCP connection to the target is established (then closed at once)."""
import socket

from .checker import Checker
from .state import Result


class TcpChecker(Checker):
    def timed_out(self):
        return Result(False, f"TCP connection to {self.label} timedout.")

    async def check(self):
        sock = self.socket(socket.SOCK_STREAM)
        return await self.exchange(lambda: self.connect(sock), sock.close,
                                   f"TCP connection to {self.label} failed.",
                                   f"TCP connection to {self.label} success.")


CHECKER = TcpChecker
