"""bpf/hcencap.c loaded and attached: the TC egress program that wraps check_via_vip's checks to tunnel reals in
their service's tunnel, with the struct tunnel the data plane's tunnels map holds for them (tunnels.py entry;
xlb/ops/viavip.py decides the marks). Attached with pyroute2 to a clsact qdisc's egress hook, as one filter at its
own priority: only that filter is ever removed (a stale one of a killed run first, then ours at close)."""
import ctypes as ct
import ipaddress

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from . import kheaders
from .program import import_bcc
from .structs import BPF_DIR
from ..errors import KernelError

EGRESS = "ffff:fff3"      # clsact's egress hook
PRIO = 0x584C             # "XL": our filter's priority on that hook


class HcEncap:
    """``set(mark, tunnel, real, ifindex)`` wraps packets of that mark leaving ``ifindex`` toward ``real`` as
    ``tunnel`` (a structs.Tunnel) says;
    ``unset(mark)``; ``close()`` removes the filters. Compiled on first use."""

    def __init__(self, log=print):
        self.log = log
        self.bpf = None
        self.func = None
        self.links = set()       # ifindexes with our filter
        self.ipr = None

    def _load(self):
        if self.bpf is None:
            kheaders.ensure_kernel_headers(log=self.log)
            bcc = import_bcc()
            try:
                self.bpf = bcc.BPF(src_file=str(BPF_DIR / "hcencap.c").encode(),
                                   cflags=["-Wno-unused-function", f"-I{BPF_DIR}"])
                self.func = self.bpf.load_func(b"xlb_hc_encap", bcc.BPF.SCHED_CLS)
            except Exception as exc:  # bcc raises bare Exception; its compiler output went to stderr
                self.bpf = None
                raise KernelError(f"could not load bpf/hcencap.c: {exc}") from exc
            self.ipr = IPRoute()

    def _attach(self, ifindex):
        if ifindex in self.links:
            return
        try:
            self.ipr.tc("add", "clsact", ifindex)
        except NetlinkError as exc:
            if exc.code != 17:   # EEXIST: the hook is there (ours of a killed run, or another tool's)
                raise KernelError(f"cannot add a clsact qdisc to interface {ifindex}: {exc}") from exc
        self._detach(ifindex)      # a killed run's filter
        try:
            self.ipr.tc("add-filter", "bpf", ifindex, ":1", fd=self.func.fd, name=self.func.name, parent=EGRESS,
                        prio=PRIO, classid=1, direct_action=True)
        except NetlinkError as exc:
            raise KernelError(f"cannot attach bpf/hcencap.c to interface {ifindex}: {exc}") from exc
        self.links.add(ifindex)

    def _detach(self, ifindex):
        try:
            self.ipr.tc("del-filter", "bpf", ifindex, ":1", parent=EGRESS, prio=PRIO)
        except NetlinkError:
            pass

    def set(self, mark, tunnel, real, ifindex):
        self._load()
        self._attach(ifindex)
        self.fill(mark, tunnel, real)

    def fill(self, mark, tunnel, real):
        """The map's entry only (BPF_PROG_TEST_RUN needs no attachment)."""
        self._load()
        table = self.bpf[b"hc_reals"]
        leaf = table.Leaf()
        ct.memmove(ct.addressof(leaf.t), ct.addressof(tunnel), ct.sizeof(tunnel))
        dst = ipaddress.ip_address(real).packed
        ct.memmove(ct.addressof(leaf.daddr), dst, len(dst))
        table[table.Key(mark)] = leaf

    def unset(self, mark):
        if self.bpf is not None:
            table = self.bpf[b"hc_reals"]
            try:
                del table[table.Key(mark)]
            except KeyError:
                pass

    def counts(self):
        """(wrapped, not ours, not IP, failed) packets."""
        if self.bpf is None:
            return (0, 0, 0, 0)
        return tuple(int(v.value) for v in self.bpf[b"hc_counts"].values())

    def close(self):
        if self.bpf is None:
            return
        for ifindex in self.links:
            self._detach(ifindex)
        self.links.clear()
        self.ipr.close()
        self.bpf.cleanup()
        self.bpf = None


