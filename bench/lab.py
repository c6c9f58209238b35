"""The bench's namespaces and programs, shared by its parts so bpf/xlb.c is compiled once per run.

    gen:g0  <-- veth -->  l0:lb:l1  <-- veth -->  s0:sink

gen runs the load generator (bench/bpf/traffic.c); lb holds the program under test on l0; sink owns the reals'
addresses and MAC and counts in XDP what reaches it. The micro benchmark's reals sit behind l0 itself (XDP_TX),
the forwarding benchmark's in sink (redirect out of l1).
"""
import contextlib
import ctypes as ct
import dataclasses
import os
import struct
from pathlib import Path

from pyroute2 import IPRoute

from xlb.config import model as xconfig
from xlb.config import read as xread
from xlb.dataplane import kheaders
from xlb.dataplane.program import XDP_MODES, Program, cflags_for
from xlb.dataplane.apply import DataPlane
from xlb.errors import KernelError
from xlb.lab.netns import Topology
from xlb.lab.process import in_netns

from .packets import TCP, UDP, stored_csums

BPF_SRC = Path(__file__).resolve().parent / "bpf"

GEN_MAC, LB0_MAC = "02:00:00:00:00:01", "02:00:00:00:00:02"
LB1_MAC, SINK_MAC = "02:00:00:00:01:02", "02:00:00:00:01:11"
# Micro-benchmark reals: on-link behind l0, neighbours with made-up MACs (nothing needs to receive).
MICRO_REALS_V4 = ["198.18.0.11", "198.18.0.12", "198.18.0.13"]
MICRO_REALS_V6 = ["2001:db8::11", "2001:db8::12", "2001:db8::13"]
# Forwarding-benchmark reals: addresses of the sink namespace.
SINK_REALS_V4 = ["198.18.1.11", "198.18.1.12", "198.18.1.13"]
SINK_REALS_V6 = ["2001:db8:1::11", "2001:db8:1::12", "2001:db8:1::13"]


def load_c(name, cflags=()):
    """Compile bench/bpf/NAME with bcc; returns the bcc.BPF object."""
    kheaders.ensure_kernel_headers(log=None)
    import bcc
    try:
        return bcc.BPF(src_file=str(BPF_SRC / name).encode(), cflags=["-Wno-unused-function", *cflags])
    except Exception as exc:  # bcc raises bare Exception
        raise KernelError(f"could not load bench/bpf/{name}: {exc}") from exc


def xdp_fd(bpf, func):
    import bcc
    return bpf.load_func(func.encode(), bcc.BPF.XDP)


def pin_cpu(cpu):
    """Pin this process to one CPU (per-CPU maps and the test runs stay on it); returns the previous set."""
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    return old


def is_empty(table):
    try:
        table.next(None)  # bcc: the first key; StopIteration when there is none
    except StopIteration:
        return True
    return False


def count(table):
    """Entries in a hash map (one batched read)."""
    return 0 if is_empty(table) else sum(1 for _ in table.items_lookup_batch())


def unpin(cpus):
    os.sched_setaffinity(0, cpus)


def default_cpu():
    return max(os.sched_getaffinity(0))


class Lab:
    """The three namespaces, xlb loaded with its default table sizes, and DataPlanes over it on demand."""

    def __init__(self, prefix="xb", log=print):
        self.log = log
        self.topo = Topology(prefix=prefix)
        try:
            self._build()
            self.log("bench: compiling bpf/xlb.c")
            # The SYN-flood defense off ([tables] half_open): the micro and Katran cases record a SYN in conns, as
            # their earlier runs did; bench/flood.py measures the defense on against off.
            self.tables = xconfig.Tables(half_open=False)
            self.prog = Program(cflags=cflags_for(self.tables), log=None)
        except BaseException:
            self.topo.close()
            raise
        self.dp = None
        self._attached = []  # (ns, ifname, mode flags)
        self._base = self._traffic = None

    @property
    def baselines(self):
        """bench/bpf/baselines.c, compiled on first use."""
        if self._base is None:
            self._base = load_c("baselines.c")
        return self._base

    @property
    def traffic(self):
        """bench/bpf/traffic.c (Traffic), compiled on first use."""
        if self._traffic is None:
            self._traffic = Traffic()
        return self._traffic

    def _build(self):
        t = self.topo
        self.gen, self.lb, self.sink = t.netns("gen"), t.netns("lb"), t.netns("sink")
        t.veth(self.gen, "g0", self.lb, "l0")
        t.veth(self.lb, "l1", self.sink, "s0")
        for ns, ifname, mac in ((self.gen, "g0", GEN_MAC), (self.lb, "l0", LB0_MAC), (self.lb, "l1", LB1_MAC),
                                (self.sink, "s0", SINK_MAC)):
            t.mac(ns, ifname, mac)
        for ns, ifname, cidrs in ((self.gen, "g0", ["198.18.0.1/24", "2001:db8::1/64"]),
                                  (self.lb, "l0", ["198.18.0.2/24", "2001:db8::2/64"]),
                                  (self.lb, "l1", ["198.18.1.2/24", "2001:db8:1::2/64"]),
                                  (self.sink, "s0", [f"{a}/24" for a in SINK_REALS_V4]
                                   + [f"{a}/64" for a in SINK_REALS_V6])):
            for cidr in cidrs:
                t.addr(ns, ifname, cidr)
        for i, addr in enumerate(MICRO_REALS_V4 + MICRO_REALS_V6):
            t.neigh(self.lb, "l0", addr, f"02:00:00:00:00:{0x11 + i % 3:02x}")
        for addr in SINK_REALS_V4 + SINK_REALS_V6:
            t.neigh(self.lb, "l1", addr, SINK_MAC)
        t.neigh(self.lb, "l0", "198.18.0.1", GEN_MAC)
        for path in ("net/ipv4/conf/all/forwarding", "net/ipv6/conf/all/forwarding"):
            t.sysctl(self.lb, path, "1")
        for dev in ("all", "default", "l0", "l1"):
            t.sysctl(self.lb, f"net/ipv4/conf/{dev}/rp_filter", "0")
        self.ifindex = {name: t.ifindex(ns, name) for ns, name in
                        ((self.gen, "g0"), (self.lb, "l0"), (self.lb, "l1"), (self.sink, "s0"))}

    def close(self):
        try:
            for ns, ifname, flags in reversed(self._attached):
                self._detach(ns, ifname, flags)
            self._attached = []
            for obj in (self._base, self._traffic):
                if obj is not None:
                    obj.cleanup()
            self.prog.close()
        finally:
            self.topo.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # xlb's maps ------------------------------------------------------------------------------------------------
    def dataplane(self, toml_text):
        """A fresh DataPlane over the loaded program with `toml_text` applied; earlier state is wiped first."""
        p = self.prog
        for name in ("conns", "persist", "half_open", "persist_half"):
            if not is_empty(p[name]):
                p[name].items_delete_batch()
        for name in ("services", "mark_rules", "vip_prefixes"):
            p[name].clear()
        nh = p["nh_cache"]
        for i in range(256):  # real ids restart at 1: forget next hops resolved for an earlier lab's reals
            nh[ct.c_uint32(i)] = nh.Leaf()
        self.dp = DataPlane(p, self.tables)
        return self.apply(toml_text)

    @contextlib.contextmanager
    def tables_of(self, tables):
        """xlb compiled again with other table sizes for the duration (the micro part's: a connection table as
        large per CPU as Katran's); the lab's own program and DataPlane are back afterwards."""
        if tables == self.tables:
            yield self.prog
            return
        self.log(f"bench: compiling bpf/xlb.c with {tables.conns} connection entries")
        prog = Program(cflags=cflags_for(tables), log=None)
        saved = self.prog, self.tables, self.dp
        self.prog, self.tables, self.dp = prog, tables, None
        try:
            yield prog
        finally:
            self.prog, self.tables, self.dp = saved
            prog.close()

    @contextlib.contextmanager
    def flow_cache_as(self, on):
        """The flow cache as configured (on) or off (TTL 0) for the duration."""
        if on:
            yield
            return
        ttl = self.flow_ttl(0)
        try:
            yield
        finally:
            self.flow_ttl(ttl)

    @contextlib.contextmanager
    def sync_as(self, on):
        """State-sync export on (the settings flag, a reader of the ring buffer opened once per program) for the
        duration; `drain_sync()` empties the ring buffer as the daemon's sync thread does."""
        if not on:
            yield
            return
        if getattr(self, "_sync_opened", None) is not self.prog:
            self.dp.open_sync_events(lambda _ev: None)
            self._sync_opened = self.prog
        self.dp.set_sync_export(True)
        try:
            yield
        finally:
            self.dp.set_sync_export(False)
            self.drain_sync()

    def drain_sync(self):
        self.dp.poll_sync_events(0)

    def flow_ttl(self, ttl):
        """Set the flow cache's TTL (jiffies; 0: off) behind the control plane's back; returns the previous one."""
        settings = self.prog["settings"]
        st = settings[ct.c_uint32(0)]
        old, st.flow_ttl = st.flow_ttl, ttl
        settings[ct.c_uint32(0)] = st
        return old

    def config(self, toml_text):
        """A bench config, parsed, with the loaded program's table sizes."""
        return dataclasses.replace(xread.parse(toml_text, "<bench>"), tables=self.tables)

    def apply(self, toml_text):
        """Apply a config to the current DataPlane (only the difference is written)."""
        self.dp.apply(self.config(toml_text))
        return self.dp

    # XDP attachments -------------------------------------------------------------------------------------------
    def attach(self, ns, ifname, fd, mode="native"):
        import bcc
        flags = XDP_MODES[mode]
        with in_netns(ns):
            rc = bcc.libbcc.lib.bpf_attach_xdp(ifname.encode(), fd, flags)
        if rc < 0:
            raise KernelError(f"could not attach XDP to {ifname} in {ns}: {os.strerror(ct.get_errno())}")
        self._attached.append((ns, ifname, flags))

    def detach(self, ns, ifname):
        for i, (n, name, flags) in enumerate(self._attached):
            if (n, name) == (ns, ifname):
                del self._attached[i]
                self._detach(ns, ifname, flags)
                return

    @staticmethod
    def _detach(ns, ifname, flags):
        import bcc
        with in_netns(ns):
            bcc.libbcc.lib.bpf_attach_xdp(ifname.encode(), -1, flags)

    def link_stats(self):
        """{ifname: IFLA_STATS64 as a dict} for the four lab interfaces."""
        out = {}
        for ns, names in ((self.gen, ["g0"]), (self.lb, ["l0", "l1"]), (self.sink, ["s0"])):
            with IPRoute(netns=ns) as ipr:
                for name in names:
                    link = ipr.get_links(ipr.link_lookup(ifname=name)[0])[0]
                    st = link.get_attr("IFLA_STATS64")
                    out[name] = {k: st[k] for k in ("rx_packets", "tx_packets", "rx_dropped", "tx_dropped",
                                                    "rx_errors", "tx_errors")}
        return out


class GenCfg(ct.Structure):
    """struct gen_cfg of bench/bpf/traffic.c."""
    _fields_ = [("ifindex", ct.c_uint32), ("nflows", ct.c_uint32), ("nclients", ct.c_uint32),
                ("ip_csum", ct.c_uint16), ("l4_csum", ct.c_uint16), ("sport", ct.c_uint16),
                ("family", ct.c_uint8), ("proto", ct.c_uint8), ("frame", ct.c_uint8 * 80), ("len", ct.c_uint16)]


class Traffic:
    """bench/bpf/traffic.c loaded: the flow-cycling generator/driver and the sink."""

    def __init__(self):
        self.bpf = load_c("traffic.c")
        self.gen = xdp_fd(self.bpf, "xb_gen")
        self.drive = xdp_fd(self.bpf, "xb_drive")
        self.sink = xdp_fd(self.bpf, "xb_sink")

    def flows(self, template, nflows, nclients, ifindex=0, pos=0):
        """Cycle `template` (a frame from client 0 of its range, see bench/packets.py) through nflows flows of
        nclients clients; the next run starts at flow `pos` (None: where the last one stopped)."""
        v6 = template[12:14] == b"\x86\xdd"
        l4 = 54 if v6 else 34
        ip_csum, l4_csum = stored_csums(template)
        cfg = GenCfg(ifindex=ifindex, nflows=nflows, nclients=nclients, ip_csum=ip_csum, l4_csum=l4_csum,
                     sport=struct.unpack_from("!H", template, l4)[0], family=6 if v6 else 4,
                     proto=template[20] if v6 else template[23], len=len(template))
        cfg.frame[:len(template[:80])] = template[:80]
        assert cfg.proto in (TCP, UDP)
        self.bpf["gen_cfg"][ct.c_uint32(0)] = cfg
        if pos is not None:
            self.set_pos(pos)

    def set_pos(self, pos):
        table = self.bpf["gen_pos"]
        table[ct.c_uint32(0)] = table.Leaf(*([pos] * len(table.Leaf())))

    def target(self, fd):
        """The program xb_drive tail-calls."""
        self.bpf["drive_target"][ct.c_int(0)] = ct.c_int(fd)

    def sink_count(self):
        return sum(self.bpf["sink_count"][ct.c_uint32(0)])

    def cleanup(self):
        self.bpf.cleanup()
