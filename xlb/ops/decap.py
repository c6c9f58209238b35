"""`xlb decap`: the real server's side of tunnel forwarding. Loads bpf/decap.c, tells it this host's addresses and
the UDP ports that carry GUE, attaches it to one interface until SIGTERM/SIGINT, and prints its verdict counters
on SIGUSR1 and at exit.

    xlb decap --iface eth0                          # IPIP, GRE, Katran's header-less GUE on 6080
    xlb decap --iface eth0 --gue-port 5555          # and IPVS's GUE (`type gue port 5555`) on 5555
"""
import ctypes as ct
import ipaddress
import signal
import socket
import time

from ..dataplane import structs as S
from ..dataplane.program import Program
from ..config.model import addr_bytes
from ..config.realcheck import interface_addresses
from ..errors import ConfigError, XlbError
from ..observe.stats import percpu_counters

_ENUMS, _DEFINES = S.read_consts("decap.h")
# Verdict reasons by number, as printed: "pass_not_local", "ipip", "drop_bad_inner", ...
REASONS = {v: k[len("XLB_DECAP_"):].lower() for k, v in _ENUMS["xlb_decap_reason"].items()
           if k != "XLB_DECAP_REASON_MAX"}
PORT_KIND = {k[len("XLB_DECAP_PORT_"):].lower(): v for k, v in _ENUMS["xlb_decap_port"].items()}
KATRAN_GUE_PORT = 6080  # Katran's default GUE destination port
ADDRS_PER_FAMILY = _DEFINES["XLB_DECAP_ADDRS"]


class DecapProgram(Program):
    """bpf/decap.c compiled and loaded; attach/detach as the balancer's program (refuses an interface with another
    XDP program unless force)."""

    SOURCE = "decap.c"
    FUNC = "xlb_decap"
    TAIL_CALLS = {}

    def set_ports(self, gue_ports=(), bare_ports=()):
        table = self["decap_ports"]
        for port in gue_ports:
            table[ct.c_uint32(port)] = ct.c_uint32(PORT_KIND["gue"])
        for port in bare_ports:
            table[ct.c_uint32(port)] = ct.c_uint32(PORT_KIND["bare"])

    def set_addresses(self, addresses):
        """This host's addresses (at most ADDRS_PER_FAMILY of each family; check_addresses says so first)."""
        table = self["decap_local"]
        local = table.Leaf()
        for addr in addresses:
            words = S.addr_words(addr_bytes(str(addr)))
            if addr.version == 4:
                local.v4[local.n4] = words[0]
                local.n4 += 1
            else:
                local.v6[local.n6 * 4:local.n6 * 4 + 4] = list(words)
                local.n6 += 1
        table[ct.c_uint32(0)] = local

    def counters(self):
        """{reason name: (packets, bytes)} for every reason, summed over CPUs."""
        rows = percpu_counters(self["decap_verdicts"], len(REASONS))
        return {REASONS[i]: (pk, by) for i, (pk, by, _c) in enumerate(rows)}


def check_ports(gue_ports, bare_ports):
    """Refuse ports outside 1-65535 and a port given as both kinds; nothing is loaded before this passes."""
    for opt, ports in (("--gue-port", gue_ports), ("--katran-gue-port", bare_ports)):
        for port in ports:
            if not 1 <= port <= 65535:
                raise ConfigError("xlb decap", opt, f"{port} is not a UDP port (1-65535)")
    both = sorted(set(gue_ports) & set(bare_ports))
    if both:
        raise ConfigError("xlb decap", "--katran-gue-port", f"port {both[0]} is also a --gue-port: give it once")


def host_addresses():
    """Every address on this namespace's interfaces except lo's (where DR/TUN reals keep their VIPs)."""
    found = {local for ifname, local, _ in interface_addresses("xlb decap strips tunnels addressed to them")
             if ifname != "lo"}
    return sorted(found, key=lambda a: (a.version, a))


def check_addresses(addrs, given):
    """Refuse an empty set and more than the program holds of a family; given: they came from --address."""
    where = "--address" if given else "host addresses"
    if not addrs:
        raise ConfigError("xlb decap", where, "no address outside lo: nothing could be addressed to this host "
                                              "(give --address)")
    for version in (4, 6):
        n = sum(1 for a in addrs if a.version == version)
        if n > ADDRS_PER_FAMILY:
            raise ConfigError("xlb decap", where, f"{n} IPv{version} addresses, at most {ADDRS_PER_FAMILY}: give "
                                                  "the tunnel endpoints with --address")


def format_counters(counts):
    """One line per reason seen, in enum order."""
    lines = [f"  {name:<20} {pk:>12} packets {by:>14} bytes" for name, (pk, by) in counts.items() if pk]
    return "\n".join(["xlb decap verdicts:", *(lines or ["  (no packets yet)"])])


def bare_ports_of(args):
    """The header-less GUE ports the command line asks for: Katran's default unless given or turned off."""
    if args.no_katran_gue:
        if args.katran_gue_port:
            raise ConfigError("xlb decap", "--no-katran-gue", "give either --katran-gue-port or --no-katran-gue")
        return []
    return args.katran_gue_port if args.katran_gue_port is not None else [KATRAN_GUE_PORT]


def run(iface, gue_ports=(), bare_ports=(), xdp_mode="native", force=False, addresses=(), log=print):
    """Attach to iface and decapsulate until SIGTERM/SIGINT; the program is detached in every case."""
    check_ports(gue_ports, bare_ports)
    try:
        socket.if_nametoindex(iface)
    except OSError:
        raise XlbError(f"no interface {iface}") from None
    addrs = sorted(set(addresses), key=lambda a: (a.version, a)) if addresses else host_addresses()
    check_addresses(addrs, bool(addresses))
    prog = DecapProgram(log=log)
    stop, attached = [], False

    def on_stop(signum, _frame):
        stop.append(signum)

    old = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)}
    try:
        prog.set_addresses(addrs)
        prog.set_ports(gue_ports, bare_ports)
        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGUSR1, lambda *_: log(format_counters(prog.counters())))
        prog.attach(iface, mode=xdp_mode, force=force)
        attached = True
        log(f"xlb decap: on {iface} ({xdp_mode}) for {', '.join(map(str, addrs))}; GUE ports "
            f"{sorted(gue_ports) or 'none'}, header-less GUE ports {sorted(bare_ports) or 'none'}")
        while not stop:
            time.sleep(0.2)  # a signal ends the sleep early; no pause(): a signal just before it would be missed
    finally:
        try:
            if attached:
                log(format_counters(prog.counters()))
        finally:
            prog.close()
            for sig, handler in old.items():
                signal.signal(sig, handler)
    return 0


def add_parser(sub, func):
    """The `xlb decap` subcommand (xlb/cli.py calls this with its handler)."""
    import argparse
    p = sub.add_parser("decap", help="on a real server: strip the balancer's tunnel headers (IPIP, GRE, GUE) in XDP",
                       description=__doc__.split("\n\n")[0], epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iface", "-i", required=True, help="interface the tunnelled packets arrive on")
    p.add_argument("--gue-port", type=int, action="append", default=[], metavar="N",
                   help="UDP port carrying GUE as IPVS sends it (`type gue port N`); repeatable")
    p.add_argument("--katran-gue-port", type=int, action="append", metavar="N",
                   help=f"UDP port carrying Katran's header-less GUE (default {KATRAN_GUE_PORT}, Katran's); "
                        "repeatable")
    p.add_argument("--no-katran-gue", action="store_true",
                   help=f"no header-less GUE port at all (UDP to {KATRAN_GUE_PORT} is left alone)")
    p.add_argument("--address", type=ipaddress.ip_address, action="append", default=[], metavar="ADDR",
                   help="decapsulate packets to ADDR; repeatable (default: every address outside lo, read at start; "
                        f"at most {ADDRS_PER_FAMILY} of each family)")
    p.add_argument("--xdp-mode", choices=("native", "generic"), default="native",
                   help="native (driver) XDP, or generic (skb) mode for drivers without it")
    p.add_argument("--force", action="store_true", help="replace an XDP program already on the interface")
    p.set_defaults(func=func)
    return p


EPILOG = f"""examples:
  xlb decap --iface eth0                   # IPIP (4in4, 6in6, 4in6, 6in4), GRE, header-less GUE on {KATRAN_GUE_PORT}
  xlb decap --iface eth0 --gue-port 5555   # and GUE as IPVS sends it (type gue port 5555)
  xlb decap --iface eth0 --no-katran-gue   # leave UDP to {KATRAN_GUE_PORT} alone
  kill -USR1 $(pidof -x xlb)               # print the verdict counters
The VIPs go on lo and the ARP sysctls are set as for direct routing: tools/xlb-dr-real add VIP."""
