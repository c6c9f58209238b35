"""`xlb demo`: a direct-routing lab in throwaway namespaces, and the same lab for the integration tests.

    client ns (cl) --+                      cl:  198.18.0.1/24   2001:db8::1/64, clients 198.19.{1,2,3}.x on lo
    lb ns     (lb) --+-- bridge (switch ns) lb:  198.18.0.2/24   2001:db8::2/64, xlb on eth0
    rs1..rs3       --+                      rsN: 198.18.0.1N/24  2001:db8::1N/64, VIPs on lo (DR real servers)

Clients reach the VIPs through the load balancer; real servers answer the clients directly (direct routing),
each with its own name, so the client sees which real served it.
"""
import os
import shutil
import signal
import sys
import tempfile
import time


from ..dataplane.links import attached_prog_id
from ..dataplane.pin import netns_pin_root, remove as remove_pins
from .netns import Topology
from .process import run_in_netns
from .servers import tcp_ask, tcp_echo_name_server, tcp_line_name_server
from ..ops import control

VIP4 = "198.51.100.10"
VIP6 = "2001:db8:100::10"
LAN4, LAN6 = "198.18.0", "2001:db8::"
REALS4 = [f"{LAN4}.1{i}" for i in (1, 2, 3)]
REALS6 = [f"{LAN6}1{i}" for i in (1, 2, 3)]
CLIENTS4 = ["198.19.1.10", "198.19.1.20", "198.19.1.30", "198.19.2.10", "198.19.2.20", "198.19.3.10"]
CLIENTS6 = ["2001:db8:1:1::10", "2001:db8:1:1::20", "2001:db8:1:2::10", "2001:db8:1:3::10"]

DEMO_CONFIG = f"""\
# Firewall mark 1 bundles HTTP and HTTPS of one VIP into one virtual service; persistence groups each
# client /24 onto one real for 300 s, across both ports.
[[mark]]
mark = 1
proto = "tcp"
dst = "{VIP4}/32"
ports = [80, 443]

[[service]]
fwmark = 1
scheduler = "rr"
persistence_timeout = 300
persistence_netmask = "255.255.255.0"
{''.join(f'''
  [[service.real]]
  address = "{r}"
''' for r in REALS4)}"""


class DrLab:
    """The topology above. Use as a context manager; everything is removed on exit.

    `xlb_main(argv)` is `xlb`'s command line (xlb.cli.main), which the lab runs as `xlb run` in the LB namespace:
    handed in, so the lab, which the CLI runs as `xlb demo`, does not import the CLI back."""

    def __init__(self, prefix="xlbd", reals=3, ports=(80, 443), line_ports=(), *, xlb_main):
        self.xlb_main = xlb_main
        self.topo = Topology(prefix=prefix)
        self.nreals = reals
        self.ports = ports
        self.line_ports = line_ports  # ports of tcp_line_name_server (long-lived connections) on each real
        self.daemon = None
        self.config_path = None
        self.pin_root = None  # /sys/fs/bpf/xlb/netns-INODE of the LB namespace, removed on exit
        self.servers = []  # each real's tcp_echo_name_server (stop one to fail its health check)

    def __enter__(self):
        try:
            self._build()
        except BaseException:
            self.topo.close()
            raise
        return self

    def __exit__(self, *exc):
        try:
            self.stop_xlb()
        finally:
            try:
                if self.config_path:
                    os.unlink(self.config_path)
                # Maps pinned by `xlb run` in the LB namespace (bpffs is machine-wide): the lab's own directory.
                self.topo.close()
            finally:
                remove_pins(self.pin_root)

    def _build(self):
        t = self.topo
        sw = t.netns("sw")
        self.cl = t.netns("cl")
        self.lb = t.netns("lb")
        self.rs = [t.netns(f"rs{i + 1}") for i in range(self.nreals)]
        self.pin_root = netns_pin_root(self.lb)
        ports = []
        for ns, port in [(self.cl, "c0"), (self.lb, "l0")] + [(ns, f"r{i}") for i, ns in enumerate(self.rs)]:
            t.veth(ns, "eth0", sw, port)
            ports.append(port)
        t.bridge(sw, "br0", ports)
        # XDP_TX on lb:eth0 hands frames to its peer sw:l0, which delivers them only with GRO on.
        t.gro(sw, "l0", True)
        # Native XDP on a veth sees partial checksums of offloading senders: clients checksum in full.
        t.tx_checksum(self.cl, "eth0", False)
        for ns in [sw, self.cl, self.lb] + self.rs:
            t.sysctl(ns, "net/ipv4/conf/all/rp_filter", "0")
        t.addr(self.cl, "eth0", f"{LAN4}.1/24")
        t.addr(self.cl, "eth0", f"{LAN6}1/64")
        for c in CLIENTS4 + CLIENTS6:
            t.lo_addr(self.cl, c)
        t.route(self.cl, f"{VIP4}/32", gateway=f"{LAN4}.2")
        t.route(self.cl, f"{VIP6}/128", gateway=f"{LAN6}2")
        t.sysctl(self.cl, "net/ipv4/ip_forward", "1")
        t.addr(self.lb, "eth0", f"{LAN4}.2/24")
        t.addr(self.lb, "eth0", f"{LAN6}2/64")
        for i, ns in enumerate(self.rs):
            t.addr(ns, "eth0", f"{REALS4[i]}/24")
            t.addr(ns, "eth0", f"{REALS6[i]}/64")
            t.lo_addr(ns, VIP4)
            t.lo_addr(ns, VIP6)
            t.sysctl(ns, "net/ipv4/conf/all/arp_ignore", "1")
            t.sysctl(ns, "net/ipv4/conf/all/arp_announce", "2")
            t.route(ns, "default", gateway=f"{LAN4}.1")
            t.route(ns, "default", gateway=f"{LAN6}1")
            listen = [(a, p) for p in self.ports for a in ("0.0.0.0", "::")]
            self.servers.append(t.spawn(ns, tcp_echo_name_server, f"rs{i + 1}", listen))
            if self.line_ports:
                listen = [(a, p) for p in self.line_ports for a in ("0.0.0.0", "::")]
                t.spawn(ns, tcp_line_name_server, f"rs{i + 1}", listen)

    # -- xlb --------------------------------------------------------------------------------------------------
    def start_xlb(self, config_text, timeout=60.0, xdp_mode="generic", log_path=None, extra_args=(), keepalived=False):
        """Run `xlb run` in the LB namespace with this config; return once the program is attached.

        The lab runs generic XDP: native XDP_TX from a veth into a bridge port loses the frames here (known,
        under investigation); native mode's packet path is covered by the BPF_PROG_TEST_RUN fixtures.
        With `log_path`, the daemon's stdout and stderr are appended to that file instead of the caller's;
        `extra_args` go to `xlb run` as they are (e.g. ("--metrics", "127.0.0.1:9842")); with `keepalived`, the
        config text is a keepalived.conf.
        """
        fd, self.config_path = tempfile.mkstemp(prefix="xlb-lab-", suffix=".toml")
        with os.fdopen(fd, "w") as f:
            f.write(config_text)
        # A socket of its own: labs run in parallel and must not meet at /run/xlb/eth0.sock.
        self.socket_path = os.path.join(tempfile.mkdtemp(prefix="xlb-lab-"), "xlb.sock")
        self._argv = ["run", "--iface", "eth0", "--keepalived" if keepalived else "--config", self.config_path,
                      "--xdp-mode", xdp_mode,
                      "--socket", self.socket_path, *extra_args]
        self._spawn_xlb(self._argv, log_path)
        self._wait(lambda: xdp_prog_id(self.lb, "eth0") is not None, timeout, "attach")

    def _spawn_xlb(self, argv, log_path):
        if log_path:
            self.daemon = self.topo.spawn(self.lb, run_xlb_logged, self.xlb_main, log_path, argv)
        else:
            self.daemon = self.topo.spawn(self.lb, self.xlb_main, argv)

    def _wait(self, ready, timeout, what):
        deadline = time.monotonic() + timeout
        while not ready():
            if not self.daemon.is_alive():
                raise RuntimeError(f"xlb run exited before it could {what} (see its output above)")
            if time.monotonic() > deadline:
                raise RuntimeError(f"xlb run did not {what} within {timeout}s")
            time.sleep(0.1)

    def kill_xlb(self, sig=signal.SIGKILL):
        """Kill the daemon (default `kill -9`): the program stays attached, its maps pinned."""
        self.signal_xlb(sig)
        self.daemon.proc.join(10)

    def restart_xlb(self, extra_args=(), timeout=60.0, log_path=None):
        """Start `xlb run` again with the same config and socket; return once it answers on the socket."""
        from ..ops import control
        self._spawn_xlb(self._argv + list(extra_args), log_path)

        def answers():
            try:
                return control.call("status", path=self.socket_path, timeout=2)["pid"] == self.daemon.pid
            except control.ControlError:
                return False
        self._wait(answers, timeout, "answer on its control socket")

    def rewrite_config(self, config_text):
        with open(self.config_path, "w") as f:
            f.write(config_text)

    def signal_xlb(self, sig):
        os.kill(self.daemon.pid, sig)

    def stop_xlb(self):
        if self.daemon and self.daemon.is_alive():
            self.signal_xlb(signal.SIGTERM)
            self.daemon.proc.join(10)
        if self.daemon:
            self.daemon.stop()
        self.daemon = None
        if getattr(self, "socket_path", None):
            shutil.rmtree(os.path.dirname(self.socket_path), ignore_errors=True)
            self.socket_path = None

    def ask(self, src, dst, port):
        return run_in_netns(self.cl, tcp_ask, src, dst, port)


def run_xlb_logged(xlb_main, log_path, argv):
    """`xlb_main(argv)` (xlb.cli.main), its stdout and stderr (fds and sys streams) appended to log_path."""
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = sys.stderr = open(log_path, "a", buffering=1)
    return xlb_main(argv)


def xdp_prog_id(ns, ifname):
    """The id of the XDP program attached to ns:ifname, or None."""
    return attached_prog_id(ifname, ns)


# The demo's service with a TCP_CHECK on each real's port 80 (docs/health.md), every second.
HEALTH_DEMO_CONFIG = DEMO_CONFIG + """
  [service.check]
  kind = "TCP_CHECK"
  delay_loop = 1
  connect_port = 80
  connect_timeout = 1
  retry = 1
  delay_before_retry = 0.5
"""


def _round(lab, title):
    print(f"\n{title}\n{'client':<16}{'subnet':<16}{'port 80':<10}{'port 443':<10}{'port 80 again':<14}", flush=True)
    for c in CLIENTS4:
        served = [lab.ask(c, VIP4, p) for p in (80, 443, 80)]
        subnet = c.rsplit(".", 1)[0] + ".0/24"
        print(f"{c:<16}{subnet:<16}{served[0]:<10}{served[1]:<10}{served[2]:<14}", flush=True)


def _wait_alive(lab, address, alive, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for s in control.call("health", path=lab.socket_path):
            if any(r["address"] == address and r["alive"] == alive for r in s["reals"]):
                return
        time.sleep(0.2)
    raise RuntimeError(f"{address} did not become {'alive' if alive else 'dead'} in {timeout:g} s")


def main(xlb_main):
    """`xlb demo`; `xlb_main` is the CLI's main, which the lab runs as `xlb run`."""
    print("xlb demo: building namespaces (client, load balancer, 3 DR real servers on one bridge)...", flush=True)
    with DrLab(xlb_main=xlb_main) as lab:
        print(f"config:\n{HEALTH_DEMO_CONFIG}", flush=True)
        lab.start_xlb(HEALTH_DEMO_CONFIG)
        _round(lab, "Round 1: every real passes its TCP check.")
        print("\nEach /24 sticks to one real across ports 80 and 443 (one persistence template per subnet and"
              "\nfirewall mark).", flush=True)
        print("\nStopping rs2's server: its TCP check fails (xlb's log says so in keepalived's words).", flush=True)
        lab.servers[1].stop()
        _wait_alive(lab, REALS4[1], False)
        _round(lab, "Round 2: rs2 is out of the service; its clients moved at their next connection.")
        print("\nStarting rs2's server again:", flush=True)
        lab.servers[1] = lab.topo.spawn(lab.rs[1], tcp_echo_name_server, "rs2",
                                        [(a, p) for p in lab.ports for a in ("0.0.0.0", "::")])
        _wait_alive(lab, REALS4[1], True)
        print("rs2 is back in the service; the clients that moved stay where their templates say.", flush=True)
        print("\nCounters from the running xlb (SIGUSR1):", flush=True)
        lab.signal_xlb(signal.SIGUSR1)
        time.sleep(1.0)
    print("demo done: namespaces, links and the XDP program are gone.")
    return 0
