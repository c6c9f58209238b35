"""Packet fixtures through BPF_PROG_TEST_RUN: the loaded xlb program, its maps filled by the real control plane
(DataPlane.apply), run inside a throwaway namespace whose interfaces and neighbours are known, so every output
byte can be predicted.

Topology (namespace "lb"):
    lb0  02:00:00:00:00:02  198.18.0.2/24  2001:db8::2/64   reals 198.18.0.11-13 / 2001:db8::11-13 on-link
    lb1  02:00:00:00:01:02  198.18.1.2/24  2001:db8:1::2/64 real 198.18.1.11 / 2001:db8:1::11 (another port)
    198.18.9.0/24 and 2001:db8:9::/64 are routed via 198.18.0.1 / 2001:db8::1 (not on-link: DR refuses)
    clients 203.0.113.0/24 and 2001:db8:77::/64 are routed via the same gateway (where NAT replies go)
"""
import contextlib
import os
import select
import signal
import subprocess
import sys
import ctypes as ct
import dataclasses
import textwrap
import time
from pathlib import Path

import pytest

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from xlb.config import model as xconfig
from xlb.config import read as xread
from xlb.dataplane import structs as S
from xlb.dataplane.program import Program, cflags_for
from xlb.config.model import addr_bytes
from xlb.dataplane.apply import DataPlane
from xlb.dataplane.mapkeys import htons
from xlb.lab.netns import Topology
from xlb.dataplane import libbpf, pin
from xlb.importers.keepalived import translate as keepalived
from xlb.lab.demo import DEMO_CONFIG, REALS4, VIP4
from xlb.lab.process import in_netns, run_in_netns
from xlb.dataplane.testrun import test_run as _test_run

LB_MAC = "02:00:00:00:00:02"
LB1_MAC = "02:00:00:00:01:02"
CLIENT_MAC = "02:00:00:00:00:aa"
REAL_MAC = {
    "198.18.0.11": "02:00:00:00:00:11", "198.18.0.12": "02:00:00:00:00:12", "198.18.0.13": "02:00:00:00:00:13",
    "2001:db8::11": "02:00:00:00:00:11", "2001:db8::12": "02:00:00:00:00:12", "2001:db8::13": "02:00:00:00:00:13",
    "198.18.1.11": "02:00:00:00:01:11", "2001:db8:1::11": "02:00:00:00:01:11",
}
GW_MAC = "02:00:00:00:00:01"

# Small maps keep per-test resets cheap; the code paths are the same as at full size.
TEST_CFLAGS = ["-DXLB_MAX_REALS=256", "-DXLB_MAX_SERVICES=256", "-DXLB_SCHED_SLOTS=131072",
               "-DXLB_MARK_ENTRIES=16384", "-DXLB_MAX_MARK_RULES=256", "-DXLB_VIP_PREFIXES=1024"]
# The packet tests predating the SYN-flood defense inspect the entries and templates a lone SYN writes in conns and
# persist: they run with it off; tests/test_flood.py runs it on (the product's default).
TEST_TABLES = xconfig.Tables(conns=4096, templates=4096, flow_cache=1024, half_open=False)


class Bench:
    """The LB namespace, the loaded program and a DataPlane over it."""

    def __init__(self):
        self.topo = Topology(prefix="xlbf")
        try:
            self._build()
            self.prog = Program(cflags=cflags_for(TEST_TABLES) + TEST_CFLAGS, log=None)
        except BaseException:
            self.topo.close()
            raise
        self.dp = None
        self._sync_reader = None       # the DataPlane that opened the program's sync ring buffer (sync_events)
        self._sync_handler = None

    def _build(self):
        t = self.topo
        self.ns = t.netns("lb")
        peer = t.netns("peer")
        t.veth(self.ns, "lb0", peer, "p0")
        t.veth(self.ns, "lb1", peer, "p1")
        t.mac(self.ns, "lb0", LB_MAC)
        t.mac(self.ns, "lb1", LB1_MAC)
        for cidr in ("198.18.0.2/24", "2001:db8::2/64"):
            t.addr(self.ns, "lb0", cidr)
        for cidr in ("198.18.1.2/24", "2001:db8:1::2/64"):
            t.addr(self.ns, "lb1", cidr)
        for addr, mac in REAL_MAC.items():
            dev = "lb1" if addr.startswith(("198.18.1.", "2001:db8:1:")) else "lb0"
            t.neigh(self.ns, dev, addr, mac)
        t.neigh(self.ns, "lb0", "198.18.0.1", GW_MAC)
        t.neigh(self.ns, "lb0", "2001:db8::1", GW_MAC)
        t.route(self.ns, "198.18.9.0/24", gateway="198.18.0.1")
        t.route(self.ns, "2001:db8:9::/64", gateway="2001:db8::1")
        t.route(self.ns, "203.0.113.0/24", gateway="198.18.0.1")
        t.route(self.ns, "2001:db8:77::/64", gateway="2001:db8::1")
        for path in ("net/ipv4/conf/all/forwarding", "net/ipv6/conf/all/forwarding"):
            t.sysctl(self.ns, path, "1")
        self.ifindex = t.ifindex(self.ns, "lb0")
        self.ifindex1 = t.ifindex(self.ns, "lb1")

    def close(self):
        try:
            self.prog.close()
        finally:
            self.topo.close()

    def reset(self, toml_text):
        """Empty every map the previous test filled, then apply a config through the real control plane."""
        for name in ("conns", "nat_revs", "persist", "services", "mark_rules", "vip_prefixes", "frags", "lblc",
                     "half_open", "persist_half", "nat_half"):
            self.prog[name].clear()
        for name in ("verdicts", "nh_cache", "rr_pos", "svc_stats", "real_stats", "mark_stats", "svc_out_stats",
                     "real_out_stats", "conn_events"):
            table = self.prog[name]
            zero = table.Leaf()
            for i in range(table.max_entries):
                table[ct.c_uint32(i)] = zero
        # The reals a previous test left live: a test that adopts would take them for its own.
        reals = self.prog["reals"]
        for rid, r in reals.items_lookup_batch():
            if r.flags:
                reals[rid] = reals.Leaf()
        self.dp = DataPlane(self.prog, TEST_TABLES)
        self.dp.apply(self.config(toml_text))
        return self.dp

    def sync_events(self, handler):
        """Send the program's state-sync records (bpf/sync.h) to handler(SyncEvent) from now on; read them with
        poll_sync(). bcc opens a ring buffer once per program, and the program is shared by every test module."""
        if self._sync_reader is None:
            self._sync_reader = self.dp
            self.dp.open_sync_events(lambda event: self._sync_handler(event))
        self._sync_handler = handler

    def poll_sync(self):
        """Deliver the sync records written so far; returns how many records had a wrong size (always 0)."""
        self._sync_reader.poll_sync_events(0)
        return self._sync_reader.sync_bad_events

    @staticmethod
    def config(toml_text):
        """Parse a test config; the maps are the test's small ones whatever it says."""
        return dataclasses.replace(xread.parse(toml_text, "<test>"), tables=TEST_TABLES)

    def run(self, pkt, ifindex=None):
        """Run one packet; return (XDP action name, output bytes)."""
        with in_netns(self.ns):
            res = _test_run(self.prog.fd, bytes(pkt), ifindex=ifindex or self.ifindex)
        return res.action_name, res.data

    def verdicts(self):
        """{reason name: packets} for every reason seen."""
        return {k: v.packets for k, v in self.dp.verdict_counts().items() if v.packets}


def tcp4(src="203.0.113.7", dst="198.51.100.10", sport=40000, dport=80, flags="S", payload=b""):
    return Ether(dst=LB_MAC, src=CLIENT_MAC) / IP(src=src, dst=dst, id=1) / TCP(
        sport=sport, dport=dport, flags=flags, seq=1000, window=8192) / payload


def udp4(src="203.0.113.7", dst="198.51.100.10", sport=40000, dport=53, payload=b"q"):
    return Ether(dst=LB_MAC, src=CLIENT_MAC) / IP(src=src, dst=dst, id=1) / UDP(sport=sport, dport=dport) / payload


def tcp6(src="2001:db8:77::7", dst="2001:db8:100::10", sport=40000, dport=80, flags="S", payload=b""):
    return Ether(dst=LB_MAC, src=CLIENT_MAC) / IPv6(src=src, dst=dst) / TCP(
        sport=sport, dport=dport, flags=flags, seq=1000, window=8192) / payload


def udp6(src="2001:db8:77::7", dst="2001:db8:100::10", sport=40000, dport=53, payload=b"q"):
    return Ether(dst=LB_MAC, src=CLIENT_MAC) / IPv6(src=src, dst=dst) / UDP(sport=sport, dport=dport) / payload


def to_real(pkt, real, lb_mac=LB_MAC):
    """What DR makes of pkt: the same IP packet in a frame from the LB to the real's MAC."""
    out = pkt.copy()
    out[Ether].dst = REAL_MAC[real]
    out[Ether].src = lb_mac
    return bytes(out)


def real_of(out: bytes):
    """Which real a DR output frame went to (by destination MAC)."""
    mac = ":".join(f"{b:02x}" for b in out[:6])
    for addr, m in REAL_MAC.items():
        if m == mac and (":" in addr) == (out[12:14] == b"\x86\xdd"):
            return addr
    return mac


def describe(data: bytes) -> str:
    return Ether(data).show(dump=True)


def lookup_conn(dp, pkt):
    """The conns entry of pkt's flow, or None."""
    return dp.m["conns"].get(conn_key(pkt))


def conn_key(pkt):
    """The conns key of pkt's flow."""
    key = S.ConnKey()
    ip = pkt[IP] if IP in pkt else pkt[IPv6]
    key.src = S.addr_words(addr_bytes(ip.src))
    key.dst = S.addr_words(addr_bytes(ip.dst))
    l4 = pkt[TCP] if TCP in pkt else pkt[UDP]
    key.sport, key.dport = htons(l4.sport), htons(l4.dport)
    key.proto = 6 if TCP in pkt else 17
    key.family = 4 if IP in pkt else 6
    return key


def flow_cached(dp, pkt):
    """The live flow-cache entry (bpf/flowcache.h) of pkt's flow: its key and the current settings.gen; or None."""
    key = bytes(conn_key(pkt))
    gen = dp.m["settings"][ct.c_uint32(0)].gen
    found = [v for _k, v in dp.m["flow_cache"].items_lookup_batch() if v.gen == gen and bytes(v.key) == key]
    assert len(found) <= 1, found
    return found[0] if found else None



# -- the DR lab (xlb/lab/demo.py) running this checkout's `xlb` -----------------------------------------------------
def DrLab(*args, **kw):  # noqa: N802  (used as the class it builds)
    """xlb.lab.demo.DrLab running `xlb run` through xlb.cli.main."""
    from xlb.cli import main
    from xlb.lab import demo
    return demo.DrLab(*args, xlb_main=main, **kw)


def run_xlb_logged(log_path, argv):
    """`xlb ARGV` (xlb.cli.main) with its output appended to log_path (xlb.lab.demo.run_xlb_logged)."""
    from xlb.cli import main
    from xlb.lab import demo
    return demo.run_xlb_logged(main, log_path, argv)


# -- shared by the integration tests (no test module imports another) --------------------------------------------
NAMES = {"rs1", "rs2", "rs3"}


def wait_for(pred, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def log_has(path, text):
    return text in Path(path).read_text()


def cli_captured(out_path, argv):
    """cli main in this (child) process with stdout/stderr going to out_path; returns the exit code."""
    with open(out_path, "w", buffering=1) as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        from xlb.cli import main
        return main(argv)


DAEMON_START_CONFIG = """
[tables]
conns = 65536
templates = 4096

[[service]]
vip = "198.51.100.10"
port = 80
proto = "tcp"
scheduler = "rr"

  [[service.real]]
  address = "198.18.0.11"
"""


MODE_OF_ATTACHED = {"xdp": "native", "xdpgeneric": "generic"}  # IFLA_XDP_ATTACHED as pyroute2 names it


def xdp_on(ifname):
    """(program id, mode) attached to ifname in this namespace, or (None, None)."""
    from pyroute2 import IPRoute
    with IPRoute() as ipr:
        xdp = ipr.get_links(ipr.link_lookup(ifname=ifname)[0])[0].get_attr("IFLA_XDP")
    if not xdp or not xdp.get_attr("IFLA_XDP_PROG_ID"):
        return None, None
    return xdp.get_attr("IFLA_XDP_PROG_ID"), MODE_OF_ATTACHED.get(xdp.get_attr("IFLA_XDP_ATTACHED"))


def attach_foreign(ifname, mode):
    """Attach a one-line XDP_PASS program that is not xlb's; return its id. It stays after this process exits."""
    from xlb.dataplane import kheaders
    kheaders.ensure_kernel_headers(log=None)
    import bcc
    b = bcc.BPF(text=b"int other_xdp(struct xdp_md *ctx) { return XDP_PASS; }")
    bcc.BPF.attach_xdp(ifname, b.load_func(b"other_xdp", bcc.BPF.XDP), {"native": 1 << 2, "generic": 1 << 1}[mode])
    return xdp_on(ifname)[0]


def prog_name(prog_id):
    return libbpf.prog_map_ids(prog_id)[0]


class Host:
    """The LB namespace (eth0: a veth to a peer) and the config file; `xlb run` there as the tests need it."""

    def __init__(self, topo, tmp_path):
        self.topo, self.tmp = topo, tmp_path
        self.config = tmp_path / "xlb.toml"
        self.config.write_text(DAEMON_START_CONFIG)
        self.lb = topo.netns("lb")
        topo.veth(self.lb, "eth0", topo.netns("peer"), "eth0")
        topo.addr(self.lb, "eth0", "198.18.0.2/24")
        self.pin_dir = pin.netns_pin_root(self.lb) / "eth0"

    def argv(self, mode, *extra):
        return ["run", "--iface", "eth0", "--config", str(self.config), "--xdp-mode", mode,
                "--socket", str(self.tmp / "xlb.sock"), *extra]

    def xdp(self):
        return run_in_netns(self.lb, xdp_on, "eth0")

    def run_once(self, out, argv):
        """`xlb run` that is expected to give up: its exit code."""
        return run_in_netns(self.lb, cli_captured, str(out), argv)

    def spawn(self, log, argv, old_id=None):
        """`xlb run` as a daemon; returns it once a program other than old_id is attached."""
        daemon = self.topo.spawn(self.lb, run_xlb_logged, str(log), argv)
        deadline = time.monotonic() + 60
        while self.xdp()[0] in (None, old_id):
            assert daemon.is_alive(), Path(log).read_text()
            assert time.monotonic() < deadline, "xlb did not attach within 60 s"
            time.sleep(0.1)
        return daemon


@contextlib.contextmanager
def lb_host(tmp_path):
    """A Host whose namespaces, processes and pinned maps are gone afterwards, whatever happens."""
    pins = None
    try:
        with Topology(prefix="rc") as topo:
            host = Host(topo, tmp_path)
            pins = pin.netns_pin_root(host.lb)
            yield host
    finally:
        if pins:
            pin.remove(pins)


DR = "protocol TCP\nlb_algo rr\nlb_kind DR\n"


def problems(path, marks=None):
    with pytest.raises(keepalived.KeepalivedError) as ei:
        keepalived.load(path, marks)
    return ei.value


def vs(body, head="virtual_server 198.51.100.10 80"):
    return f"{head} {{\n" + textwrap.indent(textwrap.dedent(body), "    ") + "}\n"


def write(tmp_path, text, name="keepalived.conf"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return str(p)


LINE = 8080

LAB_CONFIG = DEMO_CONFIG + f"""
[tables]
conns = 65536
templates = 65536
sweep_interval = 0.2

[[service]]
vip = "{VIP4}"
port = {LINE}
proto = "tcp"
scheduler = "rr"
""" + "".join(f'\n  [[service.real]]\n  address = "{r}"\n' for r in REALS4)




# -- through BPF_PROG_TEST_RUN ---------------------------------------------------------------------------------------
BENCH_CONFIG = """
[[mark]]
mark = 5
proto = "tcp"
dst = "198.51.100.20/32"
ports = [80, 443]

[[service]]
fwmark = 5
scheduler = "rr"
persistence_timeout = 300
persistence_netmask = "255.255.255.0"
  [[service.real]]
  address = "198.18.0.13"

[[service]]
vip = "198.51.100.10"
port = 80
proto = "tcp"
scheduler = "rr"
  [[service.real]]
  address = "198.18.0.11"
  [[service.real]]
  address = "198.18.0.12"
  [[service.real]]
  address = "198.18.0.13"
  weight = 0
"""


def tcp_exchange(dst, sport, dport=80, flags="S", payload=b"", src="203.0.113.7"):
    from harness import tcp4
    return tcp4(src=src, dst=dst, sport=sport, dport=dport, flags=flags, payload=payload)


REALS_TOML = "".join(f'\n  [[service.real]]\n  address = "{r}"\n' for r in REALS4)


def cli_output(argv):
    import contextlib
    import io
    from xlb.cli import main
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(argv)
    assert rc == 0, buf.getvalue()
    return buf.getvalue()


# -- `xlb decap` as a real process in a namespace (test_decap_lab, test_tun_lab) ---------------------------------
def start_decap(ns, *args):
    argv = ["nsenter", f"--net=/run/netns/{ns}", sys.executable, "-c",
            "import sys; from xlb.cli import main; sys.exit(main())", "decap", *args]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    proc.seen = ""  # everything read from its output so far
    return proc


def read_until(proc, marker, timeout):
    """proc's output read so far, once it holds marker after what was already seen ('' if proc exits or the time
    runs out first). Raw reads of the pipe: a buffered reader would hide lines from select()."""
    start = len(proc.seen)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if marker in proc.seen[start:]:
            return proc.seen[start:]
        ready, _, _ = select.select([proc.stdout], [], [], 1.0)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            proc.seen += chunk.decode(errors="replace")
    return ""


def stop_proc(proc):
    """SIGTERM, then the rest of its output."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        rest = proc.communicate(timeout=20)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        rest = proc.communicate()[0]
    except ValueError:  # output already collected
        rest = b""
    proc.seen += (rest or b"").decode(errors="replace")
    return proc.seen
