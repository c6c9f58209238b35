"""Each checker kind against a real server on the loopback of a namespace the test creates: the real goes down
after the number of failed attempts keepalived's rules predict and comes back after one success, with the log
lines in keepalived's words. Short delays (0.05-0.2 s); waits end on events."""
import asyncio
import hashlib
import os
import shutil
import socket
import ssl
import subprocess

import pytest

from conftest import needs_root
from health_harness import REAL, Watched, lost_cancel, one_real
from xlb.health.state import REAL_DOWN, REAL_UP, WEIGHT
from xlb.lab.netns import Topology
from xlb.lab.process import in_netns

pytestmark = needs_root
FAST = {"delay_loop": 0.1}


@pytest.fixture
def ns():
    """A fresh namespace (lo up): every socket of the test lives there."""
    with Topology(prefix="xhc") as topo:
        name = topo.netns("chk")
        with in_netns(name):
            yield topo, name


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


async def tcp_server(handler, port=0):
    server = await asyncio.start_server(handler, REAL, port)
    return server, server.sockets[0].getsockname()[1]


async def udp_server(protocol, port=0):
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(lambda: protocol,
                                                                             local_addr=(REAL, port))
    return transport, transport.get_extra_info("sockname")[1]


async def stop(server):
    server.close()
    await server.wait_closed()


async def _silent(reader, writer):
    writer.close()


def test_tcp_check_removes_a_real_after_retry_plus_one_failures_and_adds_it_back(ns):
    async def scenario():
        server, port = await tcp_server(_silent)
        check = {"kind": "TCP_CHECK", "retry": 2, "delay_before_retry": 0.05, "connect_timeout": 1}
        async with Watched([one_real(check, port, **FAST)]) as w:
            await w.passing(2)
            await stop(server)
            down = await w.effect(REAL_DOWN)
            assert down.pool == {}
            assert w.failures_before(REAL_DOWN) == 3
            server, _ = await tcp_server(_silent, port)
            up = await w.effect(REAL_UP)
            assert up.pool == {(REAL, port): 1}
            await stop(server)
        label = f"[{REAL}]:tcp:{port}"
        assert f"TCP connection to {label} failed." in w.lines
        assert f"TCP_CHECK on service {label} failed after 2 retries." in w.lines
        assert f"Removing service {label} from VS [198.51.100.10]:tcp:80" in w.lines
        assert w.lines.count(f"TCP connection to {label} failed.") == 1    # once per state change
        assert f"Adding service {label} to VS [198.51.100.10]:tcp:80" in w.lines
    run(scenario())


class Served:
    """A stream server's connection handler: serve() one exchange, then flush and hang up."""

    async def handle(self, reader, writer):
        try:
            await self.serve(reader, writer)
            await writer.drain()
        finally:
            writer.close()


class Web(Served):
    """A tiny HTTP server: status and body per path, records every request."""

    def __init__(self):
        self.status, self.body, self.paths, self.requests = 200, b"healthy\n", {"/health"}, []

    async def serve(self, reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        self.requests.append(head)
        status = self.status if head.split()[1].decode() in self.paths else 404
        writer.write(b"HTTP/1.0 %d X\r\nContent-Length: %d\r\n\r\n%s" % (status, len(self.body), self.body))


def test_http_get_status_digest_and_path(ns):
    web = Web()

    async def scenario():
        server, port = await tcp_server(web.handle)
        check = {"kind": "HTTP_GET", "retry": 1, "delay_before_retry": 0.05, "virtualhost": "www.example.test",
                 "url": [{"path": "/health", "digest": hashlib.md5(b"healthy\n").hexdigest()},
                         {"path": "/health", "status_code": ["200-204", 418]}]}
        async with Watched([one_real(check, port, **FAST)]) as w:
            await w.passing()
            web.status = 500                                   # status outside 200-204 and 418
            await w.effect(REAL_DOWN, 1)
            assert w.failures_before(REAL_DOWN) == 2
            web.status = 204
            await w.effect(REAL_UP, 1)
            web.body = b"changed\n"                            # digest mismatch
            await w.effect(REAL_DOWN, 2)
            web.body = b"healthy\n"
            await w.effect(REAL_UP, 2)
            web.paths = {"/other"}                             # the path is gone: 404
            await w.effect(REAL_DOWN, 3)
        await stop(server)
        label = f"[{REAL}]:tcp:{port}"
        assert f"HTTP status code error to server {label}." in w.lines
        assert f"MD5 digest error to server {label}." in w.lines
        assert f"HTTP_CHECK on service {label} failed after 1 retries." in w.lines
        assert f"MD5 digest success to {label} url(/health)" in w.lines
        head = web.requests[0].decode()
        assert head.startswith("GET /health HTTP/1.0\r\n")
        assert "User-Agent: KeepAliveClient\r\n" in head and f"Host: www.example.test:{port}\r\n" in head
    run(scenario())


def test_http_get_regex_and_http_1_1(ns):
    web = Web()

    async def scenario():
        server, port = await tcp_server(web.handle)
        check = {"kind": "HTTP_GET", "retry": 0, "http_protocol": "1.1",
                 "url": {"path": "/health", "regex": "^heal"}}
        async with Watched([one_real(check, port, **FAST)]) as w:
            await w.passing()
            web.body = b"sick\n"
            await w.effect(REAL_DOWN)
            assert w.failures_before(REAL_DOWN) == 1
        await stop(server)
        assert f"Regex match failed server [{REAL}]:tcp:{port}." in w.lines
        assert b"GET /health HTTP/1.1\r\n" in web.requests[0] and b"Connection: close\r\n" in web.requests[0]
    run(scenario())


@pytest.mark.skipif(not shutil.which("openssl"), reason="needs the openssl CLI")
def test_ssl_get_with_sni_and_a_self_signed_certificate(ns, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=www.example.test", "-keyout", key, "-out", cert], check=True, capture_output=True)
    web, names = Web(), []
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.sni_callback = lambda sock, name, c: names.append(name)

    async def scenario():
        server = await asyncio.start_server(web.handle, REAL, 0, ssl=ctx)
        port = server.sockets[0].getsockname()[1]
        check = {"kind": "SSL_GET", "retry": 0, "enable_sni": True, "virtualhost": "www.example.test",
                 "ca": str(cert), "url": {"path": "/health", "digest": hashlib.md5(b"healthy\n").hexdigest()}}
        async with Watched([one_real(check, port, **FAST)]) as w:
            await w.passing()
            await stop(server)
            await w.effect(REAL_DOWN)
            server = await asyncio.start_server(web.handle, REAL, port, ssl=ctx)
            await w.effect(REAL_UP)
            await stop(server)
        assert names and set(names) == {"www.example.test"}
        assert f"Error connecting server [{REAL}]:tcp:{port}." in w.lines
        assert f"MD5 digest success to [{REAL}]:tcp:{port} url(/health)" in w.lines
    run(scenario())


def test_misc_check_exit_codes_timeout_and_misc_dynamic(ns, tmp_path):
    status = tmp_path / "status"
    status.write_text("0")
    script = ["/bin/sh", "-c", f'read s < {status}; [ "$s" = sleep ] && exec sleep 30; exit "$s"']

    async def scenario():
        check = {"kind": "MISC_CHECK", "misc_path": script, "misc_timeout": 0.3, "misc_dynamic": True}
        async with Watched([one_real(check, 0, **FAST)]) as w:
            await w.passing()
            status.write_text("1")
            await w.effect(REAL_DOWN, 1)
            assert w.failures_before(REAL_DOWN) == 1          # MISC_CHECK's retry defaults to 0
            status.write_text("12")                           # misc_dynamic: up, weight 12 - 2
            up = await w.effect(REAL_UP, 1)
            weight = await w.effect(WEIGHT, 1)
            assert (weight.weight, up.weight, up.pool) == (10, 10, {(REAL, 0): 10})
            status.write_text("sleep")                        # past misc_timeout: killed, a failure
            await w.effect(REAL_DOWN, 2)
            status.write_text("0")
            await w.effect(REAL_UP, 2)
        assert f"Misc check to [{REAL}] for [/bin/sh] failed (exited with status 1)." in w.lines
        assert f"Misc check to [{REAL}] for [/bin/sh] timed out." in w.lines
        assert f"Changing weight from 1 to 10 for inactive service [{REAL}]:0 of VS [198.51.100.10]:tcp:80" \
            in w.lines
    run(scenario())


class Dns(asyncio.DatagramProtocol):
    """Answers every query with its id, QR set and ``rcode``; with ``decoy`` first a reply with another id."""

    def __init__(self):
        self.rcode, self.decoy, self.queries = 0, True, []

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.queries.append(data)
        qid, flags = int.from_bytes(data[:2], "big"), 0x8180 | self.rcode
        if self.decoy:
            self.transport.sendto(((qid ^ 1).to_bytes(2, "big") + flags.to_bytes(2, "big") + data[4:]), addr)
        self.transport.sendto(data[:2] + flags.to_bytes(2, "big") + data[4:], addr)


def test_dns_check_id_qr_and_rcode(ns):
    dns = Dns()

    async def scenario():
        transport, port = await udp_server(dns)
        check = {"kind": "DNS_CHECK", "retry": 1, "delay_before_retry": 0.05, "connect_timeout": 0.5}
        async with Watched([one_real(check, port, **FAST)]) as w:
            await w.passing(2)
            assert not any(e.kind == REAL_DOWN for e in w.effects)   # a decoy id is skipped, not failed
            dns.rcode = 2                                            # SERVFAIL
            await w.effect(REAL_DOWN, 1)
            assert w.failures_before(REAL_DOWN) == 2
            dns.rcode = 0
            await w.effect(REAL_UP, 1)
            transport.close()                                        # port unreachable
            await w.effect(REAL_DOWN, 2)
        q = dns.queries[0]
        assert q[2:4] == b"\x01\x00" and q[12:] == b"\x00\x00\x06\x00\x01"   # RD; "." SOA IN
        assert f"DNS_CHECK ([{REAL}]:udp:{port}) read error occurred. (rcode = 2)" in w.lines
    run(scenario())


class Echo(asyncio.DatagramProtocol):
    def __init__(self):
        self.reply = b"OK-1"

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        if self.reply is not None:
            self.transport.sendto(self.reply, addr)


def test_udp_check_require_reply_with_wildcards(ns):
    echo = Echo()

    async def scenario():
        transport, port = await udp_server(echo)
        check = {"kind": "UDP_CHECK", "retry": 0, "payload": "7069 6e67", "require_reply": "4f4b 2dXX",
                 "connect_timeout": 0.2}
        async with Watched([one_real(check, port, **FAST)]) as w:
            await w.passing()
            echo.reply = b"NO-1"
            await w.effect(REAL_DOWN, 1)
            echo.reply = b"OK-7"                                       # X matches any nibble
            await w.effect(REAL_UP, 1)
            echo.reply = None                                          # no reply at all
            await w.effect(REAL_DOWN, 2)
        transport.close()
        assert f"UDP check to [{REAL}]:udp:{port} reply data mismatch." in w.lines
    run(scenario())


def test_udp_check_without_require_reply_fails_only_on_an_icmp_error(ns):
    echo = Echo()
    echo.reply = None                                                  # a silent server passes

    async def scenario():
        transport, port = await udp_server(echo)
        check = {"kind": "UDP_CHECK", "retry": 0, "connect_timeout": 0.1}
        async with Watched([one_real(check, port, **FAST)]) as w:
            await w.passing(2)
            assert not any(e.kind == REAL_DOWN for e in w.effects)
            transport.close()                                          # ICMP port unreachable
            await w.effect(REAL_DOWN)
            transport, _ = await udp_server(echo, port)
            await w.effect(REAL_UP)
        transport.close()
    run(scenario())



def test_a_udp_check_cancelled_as_its_reply_comes_ends(ns):
    """Engine.halt (a reload) cancels a UDP_CHECK waiting for its reply: the cancel comes k turns of the loop
    after the reply arrived, for every k around the check's own wake-up; a cancel asked while the check still
    ran must end it (Python 3.11's asyncio.wait_for returned the reply instead, and the halt waited forever)."""
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind((REAL, 0))
    server.setblocking(False)
    check = {"kind": "UDP_CHECK", "retry": 0, "payload": "7069 6e67", "require_reply": "4f4b", "connect_timeout": 5}
    (chk,) = Watched([one_real(check, server.getsockname()[1])]).engine.checkers.values()

    async def one(k):
        task = asyncio.create_task(chk.check())
        while True:                                                  # the check sent its payload
            await asyncio.sleep(0)
            try:
                _, peer = server.recvfrom(100)
                break
            except BlockingIOError:
                pass
        server.sendto(b"OK", peer)                                   # the reply waits in the check's socket
        return await lost_cancel(task, k)

    try:
        lost = {k: got for k in range(8) if (got := run(one(k))) is not None}
    finally:
        server.close()
    assert not lost

def test_ping_check_across_a_veth(ns):
    topo, lb = ns
    rs = topo.netns("rs")
    topo.veth(lb, "eth0", rs, "eth0")
    topo.addr(lb, "eth0", "198.18.7.1/24")
    topo.addr(rs, "eth0", "198.18.7.2/24")

    async def scenario():
        check = {"kind": "PING_CHECK", "retry": 1, "delay_before_retry": 0.05, "connect_timeout": 0.2}
        async with Watched([one_real(check, 0, address="198.18.7.2", **FAST)]) as w:
            await w.passing()
            await asyncio.to_thread(set_link, topo, rs, "down")
            await w.effect(REAL_DOWN)
            assert w.failures_before(REAL_DOWN) == 2
            await asyncio.to_thread(set_link, topo, rs, "up")
            await w.effect(REAL_UP)
        assert "ICMP connection to [198.18.7.2] success." in w.lines
        assert "PING_CHECK on service [198.18.7.2] failed after 1 retries." in w.lines
    run(scenario())


def set_link(topo, ns, state):
    with topo._ipr(ns) as ipr:
        ipr.link("set", index=topo._index(ipr, ns, "eth0"), state=state)


class Smtp(Served):
    def __init__(self):
        self.greeting, self.helos = b"220 mx ready\r\n", []

    async def serve(self, reader, writer):
        writer.write(self.greeting)
        line = await reader.readline()
        if line.startswith(b"HELO"):
            self.helos.append(line)
            writer.write(b"250-mx\r\n250 ok\r\n")
            await reader.readline()
            writer.write(b"221 bye\r\n")


def test_smtp_check_greeting_and_helo(ns):
    mx = Smtp()

    async def scenario():
        server, port = await tcp_server(mx.handle)
        check = {"kind": "SMTP_CHECK", "retry": 0, "helo_name": "lb.example.test"}
        async with Watched([one_real(check, port, **FAST)]) as w:
            await w.passing()
            mx.greeting = b"554 go away\r\n"
            await w.effect(REAL_DOWN)
            mx.greeting = b"220 back\r\n"
            await w.effect(REAL_UP)
        await stop(server)
        assert mx.helos[0] == b"HELO lb.example.test\r\n"
        assert f"Bad greeting from SMTP server [{REAL}]:tcp:{port}. SMTP status code = 554" in w.lines
    run(scenario())


def test_file_check_value_and_weight(ns, tmp_path):
    path = tmp_path / "state"
    path.write_text("0\n")

    async def scenario():
        check = {"kind": "FILE_CHECK", "track_file": str(path), "weight": 0}
        async with Watched([one_real(check, 80, **FAST)]) as w:
            await w.passing()
            path.write_text("1\n")
            await w.effect(REAL_DOWN)
            os.unlink(path)                                  # unreadable stays down
            await w.results(len([t for t in w.timeline if t[0] == "result"]) + 2)
            path.write_text("0\n")
            await w.effect(REAL_UP)
        assert f"FILE_CHECK {path} value 1 - setting down" in w.lines
    run(scenario())


def test_an_unreadable_ca_file_fails_the_check_not_the_engine(ns):
    async def scenario():
        check = {"kind": "SSL_GET", "retry": 0, "ca": "/nonexistent/ca.pem", "url": {"path": "/"}}
        async with Watched([one_real(check, 443, **FAST)]) as w:
            await w.effect(REAL_DOWN)
            await w.results(3)                                   # and it keeps checking
        said = "SSL_GET to [127.0.0.1]:tcp:443 failed: FileNotFoundError: [Errno 2]"
        assert any(line.startswith(said) for line in w.lines), w.lines
    run(scenario())
