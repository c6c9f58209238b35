"""The soak (issue 18): real TCP and UDP through the DR lab while the daemon is reloaded, edited, health-flipped
and (in the fault profile) killed with SIGKILL and restarted on its pins.

`Load` runs in the client namespace (one forked child, asyncio): about RATE new connections a second (TCP to the
fwmark service on 80/443, one in five a UDP question to VIP:53) and LONG long-lived TCP connections to VIP:LINE
that each send a line and wait for the reply about once a second. A long-lived connection fails on a reset, an EOF,
a reply from another real, or a stall (no reply within STALL seconds). `Soak` drives the daemon meanwhile and samples
its RSS, CPU time and connection-table entries. tests/test_soak.py asserts; `make soak` runs it for 10 minutes.
"""
import asyncio
import json
import os
import random
import signal
import socket
import time
from collections import Counter
from pathlib import Path

from xlb.lab.demo import CLIENTS4, REALS4, VIP4
from xlb.lab.process import run_in_netns
from xlb.lab.servers import tcp_echo_name_server
from xlb.ops import control
from harness import LINE, DrLab, cli_captured, wait_for

RATE = 200  # new connections a second
LONG = 300  # long-lived connections
STALL = 5.0  # seconds without a reply that count as a stall
UDP_PORT, CHECK_PORT = 53, 9000
STABLE = ("rs1", "rs2")  # configured all along; rs3 comes and goes with the reloads
HEALTH_FLIPPED = 1  # rs2's TCP check (port CHECK_PORT) fails and recovers

TIMEOUTS = """
[timeouts]
tcp = 20
tcpfin = 2
udp = 2
syn = 3

[tables]
conns = 65536
templates = 16384
"""

CHECK = f"""
  [service.check]
  kind = "TCP_CHECK"
  delay_loop = 1
  connect_port = {CHECK_PORT}
  connect_timeout = 1
  retry = 1
  delay_before_retry = 0.5
"""


def _reals(weights, with_rs3):
    out = ""
    for i, w in enumerate(weights[:3 if with_rs3 else 2]):
        out += f'\n  [[service.real]]\n  address = "{REALS4[i]}"\n  weight = {w}\n'
    return out


def config(step):
    """The config of reload number `step`: weights cycle (0 included) and rs3 is in every other one in the
    long-lived and UDP services; the mark rule moves (its ports and its place among the rules). The health-checked
    fwmark service keeps its reals: a reload that changes a service restarts its checkers (xlb/ops/health.py
    Checks.update), which would hide the flips."""
    weights = [(1, 2, 1), (3, 1, 2), (0, 1, 1), (2, 0, 3)][step % 4]
    with_rs3 = step % 2 == 0
    fwm = '[[mark]]\nmark = 1\nproto = "tcp"\ndst = "%s/32"\nports = %s\n' % (
        VIP4, "[80, 443]" if step % 3 else '[443, 80, "8000-8002"]')
    other = '[[mark]]\nmark = 2\nproto = "tcp"\ndst = "198.51.100.64/26"\nports = [80]\n'
    marks = fwm + "\n" + other if step % 2 else other + "\n" + fwm
    return TIMEOUTS + "\n" + marks + f"""
[[service]]
fwmark = 1
scheduler = "wrr"
persistence_timeout = 3
{_reals((1, 1, 1), True)}{CHECK}
[[service]]
vip = "{VIP4}"
port = {LINE}
proto = "tcp"
scheduler = "wlc"
{_reals(weights, with_rs3)}
[[service]]
vip = "{VIP4}"
port = {UDP_PORT}
proto = "udp"
scheduler = "rr"
{_reals(weights, with_rs3)}"""


# -- the load, in the client namespace -------------------------------------------------------------------------

async def _long_lived(src, until, interval, rec):
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection(VIP4, LINE, local_addr=(src, 0)), STALL)
    except (OSError, asyncio.TimeoutError) as e:
        rec["failure"] = f"connect: {e!r}"
        return
    first = True
    try:
        while first or time.monotonic() < until:
            w.write(b"?\n")
            try:
                line = await asyncio.wait_for(r.readline(), STALL)
            except asyncio.TimeoutError:
                rec["failure"] = f"stall: no reply within {STALL:g} s"
                return
            if not line:
                rec["failure"] = "closed by the server (EOF)"
                return
            name = line.decode().strip()
            if rec["real"] is None:
                rec["real"] = name
            elif name != rec["real"]:
                rec["failure"] = f"answered by {name}, not {rec['real']}"
                return
            rec["pings"] += 1
            await asyncio.sleep(interval * random.uniform(0, 1) if first else interval * random.uniform(0.8, 1.2))
            first = False
    except OSError as e:
        rec["failure"] = f"{type(e).__name__}: {e}"
    finally:
        w.close()


async def _short_tcp(src, port, tally):
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection(VIP4, port, local_addr=(src, 0)), STALL)
        try:
            name = (await asyncio.wait_for(r.read(), STALL)).decode().strip()
        finally:
            w.close()
        tally["tcp ok" if name.startswith("rs") else f"tcp bad answer {name!r}"] += 1
    except (OSError, asyncio.TimeoutError) as e:
        tally[f"tcp {type(e).__name__}"] += 1


async def _short_udp(src, tally):
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        s.bind((src, 0))
        try:
            await loop.sock_connect(s, (VIP4, UDP_PORT))
            await loop.sock_sendall(s, b"?\n")
            name = (await asyncio.wait_for(loop.sock_recv(s, 512), STALL)).decode().strip()
            tally["udp ok" if name.startswith("rs") else f"udp bad answer {name!r}"] += 1
        except (OSError, asyncio.TimeoutError) as e:
            tally[f"udp {type(e).__name__}"] += 1


async def _load(seconds, rate, long_n):
    start = time.monotonic()
    until = start + seconds
    longs = [{"src": CLIENTS4[i % len(CLIENTS4)], "real": None, "pings": 0, "failure": None} for i in range(long_n)]
    tasks = []
    for i, rec in enumerate(longs):
        tasks.append(asyncio.ensure_future(_long_lived(rec["src"], until, 1.0, rec)))
        if i % 50 == 49:
            await asyncio.sleep(0.05)
    tally, shorts, n = Counter(), set(), 0
    while time.monotonic() < until:
        n += 1
        src = random.choice(CLIENTS4)
        coro = _short_udp(src, tally) if n % 5 == 0 else _short_tcp(src, random.choice((80, 443)), tally)
        t = asyncio.ensure_future(coro)
        shorts.add(t)
        t.add_done_callback(shorts.discard)
        await asyncio.sleep(max(0.0, start + n / rate - time.monotonic()))
    await asyncio.gather(*tasks, *list(shorts))
    return {"longs": longs, "shorts": dict(tally), "seconds": time.monotonic() - start}


def load(seconds, rate=RATE, long_n=LONG):
    """Run in the client namespace: the traffic above for `seconds`; returns what happened (picklable)."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    return asyncio.run(_load(seconds, rate, long_n))


# -- the driver, in the test process -----------------------------------------------------------------------------

def proc_sample(pid):
    """(RSS in bytes, user+system CPU seconds) of process `pid`."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss = next(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:"))
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return rss, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Soak:
    """A DR lab with the soak's config, health listeners on every real, and the daemon's log in `log`."""

    def __init__(self, tmp_path, prefix):
        self.log = tmp_path / "xlb.log"
        self.tmp = tmp_path
        self.lab = DrLab(prefix=prefix, ports=(80, 443, UDP_PORT), line_ports=(LINE,))
        self.checks = []
        self.samples = []  # (t, pid, rss, cpu seconds, table entries) of the running daemon
        self.events = Counter()
        self.step = 0

    def __enter__(self):
        lab = self.lab.__enter__()
        try:
            for i, ns in enumerate(lab.rs):
                self.checks.append(self._check_listener(i))
            lab.start_xlb(config(0), log_path=str(self.log), timeout=300)  # bcc compiles: slow on a busy machine
            wait_for(lambda: self.alive(REALS4[HEALTH_FLIPPED]) is True, 30, "health checks to pass")
        except BaseException as exc:
            self.lab.__exit__(None, None, None)
            said = self.log.read_text()[-3000:] if self.log.exists() else "(no log)"
            raise RuntimeError(f"the soak's lab did not start: {exc}; the daemon's log ends:\n{said}") from exc
        return self

    def __exit__(self, *exc):
        self.lab.__exit__(*exc)

    def _check_listener(self, i):
        return self.lab.topo.spawn(self.lab.rs[i], tcp_echo_name_server, f"rs{i + 1}", [("0.0.0.0", CHECK_PORT)])

    def call(self, cmd, **kw):
        return control.call(cmd, path=self.lab.socket_path, timeout=10, **kw)

    def alive(self, address):
        for s in self.call("health"):
            for r in s["reals"]:
                if r["address"] == address:
                    return r["alive"]
        return None

    def entries(self):
        """Connection entries and persistence templates now in the maps (ipvsadm -L -c's rows)."""
        return len(self.call("conns"))

    # -- the changes -----------------------------------------------------------------------------------------
    def reload(self):
        self.step += 1
        # Written aside and renamed: a reload still reading the previous file must never see half of this one.
        tmp = self.lab.config_path + ".new"
        Path(tmp).write_text(config(self.step))
        os.replace(tmp, self.lab.config_path)
        self.lab.signal_xlb(signal.SIGHUP)
        self.events["reloads"] += 1

    def runtime_edit(self):
        """A weight over the control socket (`xlb real edit`'s request), or `xlb ipvsadm -e`, in turn."""
        w = random.randint(0, 4)
        if self.events["edits"] % 2:
            out = self.tmp / "ipvsadm.out"
            rc = run_in_netns(self.lab.lb, cli_captured, str(out),
                              ["ipvsadm", "--socket", self.lab.socket_path, "-e", "-u", f"{VIP4}:{UDP_PORT}",
                               "-r", REALS4[1], "-w", str(w)])
            assert rc == 0, out.read_text()
        else:
            self.call("edit", source="soak", ops=[{"op": "real-edit", "address": REALS4[0], "weight": w,
                                                   "service": {"proto": "tcp", "vip": VIP4, "port": LINE}}])
        self.events["edits"] += 1

    def flip_health(self):
        i = HEALTH_FLIPPED
        if self.checks[i] is not None:
            self.checks[i].stop()
            self.checks[i] = None
        else:
            self.checks[i] = self._check_listener(i)
        self.events["health flips"] += 1

    def sample(self, t0):
        pid = self.lab.daemon.pid
        rss, cpu = proc_sample(pid)
        self.samples.append((time.monotonic() - t0, pid, rss, cpu, self.entries()))

    # -- the run ---------------------------------------------------------------------------------------------
    def run(self, seconds, kill_every=0.0):
        """Traffic for `seconds` while the daemon is reloaded every second, edited every 3 s and its health
        flipped every 5 s; with `kill_every`, SIGKILLed that often and restarted on its pins (no health flips:
        nobody checks while no daemon runs). Returns the load's result."""
        import threading
        result = {}

        def traffic():
            try:
                result["load"] = run_in_netns(self.lab.cl, load, seconds)
            except BaseException as e:  # noqa: BLE001 - re-raised below
                result["error"] = e
        th = threading.Thread(target=traffic, daemon=True)
        th.start()
        t0 = time.monotonic()
        next_kill = kill_every or None
        tick = 0
        while time.monotonic() - t0 < seconds:
            tick += 1
            time.sleep(max(0.0, t0 + tick - time.monotonic()))
            if next_kill is not None and time.monotonic() - t0 >= next_kill:
                self.lab.kill_xlb()
                self.events["kills"] += 1
                self.lab.restart_xlb(log_path=str(self.log), timeout=300)
                next_kill = time.monotonic() - t0 + kill_every
            self.reload()
            if tick % 3 == 0:
                self.runtime_edit()
            if not kill_every and tick % 5 == 0:
                self.flip_health()
            self.sample(t0)
        th.join(seconds + 120)
        if "error" in result:
            raise result["error"]
        if self.checks[HEALTH_FLIPPED] is None:
            self.flip_health()
        return result["load"]

    def drained(self, timeout=60.0):
        """Wait (bounded) until no connection entry nor template is left; the seconds it took."""
        t0 = time.monotonic()
        wait_for(lambda: self.entries() == 0, timeout, "the connection table to empty")
        return time.monotonic() - t0

    def figures(self, res):
        """What docs/reliability.md reports, as one JSON-able dict."""
        longs = res["longs"]
        rss = [s[2] for s in self.samples]
        # CPU time between consecutive samples of one daemon (a kill -9 starts another process)
        cpu = span = 0.0
        for a, b in zip(self.samples, self.samples[1:]):
            if a[1] == b[1]:
                cpu, span = cpu + b[3] - a[3], span + b[0] - a[0]
        return {"seconds": round(res["seconds"], 1), "events": dict(self.events), "shorts": res["shorts"],
                "long": len(longs), "long pings": sum(r["pings"] for r in longs),
                "long by real": dict(Counter(str(r["real"]) for r in longs)),
                "long failures": dict(Counter(f"{r['real']}: {r['failure']}" for r in longs if r["failure"])),
                "rss MB first/max/last": [round(x / 2**20, 1) for x in (rss[0], max(rss), rss[-1])],
                "rss MB by fifths": [round(rss[len(rss) * i // 5] / 2**20, 1) for i in range(5)],
                "daemon CPU share": round(cpu / span, 3) if span else None,
                "entries max": max(s[4] for s in self.samples)}


def problems(log):
    """The daemon log's first traceback or rejected reload, with the lines around it ('' when there is none)."""
    lines = log.splitlines()
    for i, line in enumerate(lines):
        if "Traceback" in line or "reload rejected" in line:
            return "\n".join(lines[max(0, i - 5):i + 40])
    return ""


def report(figs):
    print("soak figures: " + json.dumps(figs, sort_keys=True), flush=True)
