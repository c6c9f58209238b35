"""The ECMP lab (issue 19, docs/scale-out.md): balancers behind a router that spreads by ECMP, each announcing the
VIPs through its own BIRD, and what a node failure or a drain does to long-lived connections and persistent clients.

    cl --veth-- r (BIRD, ECMP) --+-- sw:br0 --+-- lb1..lbN (BIRD, `xlb run` on eth0)
                                              +-- rs1..rs3 (DR reals: the VIPs on lo, default route via r)

    cl: 198.18.1.2/24, one client 198.19.K.10 per /24 on lo; r: 198.18.1.1/24 and 198.18.0.1/24;
    lbN: 198.18.0.(1+N)/24; rsN: 198.18.0.1N/24.

The router hashes addresses, protocol and ports (fib_multipath_hash_policy 3, fields 0x37, a fixed seed); every
BGP session runs BFD at 100 ms x 3. One config holds a service per way of placing (SERVICES), each on its own VIP,
so one run measures them side by side: mh (stateless, nodes agree), rr (the baseline: nodes disagree, no sync),
rr with persistence /24 (the persistent baseline) and placement = "consistent" with persistence /24.
With ``sync="both"`` every balancer also runs IPVS-compatible state sync (`xlb run --sync both`) over eth0: the
bridge br0 is the one segment all balancers share, so the sync multicast reaches each of them (a cut balancer's
sync is cut with its traffic, as a pulled cable would).
"""
import os
import resource
import signal
import socket
import time
from collections import Counter
from pathlib import Path

from pyroute2 import IPRoute

from ..dataplane.pin import netns_pin_root
from ..ops import control
from ..sync.bgp import render
from .base import Lab
from .bird import Bird, bird_conf, bird_routes, session
from .demo import run_xlb_logged, xdp_prog_id
from .netns import Topology
from .process import in_netns
from .servers import ask_lines, tcp_line_name_server

PORT = 80
REALS = ["198.18.0.11", "198.18.0.12", "198.18.0.13"]
PERSIST = 'persistence_timeout = 600\npersistence_netmask = "255.255.255.0"\n'
SERVICES = {  # name -> (VIP, the service's keys)
    "mh": ("198.51.100.10", 'scheduler = "mh"\n'),
    "rr": ("198.51.100.11", 'scheduler = "rr"\n'),
    "rr-persistent": ("198.51.100.12", 'scheduler = "rr"\n' + PERSIST),
    "consistent": ("198.51.100.13", 'placement = "consistent"\n' + PERSIST),
}
PERSISTENT = ("rr-persistent", "consistent")
SYNCID = 19
WAIT = 60.0   # seconds: a bound on starts and convergence, not a measured time


def config():
    out = []
    for vip, keys in SERVICES.values():
        out.append(f'[[service]]\nvip = "{vip}"\nport = {PORT}\nproto = "tcp"\n{keys}'
                   + "".join(f'  [[service.real]]\n  address = "{r}"\n' for r in REALS))
    return "\n".join(out)


class Conn:
    """A long-lived connection of the lab's clients and the real that answered it first."""

    def __init__(self, service, client, sock, real):
        self.service, self.client, self.sock, self.real = service, client, sock, real


class EcmpLab(Lab):
    """The topology above, BIRD everywhere and `xlb run` on every balancer; a context manager that removes it all.
    ``xlb_main``: xlb's command line (xlb.cli.main), handed in as DrLab's is."""

    def __init__(self, workdir, *, xlb_main, nodes=3, clients=20, prefix="xec", log=None, sync=None):
        self.workdir = Path(workdir)
        self.sync = sync  # None, or the `--sync` mode of every balancer (over eth0, syncid SYNCID)
        self.xlb_main = xlb_main
        self.n = nodes
        self.clients = [f"198.19.{k}.10" for k in range(clients)]
        self.log = log or (lambda msg: None)
        self.topo = Topology(prefix=prefix)
        self.birds, self.daemons, self.sockets, self.pin_roots = [], [], [], []

    def _stop(self):
        for d in self.daemons:
            if d.is_alive():
                os.kill(d.pid, signal.SIGTERM)
                d.proc.join(15)
            d.stop()
        for b in self.birds:
            b.stop()

    # -- building -------------------------------------------------------------------------------------------------
    def _build(self):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))   # the bench holds thousands of connections
        self._topology()
        self._start()

    def _topology(self):
        t = self.topo
        sw, self.cl, self.r = t.netns("sw"), t.netns("cl"), t.netns("r")
        self.lbs = [t.netns(f"lb{i + 1}") for i in range(self.n)]
        rs = [t.netns(f"rs{i + 1}") for i in range(len(REALS))]
        self.pin_roots = [netns_pin_root(ns) for ns in self.lbs]
        ports = [("r", self.r)] + [(f"l{i}", ns) for i, ns in enumerate(self.lbs)] + \
                [(f"s{i}", ns) for i, ns in enumerate(rs)]
        for port, ns in ports:
            t.veth(ns, "eth0", sw, port)
        t.bridge(sw, "br0", [p for p, _ in ports])
        self.sw = sw
        t.veth(self.r, "eth1", self.cl, "eth0")
        for ns in [sw, self.cl, self.r] + self.lbs + rs:
            t.sysctl(ns, "net/ipv4/conf/all/rp_filter", "0")
            t.sysctl(ns, "net/ipv4/conf/default/rp_filter", "0")
        t.tx_checksum(self.cl, "eth0", False)
        t.addr(self.cl, "eth0", "198.18.1.2/24")
        for c in self.clients:
            t.lo_addr(self.cl, c)
        t.route(self.cl, "default", gateway="198.18.1.1")
        t.addr(self.r, "eth1", "198.18.1.1/24")
        t.addr(self.r, "eth0", "198.18.0.1/24")
        t.route(self.r, "198.19.0.0/16", gateway="198.18.1.2")
        for path, value in (("ip_forward", "1"), ("fib_multipath_hash_policy", "3"),
                            ("fib_multipath_hash_fields", "0x37"), ("fib_multipath_hash_seed", "20261206")):
            t.sysctl(self.r, f"net/ipv4/{path}", value)
        for i, ns in enumerate(self.lbs):
            t.addr(ns, "eth0", f"{self.node_addr(i)}/24")
            t.gro(sw, f"l{i}", True)   # XDP_TX into the bridge port: delivered only with GRO on its peer
        for i, ns in enumerate(rs):
            t.addr(ns, "eth0", f"{REALS[i]}/24")
            for vip, _ in SERVICES.values():
                t.lo_addr(ns, vip)
            t.sysctl(ns, "net/ipv4/conf/all/arp_ignore", "1")
            t.sysctl(ns, "net/ipv4/conf/all/arp_announce", "2")
            t.route(ns, "default", gateway="198.18.0.1")
            t.spawn(ns, tcp_line_name_server, f"rs{i + 1}", [("0.0.0.0", PORT)])

    @staticmethod
    def node_addr(i):
        return f"198.18.0.{2 + i}"

    def _start(self):
        w = self.workdir
        self.birds.append(Bird(self.r, str(w), "router", bird_conf(
            "198.18.0.1", [session(f"lb{i + 1}", "198.18.0.1", self.node_addr(i), True, bfd=True)
                           for i in range(self.n)], bfd_ifaces=("eth0",))))
        (w / "xlb.toml").write_text(config())
        for i, ns in enumerate(self.lbs):
            include = w / f"lb{i + 1}-vips.conf"
            include.write_text(render(()))
            bird = Bird(ns, str(w), f"lb{i + 1}", bird_conf(
                self.node_addr(i), [session("upstream", self.node_addr(i), "198.18.0.1", False, bfd=True)],
                include=str(include), bfd_ifaces=("eth0",)))
            self.birds.append(bird)
            sock = str(w / f"lb{i + 1}.sock")
            self.sockets.append(sock)
            argv = ["run", "--iface", "eth0", "--config", str(w / "xlb.toml"), "--xdp-mode", "generic",
                    "--socket", sock, "--bird-socket", bird.sock, "--bird-include", str(include)]
            if self.sync:
                argv += ["--sync", self.sync, "--sync-iface", "eth0", "--syncid", str(SYNCID)]
            self.daemons.append(self.topo.spawn(ns, run_xlb_logged, self.xlb_main, str(w / f"lb{i + 1}.log"), argv))
        deadline = time.monotonic() + 2 * WAIT
        for i, (ns, d) in enumerate(zip(self.lbs, self.daemons)):
            while xdp_prog_id(ns, "eth0") is None:
                if not d.is_alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"xlb on lb{i + 1} did not attach: {(w / f'lb{i + 1}.log').read_text()}")
                time.sleep(0.2)
        self.log(f"ecmp lab: {self.n} balancers attached; waiting for ECMP")
        self.wait_hops(self.n)

    # -- the router's view ----------------------------------------------------------------------------------------
    def hops(self, ipr):
        """{VIP: number of next hops} in the router's kernel table."""
        out = {vip: 0 for vip, _ in SERVICES.values()}
        for prefix, _gw in bird_routes(self.r, ipr):
            vip = prefix.split("/")[0]
            if vip in out:
                out[vip] += 1
        return out

    def wait_hops(self, n, timeout=WAIT):
        """Seconds until every VIP has ``n`` next hops on the router (polled every 10 ms)."""
        start = time.monotonic()
        with IPRoute(netns=self.r) as ipr:
            while set(self.hops(ipr).values()) != {n}:
                if time.monotonic() - start > timeout:
                    raise RuntimeError(f"the router did not reach {n} next hops per VIP: {self.hops(ipr)}")
                time.sleep(0.01)
        return time.monotonic() - start

    # -- clients --------------------------------------------------------------------------------------------------
    def _socket(self, client):
        with in_netns(self.cl):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(5)
        s.bind((client, 0))
        return s

    def ask(self, service, client):
        """A new connection from ``client`` to the service: the name of the real that answers."""
        with self._socket(client) as s:
            s.connect((SERVICES[service][0], PORT))
            s.sendall(b"?\n")
            return _line(s)

    def connect(self, per_service):
        """``per_service`` long-lived connections to every service, from the clients in turn. With sync, each
        client's first connection to rr-persistent places its template, and every balancer holds them all before
        the clients connect again: a client's next connection may reach another balancer (ECMP hashes ports), which
        without the template yet would place it anew, a second template that the sync then races with the first
        (as two active IPVS directors do); the lab measures what a failure does, not that race."""
        out = []
        for service, (vip, _) in SERVICES.items():
            for k in range(per_service):
                if self.sync and service == "rr-persistent" and k == len(self.clients):
                    self.wait_synced(0)
                client = self.clients[k % len(self.clients)]
                s = self._socket(client)
                s.connect((vip, PORT))
                s.sendall(b"?\n")
                out.append(Conn(service, client, s, _line(s)))
        return out

    def placements(self):
        """{service: {client: real}} of the persistent services, each client asking on a new connection."""
        return {svc: {c: self.ask(svc, c) for c in self.clients} for svc in PERSISTENT}

    def wait_synced(self, per_service, timeout=WAIT):
        """With sync: wait until every balancer holds the established connections of rr and rr-persistent and the
        templates of rr-persistent's clients, wherever ECMP sent them (what a node must know before it fails)."""
        vips = {SERVICES[s][0]: s for s in ("rr", "rr-persistent")}
        want_conns, want_templates = per_service, len(self.clients)
        deadline = time.monotonic() + timeout
        while True:
            short = []
            for i, sock in enumerate(self.sockets):
                rows = control.call("conns", path=sock, timeout=30)
                est = Counter(vips[r["vaddr"]] for r in rows if r["vaddr"] in vips and r["state"] == "ESTABLISHED")
                tpl = sum(1 for r in rows if r["state"] == "NONE" and r["vaddr"] == SERVICES["rr-persistent"][0])
                if min(est["rr"], est["rr-persistent"]) < want_conns or tpl < want_templates:
                    short.append(f"lb{i + 1}: {dict(est)} established, {tpl} templates")
            if not short:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"state sync did not reach every balancer: {'; '.join(short)}")
            time.sleep(0.1)

    # -- events ---------------------------------------------------------------------------------------------------
    def cut(self, i, up=False):
        """Cut (or mend) balancer i's link: its bridge port goes down, as a pulled cable."""
        with IPRoute(netns=self.sw) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname=f"l{i}")[0], state="up" if up else "down")

    def drain(self, i, off=False):
        return control.call("drain", path=self.sockets[i], timeout=30, off=off)

    def scenario(self, event, node, per_service):
        """Open connections, place the persistent clients, apply ``event`` ("cut", "drain" or "none") to
        balancer ``node``, wait for the router, then count per service the broken connections and the clients
        whose new connections went to another real. Puts the node back afterwards."""
        conns = self.connect(per_service)
        before = self.placements()
        if self.sync:
            self.wait_synced(per_service)
        start = time.monotonic()
        if event == "cut":
            self.cut(node)
        elif event == "drain":
            self.drain(node)
        converge = self.wait_hops(self.n - 1) if event != "none" else 0.0
        broken = probe(conns)
        after = self.placements()
        for c in conns:
            c.sock.close()
        out = {"event": event, "converge_s": round(converge, 3), "since_event_s": round(time.monotonic() - start, 2),
               "services": {}}
        for svc in SERVICES:
            mine = [c for c in conns if c.service == svc]
            row = {"conns": len(mine), "broken": sum(1 for c in mine if c in broken)}
            if svc in PERSISTENT:
                row["clients"] = len(self.clients)
                row["moved"] = sum(1 for c in self.clients if before[svc][c] != after[svc][c])
            out["services"][svc] = row
        if event == "cut":
            self.cut(node, up=True)
        elif event == "drain":
            self.drain(node, off=True)
        if event != "none":
            self.wait_hops(self.n)
        self.log(f"ecmp lab: {event} lb{node + 1}: {out}")
        return out


def _line(s):
    data = b""
    while not data.endswith(b"\n"):
        chunk = s.recv(256)
        if not chunk:
            raise ConnectionError("closed before a line")
        data += chunk
    return data.decode().strip()


def probe(conns, timeout=10.0):
    """Ask on every connection again; the set of those that broke (reset, closed, silent, or another real)."""
    replies = ask_lines([c.sock for c in conns], timeout)
    return {c for c, reply in zip(conns, replies) if reply.strip() != c.real}
