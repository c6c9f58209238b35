"""The engine's callback path (TCP_CHECK runs without a task, its times on a timer wheel): a connect that never
completes times out at the checker's deadline with keepalived's words and brings the real down, it comes back
when the listener accepts again, and stopping the engine mid-connect closes that socket (and the engine's epoll).
Waits end on events."""
import asyncio
import gc
import hashlib
import os
import socket

import pytest

from conftest import needs_root
from health_harness import REAL, Watched, one_real
from xlb.health import spec as hspec
from xlb.health.engine import Wheel
from xlb.health.http import HttpChecker
from xlb.health.state import REAL_DOWN, REAL_UP
from xlb.lab.netns import Topology
from xlb.lab.process import in_netns


@pytest.fixture
def ns():
    with Topology(prefix="xhe") as topo:
        name = topo.netns("eng")
        with in_netns(name):
            yield name


def _full_listener(address=REAL):
    """A listener whose accept queue is full (backlog 0 holds one connection, never accepted): the kernel drops
    every further SYN, so a connect to it hangs until its deadline."""
    ls = socket.create_server((address, 0), backlog=0)
    port = ls.getsockname()[1]
    filler = socket.create_connection((REAL, port))
    return ls, filler, port


def _fds():
    return len(os.listdir("/proc/self/fd"))


@needs_root
def test_a_hung_connect_times_out_at_the_deadline_and_the_real_comes_back(ns):
    ls, filler, port = _full_listener()
    check = {"kind": "TCP_CHECK", "retry": 1, "delay_before_retry": 0.05, "connect_timeout": 0.2}

    async def scenario():
        async with Watched([one_real(check, 9, delay_loop=0.05)]) as w:    # a port nobody listens on: refused
            await w.effect(REAL_DOWN)
        async with Watched([one_real(check, port, delay_loop=0.05)]) as w:
            down = await w.effect(REAL_DOWN)
            assert down.pool == {} and w.failures_before(REAL_DOWN) == 1     # alive at start: one failure is enough
            ls.setblocking(False)
            loop = asyncio.get_running_loop()
            loop.add_reader(ls.fileno(), lambda: ls.accept()[0].close())    # the queue drains: SYNs are answered
            try:
                await w.effect(REAL_UP)
            finally:
                loop.remove_reader(ls.fileno())
        return w
    try:
        w = asyncio.run(asyncio.wait_for(scenario(), 30))
    finally:
        filler.close()
        ls.close()
    label = f"[{REAL}]:tcp:{port}"
    assert f"TCP connection to {label} timedout." in w.lines
    assert f"Removing service {label} from VS [198.51.100.10]:tcp:80" in w.lines
    assert f"Adding service {label} to VS [198.51.100.10]:tcp:80" in w.lines


@needs_root
def test_stopping_the_engine_mid_connect_closes_the_socket_and_its_epoll(ns):
    ls, filler, port = _full_listener()
    check = {"kind": "TCP_CHECK", "retry": 0, "connect_timeout": 30}

    async def scenario():
        before = _fds()
        w = Watched([one_real(check, port, delay_loop=30)])
        await w.engine.start()
        await w.until(lambda: any(d.abort_attempt for d in w.engine.driven), "a connect in progress")
        assert _fds() == before + 2             # the connecting socket and the engine's epoll
        await w.engine.stop(timeout=0.5)
        assert _fds() == before and not w.engine.wheel.slots
    try:
        asyncio.run(asyncio.wait_for(scenario(), 30))
    finally:
        filler.close()
        ls.close()


@needs_root
def test_a_tcp_attempt_in_flight_holds_no_object_the_collector_tracks_but_its_socket(ns):
    """At 10,000 checks/s, every object the collector tracks that lives as long as an attempt (closures, their
    cells, a (callback, arg) tuple per timer) is promoted and makes the collector's full passes come sooner:
    a third of the engine's own CPU. Counted, not timed: N connects hang on a full accept queue, then halt()."""
    ls, filler, port = _full_listener("0.0.0.0")
    n = 100
    reals = [(f"127.0.0.{i + 1}", port, 1, {"check": {"kind": "TCP_CHECK", "connect_timeout": 60}}, f"real[{i}]")
             for i in range(n)]
    svc = hspec.parse_service("[198.51.100.10]:tcp:80", "tcp", {"warmup": 0, "delay_loop": 60}, reals, "service")

    async def scenario():
        w = Watched([svc])
        await w.engine.start()
        await w.until(lambda: all(d.abort_attempt for d in w.engine.driven), "every connect in progress")
        gc.collect()
        during = len(gc.get_objects())
        for d in w.engine.driven:
            d.abort()                      # the attempt ends; the checker stays
        w.engine.wheel.close()             # and so do its timers
        gc.collect()
        held = during - len(gc.get_objects())
        await w.engine.stop(timeout=0.5)
        return held
    gc.disable()
    try:
        held = asyncio.run(asyncio.wait_for(scenario(), 30))
    finally:
        gc.enable()
        filler.close()
        ls.close()
    assert held <= n + 20, held           # a socket each, and a few of the wheel's lists


@needs_root
def test_http_get_runs_as_callbacks_reads_a_body_of_many_reads_and_times_out_a_silent_server(ns):
    body, held = bytes(range(256)) * 1024, []       # 256 KiB: several reads, each a wait on the engine's epoll

    async def serve(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        if held:                                    # silent: holds the connection, never answers
            held.append(writer)
            return
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
        for i in range(0, len(body), 65536):
            writer.write(body[i:i + 65536])
            await writer.drain()
            await asyncio.sleep(0)
        writer.close()

    async def scenario():
        before = _fds()
        server = await asyncio.start_server(serve, REAL, 0)
        port = server.sockets[0].getsockname()[1]
        check = {"kind": "HTTP_GET", "retry": 0, "connect_timeout": 0.3,
                 "url": [{"path": "/a", "digest": hashlib.md5(body).hexdigest()}, {"path": "/b"}]}
        async with Watched([one_real(check, port, delay_loop=0.05)]) as w:
            assert not w.engine.tasks and len(w.engine.driven) == 1         # no coroutine: the callback path
            await w.passing(2)
            held.append(None)
            await w.effect(REAL_DOWN)
        for writer in held[1:]:
            writer.close()
        server.close()
        await server.wait_closed()
        await w.until(lambda: _fds() == before, "every socket closed")   # the engine's at the deadline too
        assert all(chk.raw is None for chk in w.engine.checkers.values())  # no response kept (up to 1 MiB each)
        return w, port
    w, port = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert f"MD5 digest success to [{REAL}]:tcp:{port} url(/a)" in w.lines
    assert f"Timeout connecting server [{REAL}]:tcp:{port}." in w.lines


def test_the_wheel_runs_timers_in_tick_order_with_one_loop_timer_per_tick():
    async def scenario():
        loop = asyncio.get_running_loop()
        wheel, ran = Wheel(loop, tick=0.01), []
        now = loop.time()
        for i in range(100):
            wheel.at(now + 0.05, ran.append, ("late", i))
        wheel.at(now + 0.02, ran.append, ("early", 0))
        assert len(wheel.handles) == 2
        await asyncio.sleep(0.1)
        while wheel.slots:
            await asyncio.sleep(0.01)
        assert ran == [("early", 0)] + [("late", i) for i in range(100)]
        assert not wheel.handles
    asyncio.run(asyncio.wait_for(scenario(), 10))


@needs_root
def test_a_callback_that_raises_fails_its_attempt_at_once_naming_the_exception(ns, monkeypatch):
    """A checker's bug in a callback the engine's epoll runs ends that attempt as a failure with the exception's
    name (as the coroutine path reports it) and closes its socket, rather than leaving it to time out."""
    def judge(url, raw):
        raise ValueError("no verdict")
    monkeypatch.setattr(HttpChecker, "judge", staticmethod(judge))

    async def serve(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.0 200 OK\r\n\r\nok")
        writer.close()

    async def scenario():
        before = _fds()
        server = await asyncio.start_server(serve, REAL, 0)
        port = server.sockets[0].getsockname()[1]
        check = {"kind": "HTTP_GET", "retry": 0, "connect_timeout": 30, "url": [{"path": "/"}]}
        async with Watched([one_real(check, port, delay_loop=0.05)]) as w:
            assert len(w.engine.driven) == 1
            await w.effect(REAL_DOWN)
        server.close()
        await server.wait_closed()
        await w.until(lambda: _fds() == before, "every socket closed")
        return w, port
    w, port = asyncio.run(asyncio.wait_for(scenario(), 20))   # its deadline (30 s) is never reached
    assert any(f"HTTP_GET to [{REAL}]:tcp:{port} failed: ValueError: no verdict" in line for line in w.lines), w.lines
    assert not any("Timeout" in line for line in w.lines), w.lines
