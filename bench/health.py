"""python -m bench.health [--reals N] [--delay-loop S] [--seconds T] [--kind TCP_CHECK|HTTP_GET] [--compare N]

CPU the health engine spends per 1,000 checks a second: N reals (127.0.x.y:80 on the loopback of a throwaway
namespace, one server in a child process answers them all) checked every delay_loop seconds by one engine on one
asyncio loop. CPU is this process's user + system time over the measured window (the server's is not counted).
Root (a namespace). A figure, never asserted."""
import argparse
import asyncio
import ipaddress
import json
import os
import socket
import statistics
import time

from xlb.health import spec as hspec
from xlb.health.engine import Engine
from xlb.lab.netns import Topology
from xlb.lab.process import in_netns

from . import unwind_on_sigterm

RESPONSE = b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n"


def _serve(http):
    """The reals' server: accept, answer HTTP if asked, close (runs in a forked child of the namespace). For TCP
    a plain accept loop: it keeps up with 10,000 checks/s, where a stream per connection fell behind."""
    if not http:
        with socket.create_server(("0.0.0.0", 80), backlog=4096) as ls:
            while True:
                ls.accept()[0].close()
    async def handle(reader, writer):
        try:
            if http:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(RESPONSE)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass                      # the engine stopped mid-check
        finally:
            writer.close()

    async def main():
        server = await asyncio.start_server(handle, "0.0.0.0", 80, backlog=4096, reuse_address=True)
        async with server:
            await server.serve_forever()
    asyncio.run(main())


def _service(n, kind, delay_loop):
    check = {"kind": kind, "retry": 0, "connect_timeout": 2}
    if kind == "HTTP_GET":
        check["url"] = {"path": "/"}
    reals = [(str(ipaddress.IPv4Address("127.0.1.0") + i), 80, 1, {}, f"real[{i}]") for i in range(n)]
    return hspec.parse_service("[198.51.100.10]:tcp:80", "tcp", {"delay_loop": delay_loop, "check": check},
                               reals, "service")


async def _measure(svc, seconds, coroutines=False):
    """One engine's figures; ``coroutines``: the engine as it was before its callback path and bare-socket HTTP
    (every checker a coroutine, HTTP over asyncio streams): the same run's baseline."""
    ups = []
    engine = Engine([svc], on_effect=lambda e: ups.append(e.kind), log=lambda line: None)
    if coroutines:
        for chk in engine.checkers.values():
            chk.begin = None
            if hasattr(chk, "fetch_stream"):      # HTTP over asyncio streams, as before fetch_plain
                chk.fetch_plain = lambda url, chk=chk: chk.fetch_stream(url, None, None)
    await engine.start()
    await asyncio.sleep(svc.delay_loop * 1.5)          # past the warmup spread
    before = (sum(c for c, _ in engine.durations.values()), os.times())
    t0 = time.perf_counter()
    await asyncio.sleep(seconds)
    wall = time.perf_counter() - t0
    checks = sum(c for c, _ in engine.durations.values()) - before[0]
    after = os.times()
    user, system = after.user - before[1].user, after.system - before[1].system
    cpu = user + system
    down = sum(1 for c in engine.core.checkers if not c.is_up)
    await engine.stop(timeout=1)
    return {"checks": checks, "wall_s": wall, "cpu_s": cpu, "user_s": user, "system_s": system,
            "checks_per_s": checks / wall,
            "cpu_per_1000_checks_per_s": (cpu / wall) / (checks / wall / 1000) if checks else None,
            "checkers_down": down}


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.health", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reals", type=int, default=1000)
    ap.add_argument("--delay-loop", type=float, default=1.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--kind", choices=("TCP_CHECK", "HTTP_GET"), default="TCP_CHECK")
    ap.add_argument("--compare", type=int, default=0, metavar="N",
                    help="N interleaved runs of the engine and of its coroutine-only baseline: the ratio")
    args = ap.parse_args(argv)
    unwind_on_sigterm()      # a timeout's SIGTERM still removes the namespace and the server
    with Topology(prefix="xbh") as topo:
        ns = topo.netns("health")
        topo.spawn(ns, _serve, args.kind == "HTTP_GET")
        with in_netns(ns):
            _wait_listening()
            svc = _service(args.reals, args.kind, args.delay_loop)
            out = _compare(svc, args) if args.compare else asyncio.run(_measure(svc, args.seconds))
    out.update(kind=args.kind, reals=args.reals, delay_loop=args.delay_loop)
    print(json.dumps(out, indent=1))
    return out


def _compare(svc, args):
    """Interleaved runs of both engines; medians of CPU per 1,000 checks/s and their ratio."""
    runs = {"callbacks": [], "coroutines": []}
    for _ in range(args.compare):
        for name in runs:
            runs[name].append(asyncio.run(_measure(svc, args.seconds, coroutines=name == "coroutines")))
    med = {name: statistics.median(r["cpu_per_1000_checks_per_s"] for r in rs) for name, rs in runs.items()}
    return {"cpu_per_1000_checks_per_s": med, "ratio": med["callbacks"] / med["coroutines"],
            "checks_per_s": {name: statistics.median(r["checks_per_s"] for r in rs) for name, rs in runs.items()},
            "runs": runs}


def _wait_listening(tries=200):
    for _ in range(tries):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", 80)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError("the bench's server never listened")


if __name__ == "__main__":
    main()
