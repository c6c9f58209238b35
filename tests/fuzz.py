"""Hostile-packet fuzzer (issue 18): generated frames through the loaded xlb program with BPF_PROG_TEST_RUN, every
packet checked against the invariants an operator relies on (tests/fuzz_rules.py):

- a packet to no service (its destination address no VIP and in no mark rule's prefix; a non-IP or VLAN-tagged
  frame) leaves byte for byte unchanged with XDP_PASS; a passed packet is never modified;
- a forwarded one goes from the balancer to a real of the service the packet belongs to (for an ICMP error the
  service of the quoted packet reversed, for a later fragment a service of its VIP and protocol), never to a
  health-failed real, as its method says: DR keeps the IP packet (an SCTP CRC too); NAT changes only the
  destination address, the real's port (port mapping), the hop count and the checksums, each updated (the
  ones'-complement sums unchanged; an IPv4 UDP checksum of 0 stays 0); TUN puts the original IP packet whole
  after an outer IP header (IPIP, GUE, GRE) with the right lengths toward the real's address;
- the real's reply to a NAT connection, sent right after the connection's first packet, comes out with its source
  rewritten to VIP:port toward the client's gateway; a frame from the real of another tuple, or cut short, is the
  kernel's (unchanged, XDP_PASS);
- an ICMP error about a connection goes to its real; about a NAT connection rewritten as IPVS does: from the
  clients' side the outer destination and the quoted source become real:rport, from the reals' side (toward the
  client's gateway) the outer source and the quoted destination VIP:vport; one hop less, the IPv4 header, quoted
  IPv4 header and ICMP(v6) checksums updated, nothing else changed;
- an echo request to a VIP may come back (XDP_TX) as its reply; a packet a tunnel cannot carry (IPv4 with DF or
  without, IPv6) as the frag-needed / Packet Too Big quoting its start, with an MTU below its length;
- the program never returns XDP_ABORTED; per batch, the verdict counters grew by exactly the packets sent, the
  drop reasons by exactly the XDP_DROPs, and drop_internal not at all.

Frames (tests/fuzz_frames.py): ICMP/ICMPv6 echo requests and errors quoting packets from the VIPs, truncated and
oversized headers, IPv4 options of every kind with good and bad lengths, IPv6 extension-header chains (hop-by-hop,
routing, fragment, destination options, AH, unknown), bad IP and L4 lengths, fragments, 802.1Q and 802.1ad tags,
non-IP ethertypes, every TCP flag byte, SCTP chunks of each kind with right and wrong lengths, SIP messages with
random Call-ID headers (cut anywhere), packets past the MTU, TTLs of 0 and 1, to the services of
tests/fuzz_services.py (DR, NAT with port mapping, TUN of each encapsulation, SCTP, SIP persistence, one-packet
scheduling, lblc/lblcr, persistence, a fwmark, a health-failed real; state-sync export on) and to other addresses.

`make fuzz` runs the full million: `python tests/fuzz.py [COUNT] [SEED]` (as root). tests/test_fuzz.py runs a quick
profile of the same code, and hypothesis-driven frames through the same checks.
"""
import ctypes as ct
import ipaddress
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fuzz_frames import followups, frame  # noqa: E402,F401  (the generator, the checker and the services, in one place)
from fuzz_rules import Violation, check  # noqa: E402,F401
from fuzz_services import CONFIG, LB, LB1_HOSTS, MAC, REAL_MAC, SERVICES, apply, drain_sync  # noqa: E402,F401
from harness import Bench, in_netns  # noqa: E402
from xlb.config.model import addr_bytes  # noqa: E402
from xlb.dataplane import structs as S, testrun  # noqa: E402
from xlb.dataplane.mapkeys import htons  # noqa: E402

# -- running -------------------------------------------------------------------------------------------------------


class Runner:
    """BPF_PROG_TEST_RUN on one frame at a time, buffers and bpf_attr built once (the program runs each frame
    once, as if received on the bench's lb0, or on lb1 when it comes from a host on lb1's link: a NAT real's
    reply). Call inside the bench's namespace."""

    def __init__(self, bench, size=4096):
        self.inp = ct.create_string_buffer(size)
        self.out = ct.create_string_buffer(size + 256)
        self.ctx = testrun._XdpMd(data=0, ingress_ifindex=bench.ifindex)
        self.ifindex = (bench.ifindex, bench.ifindex1)
        self.attr = testrun._TestAttr(prog_fd=bench.prog.fd, data_in=ct.addressof(self.inp),
                                      data_out=ct.addressof(self.out), repeat=1, ctx_size_in=ct.sizeof(self.ctx),
                                      ctx_in=ct.addressof(self.ctx))
        self.ref = ct.byref(self.attr)
        self.kernel_ns = 0  # the program's own time, as BPF_PROG_TEST_RUN measures it

    def __call__(self, data):
        ct.memmove(self.inp, data, len(data))
        self.ctx.data_end = len(data)
        self.ctx.ingress_ifindex = self.ifindex[data[6:12] in LB1_HOSTS]
        self.attr.data_size_in = len(data)
        self.attr.data_size_out = len(self.out)
        if testrun._libc.syscall(testrun._SYS_BPF, testrun._BPF_PROG_TEST_RUN, self.ref, ct.sizeof(self.attr)):
            raise OSError(ct.get_errno(), f"BPF_PROG_TEST_RUN on {data.hex()}")
        self.kernel_ns += self.attr.duration
        return testrun.XDP_ACTIONS.get(self.attr.retval, str(self.attr.retval)), self.out.raw[:self.attr.data_size_out]


def verdict_totals(bench):
    return {k: v.packets for k, v in bench.dp.verdict_counts().items()}


def _key(src, dst, sport, dport, flow):
    k = S.ConnKey()
    k.src = S.addr_words(addr_bytes(ipaddress.ip_address(src)))
    k.dst = S.addr_words(addr_bytes(ipaddress.ip_address(dst)))
    k.sport, k.dport, k.proto, k.family = htons(sport), htons(dport), flow["proto"], flow["family"]
    return k


def has_conn(bench, flow):
    """Is the connection of flow (fuzz_rules.check's) in the conns table?"""
    return bench.dp.m["conns"].get(_key(flow["client"], flow["vip"], flow["cport"], flow["vport"], flow)) is not None


def has_nat_rev(bench, flow):
    """Is the NAT connection of flow in the nat_revs table (its replies' tuple, real:rport -> client)?"""
    k = _key(flow["real"].packed, flow["client"], flow["rport"], flow["cport"], flow)
    return bench.dp.m["nat_revs"].get(k) is not None


def lost_entry(bench, data, action, out, expect):
    """A frame that should have followed its connection but passed unchanged because the connection's entry is
    gone: the packet that made the flow was forwarded by the flow cache (bpf/flowcache.h trusts an entry for
    flow_ttl) after the LRU table evicted the connection under the fuzzer's load. An ICMP error about such a flow
    is the kernel's until its next full-path packet re-creates the entry (docs/reliability.md); so is one from a
    NAT real's side while the reverse entry (nat_revs) is gone."""
    if not expect or (action, out) != ("XDP_PASS", data):
        return False
    if expect[0] == "icmp_out":
        return not has_nat_rev(bench, expect[1])
    return expect[0] == "same" and not has_conn(bench, expect[1])


def run_batch(bench, frames, stats=None, rnd=None):
    """Run frames, check each, then the batch's counters. With rnd, each connection a frame opens or follows is
    followed by frames that belong to it (fuzz_frames.followups: a NAT real's reply, which must come out rewritten,
    ICMP errors, fragments, which must go to its real), each checked so. Returns the
    number of each action; raises Violation naming the first frame that broke a rule."""
    before = verdict_totals(bench)
    actions = {}
    run = Runner(bench)
    sent = lost = 0
    with in_netns(bench.ns):
        for data in frames:
            todo = [(data, None)]
            while todo:
                data, expect = todo.pop(0)
                action, out = run(data)
                sent += 1
                try:
                    flow = check(data, action, out, expect)
                except Violation as exc:
                    if not lost_entry(bench, data, action, out, expect):
                        raise Violation(f"{exc}: frame {data.hex()}" + (f" ({expect})" if expect else "")) from None
                    flow, lost = None, lost + 1
                actions[action] = actions.get(action, 0) + 1
                if flow and rnd is not None and not expect:
                    todo += followups(rnd, flow)
    after = verdict_totals(bench)
    grew = {k: after[k] - before[k] for k in after if after[k] != before[k]}
    if sum(grew.values()) != sent:
        raise Violation(f"verdict counters grew by {sum(grew.values())} for {sent} frames: {grew}")
    drops = sum(v for k, v in grew.items() if k.startswith("drop_") and k != "drop_internal")
    if drops != actions.get("XDP_DROP", 0) or grew.get("drop_internal"):
        raise Violation(f"{actions.get('XDP_DROP', 0)} XDP_DROPs, counted: {grew}")
    drain_sync(bench)
    if stats is not None:
        for k, v in grew.items():
            stats[k] = stats.get(k, 0) + v
        stats["_kernel_ns"] = stats.get("_kernel_ns", 0) + run.kernel_ns
        stats["_frames"] = stats.get("_frames", 0) + sent
        stats["_lost_entry"] = stats.get("_lost_entry", 0) + lost
    return actions


def fuzz(bench, count, seed=1, batch=10000, log=None):
    """Generate and run count frames (and the NAT replies they call for) in batches; returns (reasons counted,
    frames/s of generation + run + check). Applies the fuzz config first (the maps are reset)."""
    apply(bench)
    rnd = random.Random(seed)
    stats = {}
    start = time.monotonic()
    done = 0
    while done < count:
        n = min(batch, count - done)
        run_batch(bench, [frame(rnd) for _ in range(n)], stats, rnd)
        done += n
        if log:
            rate = stats["_frames"] / (time.monotonic() - start)
            log(f"{done} frames (with follow-ups {stats['_frames']}), {rate:.0f}/s")
    stats["_sync_records"] = bench.sync_records
    return stats, stats["_frames"] / (time.monotonic() - start)


def main(argv):
    count = int(argv[1]) if len(argv) > 1 else 1_000_000
    seed = int(argv[2]) if len(argv) > 2 else int(time.time())
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    bench = Bench()
    try:
        print(f"fuzz: {count} frames, seed {seed}", flush=True)
        stats, rate = fuzz(bench, count, seed, batch=20000, log=lambda s: print(s, flush=True))
    finally:
        bench.close()
    kernel_ns, sent, synced = stats.pop("_kernel_ns"), stats.pop("_frames"), stats.pop("_sync_records")
    lost = stats.pop("_lost_entry")
    for k, v in sorted(stats.items(), key=lambda kv: -kv[1]):
        print(f"  {k:22} {v}")
    print(f"fuzz: {count} frames + {sent - count} follow-ups (NAT replies, ICMP errors, fragments), every rule held; "
          f"{rate:.0f} frames/s (generate, run, check); the program itself {kernel_ns / sent:.0f} ns a frame; "
          f"{synced} sync records exported; {lost} follow-ups passed as their connection's entry was gone (evicted; "
          f"the flow cache forwarded it)")


if __name__ == "__main__":
    main(sys.argv)
