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
        # begin()'s attempt in progress (one at a time per checker, as the engine runs them): kept here, with
        # its callbacks bound once, rather than in closures and cells made per attempt (every such object the
        # collector tracks that outlives a young pass brings its full passes sooner, at 10,000 checks/s)
        self.sock = self.waiter = self.done = None
        self.on_writable, self.abort = self._writable, self._abort

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
            if err == errno.EINPROGRESS:
                loop.add_writer(sock.fileno(), self.on_writable)
        except BaseException:
            sock.close()
            raise
        if err != errno.EINPROGRESS:
            sock.close()
            done(self.failed if err else self.success)
            return None
        self.sock, self.waiter, self.done = sock, loop, done
        return self.abort

    def _end(self):
        """The attempt in progress, no longer waited for: (socket, done)."""
        sock, done = self.sock, self.done
        self.waiter.remove_writer(sock.fileno())
        self.sock = self.waiter = self.done = None
        return sock, done

    def _writable(self):
        sock, done = self._end()
        try:
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        except OSError:
            err = errno.EBADF
        sock.close()
        done(self.failed if err else self.success)

    def _abort(self):
        if self.sock is not None:
            self._end()[0].close()


CHECKER = TcpChecker
