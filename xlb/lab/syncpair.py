"""The active/backup lab: two balancers on one LAN in front of the same reals, keepalived (VRRP only) moving the
VIP between them, xlb on both with or without state sync; clients with long-lived connections and persistent
clients, counted across a failover (tests/test_sync_lab.py, bench/failover.py).

    cl (client)  --+                      cl:  198.18.0.1/24, clients 198.19.K.N on lo, the VIP on-link (ARP)
    lb1, lb2     --+-- bridge (sw ns)     lbN: 198.18.0.{2,3}/24, xlb on eth0, sync over eth0, keepalived
    rs1..rs3     --+                      rsN: 198.18.0.1N/24, the VIP on lo (direct routing)

A failover is a cut of the active balancer's bridge port: the other's keepalived stops hearing adverts, takes the
VIP and announces it by gratuitous ARP; the client's packets then reach the other balancer's xlb.
"""
import os
import shutil
import socket
import tempfile
import time

from pyroute2 import IPRoute

from ..dataplane.links import attached_prog_id
from ..dataplane.pin import netns_pin_root
from ..ops import control
from .base import Lab
from .netns import Topology
from .process import PipedChild, enter_netns, run_in_netns
from .servers import ask_lines, tcp_ask, tcp_echo_name_server, tcp_line_name_server

VIP = "198.51.100.10"
LAN = "198.18.0"
ASK_PORT, LINE_PORT = 80, 7000
SYNCID = 7


def lab_config(reals, scheduler="rr"):
    """Port 80: persistent per client /24 (the persistent clients); port 7000: the long-lived ones; both with
    `scheduler`."""
    rs = "".join(f'  [[service.real]]\n  address = "{r}"\n' for r in reals)
    return (f'[tables]\nconns = 65536\ntemplates = 16384\nflow_cache = 1024\n\n'
            f'[[service]]\nvip = "{VIP}"\nport = {ASK_PORT}\nproto = "tcp"\nscheduler = "{scheduler}"\n'
            f'persistence_timeout = 600\npersistence_netmask = "255.255.255.0"\n{rs}\n'
            f'[[service]]\nvip = "{VIP}"\nport = {LINE_PORT}\nproto = "tcp"\nscheduler = "{scheduler}"\n{rs}')


KEEPALIVED_CONF = """\
# VRRP only: keepalived moves the VIP, xlb balances it (the LVS part).
global_defs {{
    router_id {name}
    vrrp_version 3
    vrrp_garp_master_repeat 3
}}
vrrp_instance xlb_vip {{
    state BACKUP
    interface eth0
    virtual_router_id 51
    priority {priority}
    advert_int 0.1
    virtual_ipaddress {{
        {vip}/32 dev eth0
    }}
}}
"""


def _exec(argv):
    os.execvp(argv[0], argv)


class SyncPair(Lab):
    """The topology above; a context manager that removes everything on exit. `xlb_main` is xlb.cli.main."""

    def __init__(self, prefix="xsp", nreals=3, *, xlb_main, log_dir=None):
        self.xlb_main = xlb_main
        self.topo = Topology(prefix=prefix)
        self.tmp = tempfile.mkdtemp(prefix="xlb-syncpair-")
        self.log_dir = log_dir or self.tmp
        self.reals = [f"{LAN}.1{i + 1}" for i in range(nreals)]
        self.daemons = {}
        self.keepalived = {}
        self.pin_roots = []

    def _stop(self):
        for i in list(self.daemons):
            self.stop_xlb(i)

    def _cleanup(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _build(self):
        t = self.topo
        sw = t.netns("sw")
        self.cl = t.netns("cl")
        self.lbs = {1: t.netns("lb1"), 2: t.netns("lb2")}
        self.rs = [t.netns(f"rs{i + 1}") for i in range(len(self.reals))]
        self.pin_roots = [netns_pin_root(ns) for ns in self.lbs.values()]
        ports = []
        for ns, port in [(self.cl, "c0"), (self.lbs[1], "l1"), (self.lbs[2], "l2")] + [
                (ns, f"r{i}") for i, ns in enumerate(self.rs)]:
            t.veth(ns, "eth0", sw, port)
            ports.append(port)
        t.bridge(sw, "br0", ports)
        self.sw = sw
        for port in ("l1", "l2"):
            t.gro(sw, port, True)
        t.tx_checksum(self.cl, "eth0", False)
        for ns in [sw, self.cl, *self.lbs.values(), *self.rs]:
            t.sysctl(ns, "net/ipv4/conf/all/rp_filter", "0")
        t.addr(self.cl, "eth0", f"{LAN}.1/24")
        t.route(self.cl, f"{VIP}/32", dev="eth0")  # on-link: the client ARPs for the VIP, VRRP answers
        t.sysctl(self.cl, "net/ipv4/ip_forward", "1")
        for i, ns in self.lbs.items():
            t.addr(ns, "eth0", f"{LAN}.{i + 1}/24")
        for i, ns in enumerate(self.rs):
            t.addr(ns, "eth0", f"{self.reals[i]}/24")
            t.lo_addr(ns, VIP)
            t.sysctl(ns, "net/ipv4/conf/all/arp_ignore", "1")
            t.sysctl(ns, "net/ipv4/conf/all/arp_announce", "2")
            t.route(ns, "default", gateway=f"{LAN}.1")
            t.spawn(ns, tcp_echo_name_server, f"rs{i + 1}", [("0.0.0.0", ASK_PORT)])
            t.spawn(ns, tcp_line_name_server, f"rs{i + 1}", [("0.0.0.0", LINE_PORT)])

    def add_clients(self, addresses):
        for a in addresses:
            self.topo.lo_addr(self.cl, a)

    # -- xlb and keepalived -----------------------------------------------------------------------------------
    def socket(self, i):
        return os.path.join(self.tmp, f"xlb{i}.sock")

    def start_xlb(self, i, sync=None, timeout=60.0, extra=(), scheduler="rr", refresh=None, sync_keys=""):
        """`xlb run` on lb{i} (generic XDP, as xlb/lab/demo.py), with `--sync MODE` over eth0 if sync (with
        `refresh` or `sync_keys`, TOML lines: the config's [sync] section instead, re-sending every `refresh` s),
        and `extra` arguments."""
        cfg = os.path.join(self.tmp, f"xlb{i}.toml")
        text = lab_config(self.reals, scheduler)
        if refresh or sync_keys:
            text = (f'[sync]\nmode = "{sync}"\niface = "eth0"\nsyncid = {SYNCID}\nrefresh = {refresh or 60}\n'
                    f'{sync_keys}\n' + text)
        with open(cfg, "w") as f:
            f.write(text)
        argv = ["run", "--iface", "eth0", "--config", cfg, "--xdp-mode", "generic", "--socket", self.socket(i)]
        if sync and not (refresh or sync_keys):
            argv += ["--sync", sync, "--sync-iface", "eth0", "--syncid", str(SYNCID)]
        argv += list(extra)
        from .demo import run_xlb_logged
        log = os.path.join(self.log_dir, f"xlb{i}.log")
        self.daemons[i] = self.topo.spawn(self.lbs[i], run_xlb_logged, self.xlb_main, log, argv)
        deadline = time.monotonic() + timeout
        while run_in_netns(self.lbs[i], attached_prog_id, "eth0") is None:
            if not self.daemons[i].is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"xlb run on lb{i} did not attach: {open(log).read()[-2000:]}")
            time.sleep(0.1)

    def stop_xlb(self, i):
        d = self.daemons.pop(i, None)
        if d is not None:
            d.stop(timeout=10)

    def start_keepalived(self, i, priority):
        conf = os.path.join(self.tmp, f"keepalived{i}.conf")
        with open(conf, "w") as f:
            f.write(KEEPALIVED_CONF.format(name=f"lb{i}", priority=priority, vip=VIP))
        pid = os.path.join(self.tmp, f"ka{i}")
        argv = ["keepalived", "--dont-fork", "--log-console", "--no-syslog", "--vrrp", "--use-file", conf,
                "--pid", pid + ".pid", "--vrrp_pid", pid + ".vrrp.pid"]
        self.keepalived[i] = self.topo.spawn(self.lbs[i], _exec, argv)

    def add_vip(self, i):
        """The VIP on lb{i} by hand (a lab without keepalived)."""
        self.topo.addr(self.lbs[i], "eth0", f"{VIP}/32")

    def vip_holder(self):
        """Which balancer has the VIP now (None: neither)."""
        for i, ns in self.lbs.items():
            with IPRoute(netns=ns) as ipr:
                if any(a.get_attr("IFA_ADDRESS") == VIP for a in ipr.get_addr(family=socket.AF_INET)):
                    return i
        return None

    def cut(self, i):
        """Fail lb{i}: its bridge port goes down (VRRP adverts, traffic and sync stop at once)."""
        with IPRoute(netns=self.sw) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname=f"l{i}")[0], state="down")

    def call(self, i, cmd, **args):
        return control.call(cmd, path=self.socket(i), **args)

    def holds(self, i, lines, templates):
        """Whether lb{i}'s maps hold at least `lines` established connections to LINE_PORT and `templates`
        templates (what the backup must have synced before a failover is measured)."""
        rows = self.call(i, "conns")
        est = sum(1 for r in rows if r["vport"] == LINE_PORT and r["state"] == "ESTABLISHED")
        return est >= lines and sum(1 for r in rows if r["state"] == "NONE") >= templates

    # -- clients --------------------------------------------------------------------------------------------
    def ask_all(self, sources, port=ASK_PORT, timeout=3.0):
        """{source: the real's name, or "error: ..."} of one new connection from each source to the VIP."""
        return run_in_netns(self.cl, _ask_all, sources, VIP, port, timeout)

    def lines(self, sources):
        """Long-lived connections from each source to VIP:LINE_PORT (a LineFleet in the client namespace)."""
        return LineFleet(self.cl, sources, VIP, LINE_PORT)


def _ask_all(sources, vip, port, timeout):
    out = {}
    for src in sources:
        try:
            out[src] = tcp_ask(src, vip, port, timeout)
        except OSError as e:
            out[src] = f"error: {e}"
    return out


def _fleet(conn, ns, sources, dst, port):
    """Child of LineFleet: hold one connection per source; on each "ask", send a line on every one and answer the
    replies in order (a name, or "error: ..." for a connection that failed or gave no line in time)."""
    enter_netns(ns)
    socks = []
    for src in sources:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind((src, 0))
        s.settimeout(5)
        s.connect((dst, port))
        s.setblocking(False)
        socks.append(s)
    conn.send("ready")
    while True:
        try:
            timeout = conn.recv()
        except EOFError:
            break
        if timeout is None:
            break
        conn.send(ask_lines(socks, timeout))
    for s in socks:
        s.close()


class LineFleet(PipedChild):
    """Long-lived TCP connections from `sources` (one each) held by one forked child in namespace `ns`.
    `ask(timeout)` sends a line on every connection and returns the replies in order."""

    def __init__(self, ns, sources, dst, port):
        super().__init__(_fleet, ns, list(sources), dst, port)
        if not self._conn.poll(60) or self._conn.recv() != "ready":
            self.close()
            raise RuntimeError("the line fleet could not open its connections")

    def ask(self, timeout=5.0):
        self._conn.send(timeout)
        if not self._conn.poll(timeout + 30):
            raise RuntimeError("the line fleet did not answer")
        return self._conn.recv()


def failover(pair, sources, persistent, wait_synced=None, converge_timeout=10.0):
    """Fail the balancer holding the VIP under load; returns the counts of the docs' table: connections broken
    (no answer, reset, or another real), persistent clients moved (another real on a new connection), and the
    seconds until the other balancer held the VIP. `wait_synced()` (with sync) returns once the backup has the
    state to take over."""
    before = pair.ask_all(persistent)
    with pair.lines(sources) as fleet:
        first = fleet.ask()
        if wait_synced:
            wait_synced()
        active = pair.vip_holder()
        t0 = time.monotonic()
        pair.cut(active)
        while pair.vip_holder() in (active, None):
            if time.monotonic() - t0 > converge_timeout:
                raise RuntimeError("the backup did not take the VIP")
            time.sleep(0.02)
        converged = time.monotonic() - t0
        second = fleet.ask(timeout=8.0)
    after = pair.ask_all(persistent)
    broken = sum(1 for a, b in zip(first, second) if a.startswith("error") or a != b)
    moved = sum(1 for s in persistent if before[s] != after[s])
    return {"connections": len(sources), "broken": broken, "clients": len(persistent), "moved": moved,
            "converge_s": round(converged, 2), "first_errors": sum(a.startswith("error") for a in first)}
