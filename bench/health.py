"""python -m bench.health [--reals N] [--delay-loop S] [--seconds T] [--kind TCP_CHECK|HTTP_GET] [--servers K]
                       [--compare N]

CPU the health engine spends per 1,000 checks a second: N reals, each a distinct address of 198.18.0.0/15 (all
local to a throwaway namespace: the prefix sits on its loopback), checked on port 80 every delay_loop seconds by
one engine on one asyncio loop in this process. The reals' servers are K processes of their own (SO_REUSEPORT,
each with its own accept queue of 65,535: a CPU-starved server must not drop SYNs and fail checks that are not
the engine's fault): they accept and close (TCP_CHECK) or answer one HTTP response (HTTP_GET) on one epoll each.

Reported per run: the checks/s asked (reals / delay_loop) and achieved, what keepalived's timing allows (a checker
runs again delay_loop after its previous attempt ended, so each period is delay_loop + the check's duration + how
late the timer fired), the failed checks, the namespace's SYNs dropped by full accept queues, the CPU (user +
system) of this process (the engine; the servers' is reported apart), cores per 1,000 checks/s, the share of the
run the engine waited for a CPU while runnable, and the load average around the run (the machine is shared). ``--compare N`` runs this engine and its coroutine-only baseline
interleaved in one process: the ratio holds when the load moves. Root (a namespace). A figure, never asserted."""
import argparse
import asyncio
import errno
import ipaddress
import json
import os
import select
import socket
import statistics
import time

from xlb.health import spec as hspec
from xlb.health.engine import Engine
from xlb.lab.netns import Topology
from xlb.lab.process import in_netns, run_in_netns

from . import unwind_on_sigterm

RESPONSE = b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n"
PREFIX = ipaddress.ip_network("198.18.0.0/15")   # every address of it is local in the bench's namespace
BACKLOG = 65535


def _serve(http):
    """One of the reals' servers (a forked child in the namespace): accept, answer HTTP if asked, close; no
    asyncio (a stream per connection fell behind 2,000 checks/s). Non-blocking on one epoll, so a slow client
    holds up nobody."""
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    ls.bind(("0.0.0.0", 80))
    ls.listen(BACKLOG)
    ep = select.epoll()
    ep.register(ls.fileno(), select.EPOLLIN)
    pending = {}          # fd -> request bytes so far (HTTP_GET)
    lfd = ls.fileno()
    while True:
        for fd, _ in ep.poll():
            if fd != lfd:
                _answer(ep, pending, fd)
                continue
            while True:                       # drain the accept queue
                try:
                    cfd, _ = ls._accept()     # the bare fd: no socket object per connection
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as e:          # EMFILE, a connection reset before it was accepted...
                    if e.errno in (errno.EMFILE, errno.ENFILE):
                        break
                    continue
                if not http:
                    os.close(cfd)
                    continue
                os.set_blocking(cfd, False)
                pending[cfd] = b""
                ep.register(cfd, select.EPOLLIN)


def _answer(ep, pending, fd):
    """HTTP_GET's side: once the request's head is in, one response and close (an error closes too)."""
    try:
        chunk = os.read(fd, 4096)
        head = pending[fd] + chunk
        if chunk and b"\r\n\r\n" not in head:
            pending[fd] = head
            return
        if chunk:
            os.write(fd, RESPONSE)
    except BlockingIOError:
        return
    except OSError:
        pass
    pending.pop(fd, None)
    os.close(fd)              # closing takes it out of the epoll


def _tune():
    """The namespace's sysctls for a full-rate run: accept queues as long as listen() asks, ports for every
    connection in TIME_WAIT's minute."""
    for path, value in (("net/core/somaxconn", BACKLOG), ("net/ipv4/tcp_max_syn_backlog", BACKLOG),
                        ("net/ipv4/ip_local_port_range", "1024 65535")):
        with open(f"/proc/sys/{path}", "w") as f:
            f.write(str(value))


def _service(n, kind, delay_loop):
    if n > PREFIX.num_addresses - 2:
        raise SystemExit(f"--reals: at most {PREFIX.num_addresses - 2} (one address of {PREFIX} each)")
    check = {"kind": kind, "retry": 0, "connect_timeout": 2}
    if kind == "HTTP_GET":
        check["url"] = {"path": "/"}
    reals = [(str(PREFIX[1 + i]), 80, 1, {}, f"real[{i}]") for i in range(n)]
    return hspec.parse_service("[198.51.100.10]:tcp:80", "tcp", {"delay_loop": delay_loop, "check": check},
                               reals, "service")


class _Counting(Engine):
    """The engine, counting failed results and measuring each checker's period (start to start) and how late
    each attempt started (after the previous one ended + delay_loop: the bench's checks have retry 0)."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.failed = 0
        self.last = {}              # id(checker state) -> (start, end) of its previous attempt
        self.periods = [0, 0.0, 0.0]     # count, total period, total lateness (seconds)

    def record(self, c, chk, result, started, now):
        if not result.ok:
            self.failed += 1
        prev = self.last.get(id(c))
        if prev is not None:
            self.periods[0] += 1
            self.periods[1] += started - prev[0]
            self.periods[2] += started - prev[1] - c.check.delay_loop
        self.last[id(c)] = (started, now)
        return Engine.record(self, c, chk, result, started, now)


def _snapshot(engine, servers):
    checks = sum(n for n, _ in engine.durations.values())
    busy = sum(s for _, s in engine.durations.values())
    return {"t": time.perf_counter(), "os": os.times(), "checks": checks, "busy": busy, "failed": engine.failed,
            "periods": list(engine.periods), "servers_cpu": sum(_cpu_of(p) for p in servers),
            "overflows": _listen_overflows(), "waited": _runqueue_wait()}


async def _measure(svc, seconds, servers=(), coroutines=False):
    """One engine's figures; ``coroutines``: the engine as it was before its callback path and bare-socket HTTP
    (every checker a coroutine, HTTP over asyncio streams): the same run's baseline."""
    engine = _Counting([svc], log=lambda line: None)
    if coroutines:
        for chk in engine.checkers.values():
            chk.begin = None
            if hasattr(chk, "fetch_stream"):      # HTTP over asyncio streams, as before fetch_plain
                chk.fetch_plain = lambda url, chk=chk: chk.fetch_stream(url, None, None)
    await engine.start()
    await asyncio.sleep(svc.delay_loop * 1.5)          # past the warmup spread
    load0 = os.getloadavg()
    a = _snapshot(engine, servers)
    await asyncio.sleep(seconds)
    b = _snapshot(engine, servers)
    load1 = os.getloadavg()
    down = sum(1 for c in engine.core.checkers if not c.is_up)
    await engine.stop(timeout=1)
    return _figures(a, b, len(svc.reals), svc.delay_loop, down, (load0, load1))


def _figures(a, b, reals, delay_loop, down, loads):
    wall = b["t"] - a["t"]
    checks = b["checks"] - a["checks"]
    user, system = b["os"].user - a["os"].user, b["os"].system - a["os"].system
    cores = (user + system) / wall
    rate = checks / wall
    periods = b["periods"][0] - a["periods"][0]
    period = (b["periods"][1] - a["periods"][1]) / periods if periods else None
    late = (b["periods"][2] - a["periods"][2]) / periods if periods else None
    duration = (b["busy"] - a["busy"]) / checks if checks else None
    return {"asked_checks_per_s": reals / delay_loop, "checks_per_s": round(rate, 1),
            # keepalived's timing: a checker runs again delay_loop after its attempt ended
            "timing_allows_checks_per_s": round(reals / (delay_loop + duration), 1) if duration else None,
            "mean_check_ms": round(duration * 1e3, 3) if duration else None,
            "mean_period_s": round(period, 4) if period else None,
            "mean_late_ms": round(late * 1e3, 2) if periods else None,
            "checks": checks, "failed": b["failed"] - a["failed"],
            "syn_dropped_accept_queue_full": b["overflows"] - a["overflows"],
            "checkers_down": down, "wall_s": round(wall, 3),
            "user_s": round(user, 3), "system_s": round(system, 3), "engine_cores": round(cores, 3),
            "cpu_per_1000_checks_per_s": round(cores / (rate / 1000), 4) if checks else None,
            "servers_cores": round((b["servers_cpu"] - a["servers_cpu"]) / wall, 3),
            # share of the run the engine was runnable but waited for a CPU (the shared machine, not the engine)
            "engine_runqueue_wait": round((b["waited"] - a["waited"]) / wall, 3),
            "loadavg_1m": [round(loads[0][0], 2), round(loads[1][0], 2)]}


def _cpu_of(pid):
    """user + system seconds of process ``pid`` (its /proc stat fields 14 and 15, in clock ticks)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _runqueue_wait():
    """Seconds the calling thread (the engine's loop) has spent runnable, waiting for a CPU (schedstat)."""
    with open("/proc/thread-self/schedstat") as f:
        return int(f.read().split()[1]) / 1e9


def _listen_overflows():
    """TcpExt ListenOverflows of the calling thread's namespace: SYNs dropped because an accept queue was full."""
    with open("/proc/thread-self/net/netstat") as f:
        lines = [line.split() for line in f if line.startswith("TcpExt:")]
    return int(dict(zip(lines[0], lines[1]))["ListenOverflows"])


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.health", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reals", type=int, default=1000)
    ap.add_argument("--delay-loop", type=float, default=1.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--kind", choices=("TCP_CHECK", "HTTP_GET"), default="TCP_CHECK")
    ap.add_argument("--servers", type=int, default=2, metavar="K", help="server processes (default 2)")
    ap.add_argument("--compare", type=int, default=0, metavar="N",
                    help="N interleaved runs of the engine and of its coroutine-only baseline: the ratio")
    args = ap.parse_args(argv)
    unwind_on_sigterm()      # a timeout's SIGTERM still removes the namespace and the servers
    svc = _service(args.reals, args.kind, args.delay_loop)
    with Topology(prefix="xbh") as topo:
        ns = topo.netns("health")
        topo.lo_addr(ns, f"{PREFIX[1]}/{PREFIX.prefixlen}")     # on lo: the whole prefix is local
        run_in_netns(ns, _tune)
        servers = [topo.spawn(ns, _serve, args.kind == "HTTP_GET").pid for _ in range(args.servers)]
        with in_netns(ns):
            _wait_listening(str(PREFIX[1]))
            out = (_compare(svc, args, servers) if args.compare
                   else asyncio.run(_measure(svc, args.seconds, servers)))
    out.update(kind=args.kind, reals=args.reals, delay_loop=args.delay_loop, servers=args.servers)
    print(json.dumps(out, indent=1))
    return out


def _compare(svc, args, servers):
    """Interleaved runs of both engines; medians of CPU per 1,000 checks/s and their ratio."""
    runs = {"callbacks": [], "coroutines": []}
    for _ in range(args.compare):
        for name in runs:
            runs[name].append(asyncio.run(_measure(svc, args.seconds, servers, coroutines=name == "coroutines")))
    med = {name: statistics.median(r["cpu_per_1000_checks_per_s"] for r in rs) for name, rs in runs.items()}
    return {"cpu_per_1000_checks_per_s": med, "ratio": med["callbacks"] / med["coroutines"],
            "checks_per_s": {name: statistics.median(r["checks_per_s"] for r in rs) for name, rs in runs.items()},
            "runs": runs}


def _wait_listening(addr, tries=200):
    for _ in range(tries):
        with socket.socket() as s:
            if s.connect_ex((addr, 80)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError("the bench's servers never listened")


if __name__ == "__main__":
    main()
