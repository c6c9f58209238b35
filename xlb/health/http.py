"""HTTP_GET: fetch every url (``GET path``, ``User-Agent: KeepAliveClient``, one connection each) and require its
status in status_code (default 200-299), the MD5 of its body equal to digest, and regex to match (or, with
regex_no_match, not to). All urls are fetched in one run, so fast_recovery has nothing left to hurry."""
import asyncio
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
            raw = await self.fetch(url)
            if raw is None:
                return Result(False, f"Error connecting server {self.label}.")
            why, msg = self.judge(url, raw)
            if why:
                return Result(False, f"{why} server {self.label}.")
            ok_msg = ok_msg or f"{msg} success to {self.label} url({url.path})"
        return Result(True, ok_msg)

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
