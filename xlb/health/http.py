"""HTTP_GET: fetch every url (``GET path``, ``User-Agent: KeepAliveClient``, one connection each) and require its
status in status_code (default 200-299), the MD5 of its body equal to digest, and regex to match (or, with
regex_no_match, not to). All urls are fetched in one run, so fast_recovery has nothing left to hurry.

Without TLS it runs as callbacks on the engine's epoll (``begin``): per url one connect, one send, reads until
the server closes, no coroutine, future or selector key; ``check()`` is the same run as a coroutine (SSL_GET's
path, and for callers that await one check)."""
import asyncio
import errno
import hashlib
import re
import socket

from .checker import Checker
from .state import Result

MAX_BODY = 1 << 20   # bytes read per url; a larger body is hashed up to here


def request(url, check, port, default_port):
    """The request keepalived sends: HTTP/1.0, or 1.1 / 1.0C with Connection: close."""
    version = "1.1" if check.http_protocol == "1.1" else "1.0"
    close = "Connection: close\r\n" if check.http_protocol in ("1.1", "1.0C") else ""
    host = url.virtualhost or check.virtualhost or check.connect_ip
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    if port != default_port:
        host = f"{host}:{port}"
    return (f"GET {url.path} HTTP/{version}\r\nUser-Agent: KeepAliveClient\r\n{close}"
            f"Host: {host}\r\n\r\n").encode()


def parse(raw):
    """(status, body) of a response; status 0 when there is no status line."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        head, sep, body = raw.partition(b"\n\n")
    m = re.match(rb"HTTP/\d\.\d\s+(\d{3})", head)
    length = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", head)
    if length:
        body = body[:int(length.group(1))]
    return (int(m.group(1)) if m else 0), body


async def read_all(read):
    """Everything ``read(n)`` gives until the peer closes, up to MAX_BODY."""
    raw = b""
    while len(raw) < MAX_BODY:
        chunk = await read(65536)
        if not chunk:
            break
        raw += chunk
    return raw


class HttpChecker(Checker):
    default_port = 80

    def __init__(self, check, real_weight=1):
        super().__init__(check, real_weight)
        self.sock = self.waiter = self.done = None
        self.url_i, self.armed, self.raw, self.out, self.ok_msg = 0, False, None, b"", ""
        # bound once: no bound method made per wait (see tcp.py)
        self.on_connected, self.on_sendable, self.on_readable = self._connected, self._send, self._read
        self.abort = self._abort

    def deadline(self):
        return self.spec.connect_timeout * max(1, len(self.spec.url))

    def timed_out(self):
        return Result(False, f"Timeout connecting server {self.label}.")

    def tls(self):
        return None, None

    async def fetch(self, url):
        ctx, sni = self.tls()
        if ctx is None:
            return await self.fetch_plain(url)
        return await self.fetch_stream(url, ctx, sni)

    async def fetch_stream(self, url, ctx, sni):
        """One url's raw response over a stream (TLS when ``ctx``); None when the connection fails."""
        try:
            reader, writer = await self.open_stream(ssl=ctx, server_hostname=sni)
        except OSError:
            return None
        try:
            writer.write(request(url, self.spec, self.spec.connect_port, self.default_port))
            await writer.drain()
            return await read_all(reader.read)
        except OSError:
            return b""
        finally:
            writer.close()

    async def fetch_plain(self, url):
        """fetch() without TLS on the bare non-blocking socket: no transport, StreamReader or StreamWriter per url
        (a third of the CPU of a check)."""
        try:
            sock = self.socket(socket.SOCK_STREAM)
        except OSError:
            return None
        try:
            try:
                await self.connect(sock)
            except OSError:
                return None
            loop = asyncio.get_running_loop()
            try:
                await loop.sock_sendall(sock, request(url, self.spec, self.spec.connect_port, self.default_port))
                return await read_all(lambda n: loop.sock_recv(sock, n))
            except OSError:
                return b""
        finally:
            sock.close()

    async def check(self):
        ok_msg = ""
        for url in self.spec.url:
            failed, ok_msg = self.verdict(url, await self.fetch(url), ok_msg)
            if failed:
                return failed
        return Result(True, ok_msg)

    def verdict(self, url, raw, ok_msg):
        """(the failed Result or None, the success words so far) for one url's response (None: no connection)."""
        if raw is None:
            return Result(False, f"Error connecting server {self.label}."), ok_msg
        why, msg = self.judge(url, raw)
        if why:
            return Result(False, f"{why} server {self.label}."), ok_msg
        return None, ok_msg or f"{msg} success to {self.label} url({url.path})"

    # the callback path: one attempt at a time per checker (as the engine runs them), its state kept here

    def begin(self, poller, done):
        """Start one attempt on ``poller`` (the engine's Poller); ``done(Result)`` ends it. Returns the abort (the
        engine's deadline) while an url is in progress, None when ``done`` was called already."""
        self.waiter, self.done, self.ok_msg = poller, done, ""
        self._start(0)
        return self.abort if self.done is not None else None

    def _start(self, i):
        """Fetch url ``i``: connect, then send, then read (each step waits on the poller when it must)."""
        self.url_i, self.armed = i, False
        try:
            sock = self.socket(socket.SOCK_STREAM)
        except OSError:
            return self._url_done(None)
        try:
            err = sock.connect_ex(self.dst())
        except BaseException:
            sock.close()
            raise
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            return self._url_done(None)
        self.sock, self.raw = sock, bytearray()
        self.out = request(self.spec.url[i], self.spec, self.spec.connect_port, self.default_port)
        if err:
            return self._wait(False, self.on_connected)
        self._send()

    def _wait(self, readable, callback):
        fd = self.sock.fileno()
        if self.armed:
            self.waiter.rearm(fd, readable, callback)
        else:
            (self.waiter.add_reader if readable else self.waiter.add_writer)(fd, callback)
            self.armed = True

    def _connected(self):
        try:
            err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        except OSError:
            err = errno.EBADF
        if err:
            return self._url_done(None)
        self._send()

    def _send(self):
        try:
            sent = self.sock.send(self.out)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            return self._url_done(b"")
        self.out = self.out[sent:]
        if self.out:
            return self._wait(False, self.on_sendable)
        self._read()

    def _read(self):
        """What the server sends until it closes, up to MAX_BODY (as read_all)."""
        while len(self.raw) < MAX_BODY:
            try:
                chunk = self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return self._wait(True, self.on_readable)
            except OSError:
                return self._url_done(b"")
            if not chunk:
                break
            self.raw += chunk
        self._url_done(self.raw)

    def _close(self):
        """Close the url's socket and drop its response (up to MAX_BODY per checker must not stay between runs)."""
        sock, self.sock, self.raw = self.sock, None, None
        if sock is not None:
            self.waiter.remove_writer(sock.fileno())
            sock.close()

    def _url_done(self, raw):
        self._close()
        failed, self.ok_msg = self.verdict(self.spec.url[self.url_i], raw and bytes(raw), self.ok_msg)
        if failed is None and self.url_i + 1 < len(self.spec.url):
            return self._start(self.url_i + 1)
        done, self.done, self.waiter = self.done, None, None
        done(failed or Result(True, self.ok_msg))

    def _abort(self):
        if self.done is not None:
            self._close()
            self.done = self.waiter = None

    @staticmethod
    def judge(url, raw):
        """(failure words, success words) for one url's response, as keepalived's http_handle_response."""
        if not raw:
            return "Read, no data received from ", ""
        status, body = parse(raw)
        if not any(lo <= status <= hi for lo, hi in url.status_code):
            return "HTTP status code error to", ""
        msg = "HTTP status code"
        if url.digest:
            if hashlib.md5(body).hexdigest() != url.digest:
                return "MD5 digest error to", ""
            msg = "MD5 digest"
        if url.regex:
            if (re.search(url.regex.encode(), body) is not None) == url.regex_no_match:
                return "Regex match failed", ""
            msg = "Regex match"
        return "", msg


CHECKER = HttpChecker
