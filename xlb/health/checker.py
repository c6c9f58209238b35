"""The one interface every checker kind implements, and what they share: the target's name in keepalived's form
(``[198.18.1.2]:tcp:80``), sockets bound as ``bindto``/``bind_port`` say, and the registry of kinds."""
import asyncio
import errno
import importlib
import ipaddress
import os
import socket

from .state import Result


class Failed(Exception):
    """Raised inside a check with keepalived's words for why it failed."""

# kind -> module of this package holding its Checker subclass
MODULES = {"TCP_CHECK": "tcp", "HTTP_GET": "http", "SSL_GET": "sslget", "MISC_CHECK": "misc", "DNS_CHECK": "dns",
           "UDP_CHECK": "udp", "PING_CHECK": "ping", "SMTP_CHECK": "smtp", "FILE_CHECK": "file"}


def family(addr):
    return socket.AF_INET6 if ipaddress.ip_address(addr).version == 6 else socket.AF_INET


def label(check, protocol="tcp"):
    """FMT_CHK: the address a checker talks to, as keepalived logs it."""
    proto = {"UDP_CHECK": "udp", "DNS_CHECK": "udp"}.get(check.kind, "tcp")
    via = f" via [{check.via}]" if check.via else ""   # check_via_vip: to the VIP, through this real
    if check.kind in ("MISC_CHECK", "FILE_CHECK", "PING_CHECK"):
        return f"[{check.connect_ip}]{via}"
    return f"[{check.connect_ip}]:{proto}:{check.connect_port}{via}"


class Checker:
    """One checker kind. ``check()`` runs one attempt and returns a Result whose reason is in keepalived's words;
    the engine bounds it by ``deadline()`` seconds and reports ``timed_out()`` when it runs over."""

    def __init__(self, check, real_weight=1):
        self.spec = check
        self.label = label(check)
        self.real_weight = real_weight   # the real's configured weight (FILE_CHECK adds to it)
        try:
            self.family = family(check.connect_ip)    # parsed once, not per attempt
        except ValueError:
            self.family = None                        # no address (FILE_CHECK): socket() says why if used

    def deadline(self):
        return self.spec.connect_timeout

    def timed_out(self):
        return Result(False, f"{self.spec.kind} to {self.label} timed out.")

    async def check(self) -> Result:
        raise NotImplementedError

    # shared plumbing

    @staticmethod
    async def exchange(steps, close, failed, success):
        """Await ``steps()``; an OSError fails with ``failed``, a Failed with its own words; ``close()`` always."""
        try:
            await steps()
        except Failed as e:
            return Result(False, str(e))
        except OSError:
            return Result(False, failed)
        finally:
            close()
        return Result(True, success)

    def socket(self, kind, proto=0):
        """A non-blocking socket of the target's family, bound to bindto/bind_port when given, marked for the
        policy route of check_via_vip (xlb/ops/viavip.py) when it has one."""
        fam = self.family or family(self.spec.connect_ip)
        s = socket.socket(fam, kind | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC, proto)
        try:
            if self.spec.so_mark:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, self.spec.so_mark)
            if self.spec.bindto or self.spec.bind_port:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((self.spec.bindto or ("::" if s.family == socket.AF_INET6 else "0.0.0.0"),
                        self.spec.bind_port or 0))
        except OSError:
            s.close()
            raise
        return s

    async def connect(self, sock):
        """``loop.sock_connect`` without its per-call work this engine does not need (parsing the address again,
        a done-callback per attempt): one non-blocking connect, then one wait for the socket to be writable."""
        err = sock.connect_ex(self.dst())
        if err == errno.EINPROGRESS:
            loop = asyncio.get_running_loop()
            fut = loop.create_future()
            fd = sock.fileno()
            loop.add_writer(fd, _wake, fut)
            try:
                await fut
            finally:
                loop.remove_writer(fd)
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, os.strerror(err))

    def dst(self, port=None):
        return (self.spec.connect_ip, self.spec.connect_port if port is None else port)

    async def open_stream(self, ssl=None, server_hostname=None):
        """A connected (reader, writer) to the target; TLS when ``ssl`` is a context."""
        sock = self.socket(socket.SOCK_STREAM)
        try:
            await self.connect(sock)
        except BaseException:
            sock.close()
            raise
        kw = {"ssl": ssl, "server_hostname": server_hostname} if ssl else {}
        return await asyncio.open_connection(sock=sock, **kw)


def _wake(fut):
    if not fut.done():
        fut.set_result(None)


def build(check, real_weight=1):
    """The Checker for a resolved spec.Check."""
    mod = importlib.import_module(f".{MODULES[check.kind]}", __package__)
    return mod.CHECKER(check, real_weight)
