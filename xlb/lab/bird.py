"""BIRD 2 in the labs' namespaces (Debian's bird2): a daemon per namespace run as our own child, the bird.conf of
a router (ECMP) or of a balancer node (xlb's include file), and the routes BIRD installed, read with pyroute2.
Used by the ECMP lab (``ecmp``) and the BGP tests."""
import os
import signal
import socket
import subprocess
import time

from pyroute2 import IPRoute

WAIT = 30.0  # seconds before giving up on BGP convergence (a bound, not a measured time)
RTPROT_BIRD = 12
ROUTER_AS, NODE_AS = 65000, 65001


def session(name, local, peer, router_side, bfd=False):
    """One eBGP session with the labs' short timers: the router imports everything and exports nothing, a node
    exports only the VIPs xlb's include file declares (protocols xlb_vips4 / xlb_vips6)."""
    fam = 6 if ":" in local else 4
    mine, theirs = (ROUTER_AS, NODE_AS) if router_side else (NODE_AS, ROUTER_AS)
    channel = "import all; export none;" if router_side else f'import none; export where proto = "xlb_vips{fam}";'
    return (f"protocol bgp {name} {{\n    local {local} as {mine}; neighbor {peer} as {theirs};\n"
            "    connect delay time 1; connect retry time 1; error wait time 1, 2;\n"
            + ("    bfd on;\n" if bfd else "") + f"    ipv{fam} {{ {channel} }};\n}}\n")


def bird_conf(router_id, sessions, include=None, families=(4,), bfd_ifaces=()):
    """A whole bird.conf: a router (include None: kernel protocols with ECMP) or a node (xlb's include file)."""
    out = [f"router id {router_id};", "protocol device {}"]
    if include is None:
        out += [f"protocol kernel {{ ipv{f} {{ import none; export all; }}; merge paths on; }}" for f in families]
    else:
        out.append(f'include "{include}";')
    if bfd_ifaces:
        out.append("protocol bfd {\n" + "".join(
            f'    interface "{i}" {{ min rx interval 100 ms; min tx interval 100 ms; multiplier 3; }};\n'
            for i in bfd_ifaces) + "}")
    return "\n".join(out) + "\n" + "".join(sessions)


class Bird:
    """A BIRD daemon in namespace `ns` (our own child, stopped by its pid)."""

    def __init__(self, ns, workdir, name, conf):
        self.conf = os.path.join(workdir, f"{name}.conf")
        self.sock = os.path.join(workdir, f"{name}.ctl")
        self.log = os.path.join(workdir, f"{name}.log")
        with open(self.conf, "w") as f:
            f.write(conf)
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                ["nsenter", f"--net=/run/netns/{ns}", "bird", "-f", "-c", self.conf, "-s", self.sock,
                 "-P", os.path.join(workdir, f"{name}.pid")], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + WAIT
        while not os.path.exists(self.sock):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"bird {name} did not start: {open(self.log).read()}")
            time.sleep(0.05)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def bird_routes(ns, ipr=None):
    """{(prefix, gateway)} of the routes BIRD installed in namespace `ns`, a pair per next hop of a multipath
    route. ``ipr``: an IPRoute already open in that namespace (polling), else one is opened for the call."""
    if ipr is None:
        with IPRoute(netns=ns) as own:
            return bird_routes(ns, own)
    out = set()
    for family in (socket.AF_INET, socket.AF_INET6):
        for r in ipr.get_routes(family=family):
            if r["proto"] != RTPROT_BIRD:
                continue
            prefix = f"{r.get_attr('RTA_DST')}/{r['dst_len']}"
            hops = r.get_attr("RTA_MULTIPATH")
            gateways = [h.get_attr("RTA_GATEWAY") for h in hops] if hops else [r.get_attr("RTA_GATEWAY")]
            out.update((prefix, gw) for gw in gateways)
    return out


def wait_routes(ns, expected, timeout=WAIT):
    """bird_routes(ns) once it is ``expected``, or as it is after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while (got := bird_routes(ns)) != expected and time.monotonic() < deadline:
        time.sleep(0.1)
    return got
