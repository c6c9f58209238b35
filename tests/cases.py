"""Packet fixture cases (STYLE 13), shared by the packet test files: a case is a description, a config and steps,
each an input packet with the expected XDP action, the exact output frame and the verdict reason; run_case runs one
through BPF_PROG_TEST_RUN on the harness's bench (tests/harness.py) and prints both frames decoded on a mismatch.
Also the configs several files use (CFG_BASIC) and their builders, and the packets several files build: a
fragmented datagram (frags4, frags6) and an ICMP error quoting a flow (err4, err6)."""
import ctypes as ct
from collections import Counter
from dataclasses import dataclass, field

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, fragment6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from harness import CLIENT_MAC, LB_MAC, describe, in_netns, to_real
from xlb.dataplane import testrun

PASS, DROP, TX, REDIRECT = "XDP_PASS", "XDP_DROP", "XDP_TX", "XDP_REDIRECT"
SAME = object()  # expected output: the input, byte for byte


# -- configs -------------------------------------------------------------------------------------------------------

def real(addr, weight=1):
    return f'  [[service.real]]\n  address = "{addr}"\n  weight = {weight}\n'


def vip_svc(vip, port, proto, reals, sched="rr", extra=""):
    return (f'[[service]]\nvip = "{vip}"\nport = {port}\nproto = "{proto}"\nscheduler = "{sched}"\n{extra}'
            + "".join(real(*r) if isinstance(r, tuple) else real(r) for r in reals))


def fwm_svc(mark, reals, family="ipv4", sched="rr", extra=""):
    return (f'[[service]]\nfwmark = {mark}\nfamily = "{family}"\nscheduler = "{sched}"\n{extra}'
            + "".join(real(*r) if isinstance(r, tuple) else real(r) for r in reals))


def mark_rule(mark, dst, proto="any", ports=None):
    p = f"ports = {ports!r}\n".replace("'", '"') if ports is not None else ""
    return f'[[mark]]\nmark = {mark}\ndst = "{dst}"\nproto = "{proto}"\n{p}'


V4, V6 = "198.51.100.10", "2001:db8:100::10"
CFG_BASIC = "\n".join([
    vip_svc(V4, 80, "tcp", ["198.18.0.11"]),
    vip_svc(V4, 53, "udp", ["198.18.0.12"]),
    vip_svc(V6, 80, "tcp", ["2001:db8::11"]),
    vip_svc(V6, 53, "udp", ["2001:db8::12"]),
    # port-zero (persistent) services: any port of the VIP
    vip_svc("198.51.100.20", 0, "tcp", ["198.18.0.13"], extra="persistence_timeout = 60\n"),
    vip_svc("2001:db8:100::20", 0, "udp", ["2001:db8::13"], extra="persistence_timeout = 60\n"),
    # fwmark services, v4 and v6
    mark_rule(1, "198.51.100.30/32", "tcp", [443]),
    fwm_svc(1, ["198.18.0.12"]),
    mark_rule(2, "2001:db8:100::30/128", "udp"),
    fwm_svc(2, ["2001:db8::13"], family="ipv6"),
    # a real on the other interface, a real behind a gateway, no reals, only quiescent reals
    vip_svc("198.51.100.40", 80, "tcp", ["198.18.1.11"]),
    vip_svc("2001:db8:100::40", 80, "tcp", ["2001:db8:1::11"]),
    vip_svc("198.51.100.50", 80, "tcp", ["198.18.9.9"]),
    vip_svc("2001:db8:100::50", 80, "tcp", ["2001:db8:9::9"]),
    vip_svc("198.51.100.60", 80, "tcp", []),
    vip_svc("198.51.100.61", 80, "tcp", [("198.18.0.11", 0), ("198.18.0.12", 0)]),
])


# -- packets -------------------------------------------------------------------------------------------------------

C4, C6 = "203.0.113.7", "2001:db8:77::7"       # the client of tcp4()/udp4(), tcp6()/udp6() (tests/harness.py)
RT4, RT6 = "192.0.2.1", "2001:db8:ffff::1"     # a router on the way back to the client


def frags4(dst=V4, sport=40000, dport=53, ident=77, size=100, l4=UDP):
    """An IPv4 datagram cut into fragments of 48 bytes of payload (the first carries the L4 header)."""
    pkt = IP(src=C4, dst=dst, id=ident) / l4(sport=sport, dport=dport) / Raw(bytes(range(size)))
    return [Ether(dst=LB_MAC, src=CLIENT_MAC) / f for f in fragment(pkt, fragsize=48)]


def frags6(dst=V6, sport=40000, dport=53, ident=0x1234, size=200):
    pkt = (IPv6(src=C6, dst=dst) / IPv6ExtHdrFragment(id=ident) / UDP(sport=sport, dport=dport)
           / Raw(bytes(range(size))))
    return [Ether(dst=LB_MAC, src=CLIENT_MAC) / f for f in fragment6(pkt, 120)]


def quoted(flow, n=8):
    """The packet the real sent back for flow (from the VIP to the client), as an ICMP error quotes it: its IP
    header and the first n bytes after it."""
    ip = flow[IP] if IP in flow else flow[IPv6]
    l4 = flow[TCP] if TCP in flow else flow[UDP]
    back = (IP(src=ip.dst, dst=ip.src, id=99) if IP in flow else IPv6(src=ip.dst, dst=ip.src))
    back = back / (TCP(sport=l4.dport, dport=l4.sport, flags="SA") if TCP in flow else
                   UDP(sport=l4.dport, dport=l4.sport) / Raw(b"answer"))
    hlen = 20 if IP in flow else 40
    return Raw(bytes(back)[:hlen + n])


def err4(flow, vip=V4, n=8, **icmp):
    """An ICMP error from a router on the way, about flow (its reply quoted)."""
    return Ether(dst=LB_MAC, src=CLIENT_MAC) / IP(src=RT4, dst=vip, id=3) / ICMP(**icmp) / quoted(flow, n)


def err6(flow, kind, vip=V6, n=8):
    return Ether(dst=LB_MAC, src=CLIENT_MAC) / IPv6(src=RT6, dst=vip) / kind / quoted(flow, n)


# -- cases ---------------------------------------------------------------------------------------------------------

@dataclass
class Step:
    pkt: object            # scapy packet or raw bytes
    action: str
    out: object            # bytes, or SAME
    reason: str
    meta: int = 0          # bytes of XDP metadata in front of the frame (to run frames shorter than 14 bytes)


@dataclass
class Case:
    desc: str
    config: str
    steps: list
    check: object = None   # optional callable(bench) for map assertions
    id: str = field(default="")


def fwd(pkt, addr, action=TX, lb_mac=LB_MAC):
    return Step(pkt, action, to_real(pkt, addr, lb_mac), "fwd_tx" if action == TX else "fwd_redirect")


def same(pkt, action, reason):
    return Step(pkt, action, SAME, reason)


def case(cid, desc, config, *steps, check=None):
    return Case(desc, config, list(steps), check, cid)


def run_step(bench, step):
    """Run one step; return (action, output frame)."""
    data = bytes(step.pkt)
    if not step.meta:
        return bench.run(data)
    # BPF_PROG_TEST_RUN wants at least 14 bytes; the first `meta` go to XDP metadata, the frame is the rest.
    buf = b"\0" * step.meta + data
    inp = ct.create_string_buffer(buf, len(buf))
    out = ct.create_string_buffer(len(buf) + 256)
    ctx = testrun._XdpMd(data=step.meta, data_end=len(buf), ingress_ifindex=bench.ifindex)
    attr = testrun._TestAttr(prog_fd=bench.prog.fd, data_size_in=len(buf), data_size_out=len(out),
                             data_in=ct.addressof(inp), data_out=ct.addressof(out), repeat=1,
                             ctx_size_in=ct.sizeof(ctx), ctx_in=ct.addressof(ctx))
    with in_netns(bench.ns):
        rc = testrun._libc.syscall(testrun._SYS_BPF, testrun._BPF_PROG_TEST_RUN, ct.byref(attr), ct.sizeof(attr))
    if rc != 0:
        raise OSError(ct.get_errno(), "BPF_PROG_TEST_RUN")
    return testrun.XDP_ACTIONS[attr.retval], out.raw[step.meta:attr.data_size_out]


def show(data):
    try:
        return describe(data)
    except Exception:  # noqa: BLE001 - a frame too short for scapy
        return data.hex()


def run_case(bench, c):
    """Apply the case's config, run its packets; each output frame and the verdict counts must be exact."""
    bench.reset(c.config)
    for i, step in enumerate(c.steps):
        want = bytes(step.pkt) if step.out is SAME else step.out
        action, out = run_step(bench, step)
        where = f"{c.desc}, packet {i}"
        if (action, out) != (step.action, want):
            pytest.fail(f"{where}: got {action}, want {step.action}\n--- got:\n{show(out)}\n--- want:\n{show(want)}")
    want_verdicts = Counter(s.reason for s in c.steps)
    assert bench.verdicts() == dict(want_verdicts), c.desc
    if c.check:
        assert c.check(bench) is not False, c.desc
