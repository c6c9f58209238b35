"""check_via_vip's check wrapper (bpf/hcencap.c, TC egress) through BPF_PROG_TEST_RUN on its SCHED_CLS program: a
check's packet with the mark of a tunnel real leaves in that real's tunnel with exactly the frame the data plane's
tunnel forwarding puts on a client's packet (tests/tunframes.py, which test_tun_packets.py pins to bpf/tun.h): IPIP,
GUE with IPVS's header and Katran's none, GRE, with and without checksums, in all four family combinations. A
packet without a known mark, and one that is not IP, leave untouched."""
import ctypes as ct
import ipaddress
import os

import pytest
from scapy.layers.inet import IP
from scapy.layers.l2 import ARP, Ether

from harness import LB_MAC, REAL_MAC, Topology, describe, in_netns, tcp4, tcp6, udp4, udp6
from tunframes import LB4, LB6, R4, R6, gre, gue, ipip
from tunframes import inner as inner_of
from xlb.config.tunnel import Tunnel
from xlb.dataplane import testrun
from xlb.dataplane.tunnels import entry

MARK = 0x584C0007
TC_ACT_OK, TC_ACT_SHOT = 0, 2

# kind -> (the service's Tunnel, the frame the data plane sends: f(pkt, real, lco))
KINDS = {
    "ipip": (Tunnel(), lambda p, r, lco: ipip(p, r)),
    "gue": (Tunnel(type="gue", port=5555), lambda p, r, lco: gue(p, r, 5555)),
    "gue-csum": (Tunnel(type="gue", port=5555, csum="csum"), lambda p, r, lco: gue(p, r, 5555, csum=lco)),
    "gue-bare": (Tunnel(type="gue", port=6080, gue_header=False), lambda p, r, lco: gue(p, r, 6080, header=False)),
    "gre": (Tunnel(type="gre"), lambda p, r, lco: gre(p, r)),
    "gre-csum": (Tunnel(type="gre", csum="csum"), lambda p, r, lco: gre(p, r, csum=lco)),
}


class _Ctx(ct.Structure):
    """struct __sk_buff up to ifindex (mark and ifindex set; the kernel takes a shorter context)."""
    _fields_ = [(name, ct.c_uint32) for name in ("len", "pkt_type", "mark", "queue_mapping", "protocol",
                                                  "vlan_present", "vlan_tci", "vlan_proto", "priority",
                                                  "ingress_ifindex", "ifindex")]


def run_tc(lab, frame, mark):
    """(TC action, output frame) of one BPF_PROG_TEST_RUN of the SCHED_CLS program on frame with skb->mark, as it
    leaves lb0 in the lab's namespace (whose FIB and neighbours the program reads)."""
    encap, ns, ifindex = lab
    fd = encap.func.fd
    ctx = _Ctx(mark=mark, ifindex=ifindex)
    data = ct.create_string_buffer(frame, len(frame))
    out = ct.create_string_buffer(len(frame) + 256)
    attr = testrun._TestAttr(prog_fd=fd, data_size_in=len(frame), data_size_out=len(out), data_in=ct.addressof(data),
                             data_out=ct.addressof(out), repeat=1, ctx_size_in=ct.sizeof(ctx),
                             ctx_in=ct.addressof(ctx))
    with in_netns(ns):
        if testrun._libc.syscall(testrun._SYS_BPF, testrun._BPF_PROG_TEST_RUN, ct.byref(attr), ct.sizeof(attr)) < 0:
            raise OSError(ct.get_errno(), "BPF_PROG_TEST_RUN")
    return attr.retval, out.raw[:attr.data_size_out]


@pytest.fixture(scope="module")
def lab():
    """The loaded program, and a namespace whose lb0 (LB_MAC) reaches the reals at their MACs."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    from xlb.dataplane.hcencap import HcEncap
    topo = Topology(prefix="xhce")
    e = HcEncap(log=lambda line: None)
    try:
        ns, peer = topo.netns("lb"), topo.netns("peer")
        topo.veth(ns, "lb0", peer, "p0")
        topo.mac(ns, "lb0", LB_MAC)
        for cidr in (f"{LB4}/24", f"{LB6}/64"):
            topo.addr(ns, "lb0", cidr)
        for real in (R4, R6):
            topo.neigh(ns, "lb0", real, REAL_MAC[real])
        for fam in ("ipv4", "ipv6"):   # as `xlb run` sets them: bpf_fib_lookup answers only with forwarding on
            topo.sysctl(ns, f"net/{fam}/conf/lb0/forwarding", "1")
        e._load()
        yield e, ns, topo.ifindex(ns, "lb0")
    finally:
        e.close()
        topo.close()


def sent(real, pkt, inner_family):
    """The check's frame as the kernel hands it to TC egress: addressed to the real's MAC by the policy route, or,
    to a real of the other family, to the placeholder next hop's (xlb/ops/viavip.py: lb0's own)."""
    mac = REAL_MAC[real] if inner_family == (6 if ":" in real else 4) else LB_MAC
    return bytes(Ether(dst=mac, src=LB_MAC) / inner_of(pkt))


def packets(vip_family):
    if vip_family == 4:
        t, u = tcp4(src=LB4, dst="198.51.100.10"), udp4(src=LB4, dst="198.51.100.10")
        t[IP].flags, t[IP].id, t[IP].ttl, t[IP].tos = "DF", 777, 64, 0x10
        return t, u
    return tcp6(src=LB6, dst="2001:db8:100::10"), udp6(src=LB6, dst="2001:db8:100::10")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("families", ["4in4", "6in6", "4in6", "6in4"])
def test_a_marked_check_leaves_in_its_reals_tunnel_as_the_data_plane_sends(lab, kind, families):
    inner, outer = int(families[0]), int(families[-1])
    real = R4 if outer == 4 else R6
    tunnel, frame = KINDS[kind]
    source = ipaddress.ip_network(LB4 if outer == 4 else LB6)
    lab[0].fill(MARK, entry(tunnel, ipaddress.ip_address(real), source), real)
    for pkt in packets(inner):
        action, got = run_tc(lab, sent(real, pkt, inner), MARK)
        want = frame(Ether(dst=REAL_MAC[real], src=LB_MAC) / inner_of(pkt), real, True)
        if (action, got) != (TC_ACT_OK, want):
            pytest.fail(f"got {action}, want {TC_ACT_OK}\n--- got:\n{describe(got)}\n--- want:\n{describe(want)}")


def test_what_is_not_a_known_check_leaves_untouched(lab):
    encap = lab[0]
    encap.fill(MARK, entry(Tunnel(type="gue", port=5555), ipaddress.ip_address(R4), ipaddress.ip_network(LB4)), R4)
    before = encap.counts()
    pkt = sent(R4, packets(4)[0], 4)
    assert run_tc(lab, pkt, MARK + 1) == (TC_ACT_OK, pkt)        # another mark (or none)
    arp = bytes(Ether(dst="ff:ff:ff:ff:ff:ff", src=LB_MAC) / ARP(psrc=LB4, pdst=R4))
    assert run_tc(lab, arp, MARK) == (TC_ACT_OK, arp)            # marked, not IP
    after = encap.counts()
    assert (after[1] - before[1], after[2] - before[2], after[0] - before[0]) == (1, 1, 0)
