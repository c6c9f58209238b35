"""TCP_CHECK: the check passes when a TCP connection to the target is established (then closed at once).

Run as callbacks (``begin``): one non-blocking connect, one wait for writability, no coroutine; ``check()`` is
the same attempt as a coroutine (kept for callers that await one check)."""
import errno
import socket

from .checker import Checker
from .state import Result


class TcpChecker(Checker):
    def __init__(self, check, real_weight=1):
        super().__init__(check, real_weight)
        self.failed = Result(False, f"TCP connection to {self.label} failed.")
        self.success = Result(True, f"TCP connection to {self.label} success.")

    def timed_out(self):
        return Result(False, f"TCP connection to {self.label} timedout.")

    async def check(self):
        sock = self.socket(socket.SOCK_STREAM)
        return await self.exchange(lambda: self.connect(sock), sock.close, self.failed.reason, self.success.reason)

    def begin(self, loop, done):
        """Start one attempt; ``done(Result)`` ends it. ``loop``: what waits for writability (add_writer /
        remove_writer: the event loop, or the engine's Poller). Returns the abort (the engine's deadline) while
        the connect is in progress, None when ``done`` was called already."""
        try:
            sock = self.socket(socket.SOCK_STREAM)
        except OSError:
            done(self.failed)
            return None
        try:
            err = sock.connect_ex(self.dst())
        except BaseException:
            sock.close()
            raise
        if err != errno.EINPROGRESS:
            sock.close()
            done(self.failed if err else self.success)
            return None
        fd = sock.fileno()

        def writable():
            loop.remove_writer(fd)
            try:
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            except OSError:
                err = errno.EBADF
            sock.close()
            done(self.failed if err else self.success)

        def abort():
            loop.remove_writer(fd)
            sock.close()
        try:
            loop.add_writer(fd, writable)
        except BaseException:
            sock.close()
            raise
        return abort


CHECKER = TcpChecker
