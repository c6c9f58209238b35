"""Part 2: forwarding rate through veth pairs, xlb against what a user would otherwise reach for.

The generator (bench/bpf/traffic.c xb_gen, BPF_PROG_TEST_RUN with live frames) sends 64-byte frames of thousands
of flows from thousands of clients out of gen:g0; the system under test forwards them from lb:l0 out of lb:l1;
sink:s0 (which owns the reals' addresses and MAC) counts them in XDP. Systems:
- xlb: the real program and control plane (DataPlane.apply), native XDP on l0, DR to the reals in sink;
- floor: a trivial XDP program on l0 that redirects every frame to l1;
- nft_dnat: no XDP on l0; nftables DNAT with a `jhash` map to the reals, conntrack, kernel forwarding;
- kernel_fwd: no XDP on l0; plain kernel routing of the VIP to one real.
Everything runs on one CPU (the generator's): the generator, l0's NAPI, the system under test and the sink share
it, so a rate is the whole pipe's, and differences between systems are differences in their per-packet cost.
Kernels that refuse live frames (EPERM on some machines) get the same frames from an AF_PACKET TX ring instead
(bench/ringgen.py; the notes say which generator ran and why); if that fails too, the part is {"skipped": why}.
"""
import ctypes as ct
import subprocess
import time

from pyroute2 import netns as pnetns

from xlb.dataplane.testrun import BPF_F_TEST_XDP_LIVE_FRAMES, PreparedRun, live_frames_refusal

from . import lab as L
from .packets import TCP, TCP_ACK, UDP, frame
from .ringgen import RingGen

VIP4, VIP6 = "198.51.100.20", "2001:db8:100::20"
MIXES = {"tcp4": (VIP4, TCP, 80), "udp4": (VIP4, UDP, 53), "tcp6": (VIP6, TCP, 80), "udp6": (VIP6, UDP, 53)}
CLIENTS = {4: "198.19.0.0", 6: "2001:db8:c::"}
NCLIENTS, NFLOWS = 4096, 16384
SYSTEMS = ("xlb", "floor", "nft_dnat", "kernel_fwd")


def _svc(vip, port, proto, reals):
    body = "".join(f'\n  [[service.real]]\n  address = "{a}"\n' for a in reals)
    return f'[[service]]\nvip = "{vip}"\nport = {port}\nproto = "{proto}"\nscheduler = "wrr"\n{body}\n'


XLB_TOML = "".join(_svc(vip, port, "tcp" if proto == TCP else "udp", L.SINK_REALS_V6 if ":" in vip else
                        L.SINK_REALS_V4) for vip, proto, port in MIXES.values())


def _nft_map(reals):
    return ", ".join(f"{i} : {a}" for i, a in enumerate(reals))


NFT_RULES = f"""
table inet xb {{
  chain pre {{
    type nat hook prerouting priority dstnat; policy accept;
    ip daddr {VIP4} meta l4proto {{ tcp, udp }} dnat ip to jhash ip saddr . th sport mod 3 map {{ {_nft_map(L.SINK_REALS_V4)} }}
    ip6 daddr {VIP6} meta l4proto {{ tcp, udp }} dnat ip6 to jhash ip6 saddr . th sport mod 3 map {{ {_nft_map(L.SINK_REALS_V6)} }}
  }}
}}
"""


def nft(ns, script):
    """Run `nft -f -` inside namespace ns (the bench may shell out to nft; the product never does)."""
    res = subprocess.run(["nft", "-f", "-"], input=script.encode(), capture_output=True,
                         preexec_fn=lambda: pnetns.setns(ns, flags=0))
    if res.returncode:
        raise RuntimeError(f"nft failed: {res.stderr.decode().strip()}")


class _Forward:
    def __init__(self, lab, traffic, quick, log, ring=None):
        self.lab, self.traffic, self.log = lab, traffic, log
        self.ring, self._ring_mix = ring, None  # the AF_PACKET generator, when live frames are refused
        self.seconds = 0.1 if quick else 2.0
        self.rounds = 1 if quick else 3
        self.g0 = lab.ifindex["g0"]

    def _gen(self, mix, packets):
        """Send about `packets` frames of mix (the ring: whole passes over the flows); returns (wall seconds,
        frames sent)."""
        vip, proto, port = MIXES[mix]
        fam = 6 if ":" in vip else 4
        if self.ring:
            if self._ring_mix != mix:
                self.ring.load(CLIENTS[fam], vip, 10000, port, proto, TCP_ACK, NFLOWS, NCLIENTS,
                               src_mac=L.GEN_MAC, dst_mac=L.LB0_MAC)
                self._ring_mix = mix
            t0 = time.perf_counter()
            sent = self.ring.send(max(1, round(packets / NFLOWS)))
            return time.perf_counter() - t0, sent
        tpl = frame(CLIENTS[fam], vip, 10000, port, proto, TCP_ACK, src_mac=L.GEN_MAC, dst_mac=L.LB0_MAC)
        self.traffic.flows(tpl, NFLOWS, NCLIENTS, ifindex=self.g0, pos=None)
        run = PreparedRun(self.traffic.gen.fd, tpl, ifindex=self.g0, repeat=packets,
                          flags=BPF_F_TEST_XDP_LIVE_FRAMES, batch_size=64)
        with L.in_netns(self.lab.gen):
            t0 = time.perf_counter()
            run()
            return time.perf_counter() - t0, packets

    def measure(self, system, mix):
        self._gen(mix, NFLOWS)  # warm-up: every flow seen (connection entries, conntrack, caches)
        wall, sent = self._gen(mix, NFLOWS)
        packets = max(10000, int(sent / wall * self.seconds))
        rounds = []
        for _ in range(self.rounds):
            links0, sink0, verd0 = self.lab.link_stats(), self.traffic.sink_count(), self._verdicts(system)
            wall, packets = self._gen(mix, packets)
            time.sleep(0.05)  # let the last batch drain
            links1, sink1, verd1 = self.lab.link_stats(), self.traffic.sink_count(), self._verdicts(system)
            delivered = sink1 - sink0
            where = {f"{ifn}.{k}": links1[ifn][k] - links0[ifn][k] for ifn in links1 for k in links1[ifn]
                     if k.endswith(("dropped", "errors")) and links1[ifn][k] != links0[ifn][k]}
            where.update({f"xlb.{k}": v - verd0.get(k, 0) for k, v in verd1.items()
                          if not k.startswith("fwd") and v != verd0.get(k, 0)})
            rounds.append({"mpps": delivered / wall / 1e6, "offered_mpps": packets / wall / 1e6,
                           "offered": packets, "delivered": delivered, "lost": packets - delivered,
                           "lost_at": where})
        rounds.sort(key=lambda r: r["mpps"])
        return rounds[len(rounds) // 2]

    def _verdicts(self, system):
        if system != "xlb":
            return {}
        return {k: v.packets for k, v in self.lab.dp.verdict_counts().items()}


def run(lab, quick=False, log=print):
    """Measure every system on every mix; returns the JSON "forward" section and its notes. A kernel that refuses
    live frames gets the AF_PACKET generator; the section is {"skipped": why} only if that cannot be set up."""
    refusal = live_frames_refusal()
    ring, generator = None, "xb_gen under BPF_PROG_TEST_RUN with live frames"
    if refusal:
        try:
            with L.in_netns(lab.gen):
                ring = RingGen("g0", NFLOWS)
        except OSError as exc:
            why = f"{refusal}, and no AF_PACKET TX ring either ({exc})"
            log(f"bench: forward skipped: {why}")
            return {"skipped": why}, {"skipped": why}
        generator = f"an AF_PACKET TX ring (bench/ringgen.py): {refusal}"
        log(f"bench: forward: {refusal}; generating with an AF_PACKET TX ring instead")
    base, traffic = lab.baselines, lab.traffic
    f = _Forward(lab, traffic, quick, log, ring)
    t = lab.topo
    log(f"bench: forward ({f.rounds} x {f.seconds}s per system and mix)")
    old_cpus = L.pin_cpu(L.default_cpu())
    out = {}
    try:
        lab.attach(lab.sink, "s0", traffic.sink.fd)
        t.route(lab.lb, f"{VIP4}/32", gateway=L.SINK_REALS_V4[0])
        t.route(lab.lb, f"{VIP6}/128", gateway=L.SINK_REALS_V6[0])
        for system in SYSTEMS:
            if system == "xlb":
                lab.dataplane(XLB_TOML)
                lab.attach(lab.lb, "l0", lab.prog.fd)
            elif system == "floor":
                base["floor_out"][ct.c_uint32(0)] = ct.c_uint32(lab.ifindex["l1"])
                lab.attach(lab.lb, "l0", L.xdp_fd(base, "xb_floor").fd)
            else:
                # No XDP on l0: veth hands redirected frames to the stack only with GRO on.
                t.gro(lab.lb, "l0", True)
                if system == "nft_dnat":
                    nft(lab.lb, NFT_RULES)
                    # Mid-stream ACKs of flows conntrack never saw open: accept them (a restarted box).
                    t.sysctl(lab.lb, "net/netfilter/nf_conntrack_tcp_be_liberal", "1")
            try:
                mixes = {mix: f.measure(system, mix) for mix in MIXES}
            finally:
                if system in ("xlb", "floor"):
                    lab.detach(lab.lb, "l0")
                if system == "nft_dnat":
                    nft(lab.lb, "delete table inet xb")
            wall = sum(m["offered"] / (m["offered_mpps"] * 1e6) for m in mixes.values())
            out[system] = {
                "mpps": round(sum(m["delivered"] for m in mixes.values()) / wall / 1e6, 3),
                "offered_mpps": round(sum(m["offered"] for m in mixes.values()) / wall / 1e6, 3),
                "mixes": {k: {**v, "mpps": round(v["mpps"], 3), "offered_mpps": round(v["offered_mpps"], 3)}
                          for k, v in mixes.items()},
            }
            log(f"bench: forward {system}: {out[system]['mpps']} Mpps delivered")
    finally:
        L.unpin(old_cpus)
        if ring:
            ring.close()
    notes = {"generator": generator,
             "frames": "IPv4 60 bytes + FCS = 64 on the wire; IPv6 the minimum its headers allow (UDP 62, TCP 74)",
             "flows": f"{NFLOWS} flows from {NCLIENTS} clients per mix, TCP ACKs (mid-stream) or UDP",
             "cpu": "generator, system under test and sink share one CPU",
             "mpps": "sum delivered / sum wall over the four mixes; per mix: median of rounds"}
    return out, notes
