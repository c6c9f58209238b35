"""Part 1: per-packet cost of xlb's paths through BPF_PROG_TEST_RUN, against XDP_DROP, XDP_PASS and a minimal
forwarder measured the same way in the same run. Pinned to one CPU; several rounds, the median reported.

Three figures per case, each minus the same figure for XDP_PASS (the harness's own cost):
- `ns_per_pkt` (the headline): a driver program (bench/bpf/traffic.c xb_drive) rewrites the frame into the next
  flow of a set and tail-calls the program under test; one BPF_PROG_TEST_RUN with repeat=N runs N distinct
  flows back to back, as a busy NIC queue would. New-connection cases get a flow never seen before on every run.
- `ns_per_pkt_cold`: every frame built up front with its own preallocated bpf_attr (xlb.dataplane.testrun.PreparedRun) and
  run once (repeat=1), cycling through the same kind of flows. Each run starts on caches the harness's Python
  loop has cooled: the cost of a packet arriving alone.
- `ns_per_pkt_repeat`: only for cases whose packet takes the same path again when the program reruns on its own
  output (pass cases, established flows): one frame, repeat=N. One flow only.
"""
import dataclasses
import ipaddress
import statistics

from xlb.dataplane.program import possible_cpus
from xlb.dataplane.testrun import XDP_ACTIONS, PreparedRun

from . import lab as L
from .packets import TCP, TCP_ACK, TCP_SYN, UDP, frame

VIP4, VIP6 = "198.51.100.10", "2001:db8:100::10"
VIP_PERSIST, VIP_TEMPLATE, VIP_MARK = "198.51.100.11", "198.51.100.12", "198.51.100.13"
VIP_IPIP, VIP_GUE = "198.51.100.14", "198.51.100.15"  # tunnel (TUN) services: IPIP, GUE with its checksum
NON_VIP = "198.51.100.99"
CLIENTS_V4, CLIENTS_V6 = "198.19.0.0", "2001:db8:c::"   # the driver puts clients at .1 to .65535
COLD_CLIENTS_V4 = "198.18.128.0"                         # fresh clients for the repeat=1 template case
FRESH = 1 << 30                                          # flows in a "never repeats" set
SYNC_RING_ROOM = 16000                                   # sync records a run may write (the ring holds 16384)


def _reals(addrs):
    return "".join(f'\n  [[service.real]]\n  address = "{a}"\n' for a in addrs)


def _svc(head, reals):
    return f"[[service]]\n{head}\nscheduler = \"wrr\"\n{_reals(reals)}\n"


BASE_TOML = (
    _svc(f'vip = "{VIP4}"\nport = 80\nproto = "tcp"', L.MICRO_REALS_V4)
    + _svc(f'vip = "{VIP4}"\nport = 53\nproto = "udp"', L.MICRO_REALS_V4)
    + _svc(f'vip = "{VIP6}"\nport = 80\nproto = "tcp"', L.MICRO_REALS_V6)
    + _svc(f'vip = "{VIP_PERSIST}"\nport = 80\nproto = "tcp"\npersistence_timeout = 300\n'
           'persistence_netmask = "255.255.255.0"', L.MICRO_REALS_V4)
    + _svc(f'vip = "{VIP_TEMPLATE}"\nport = 80\nproto = "tcp"\npersistence_timeout = 300', L.MICRO_REALS_V4)
    + _svc(f'vip = "{VIP_IPIP}"\nport = 80\nproto = "tcp"\nmethod = "tun"\ntunnel_source = "198.18.0.2"',
           L.MICRO_REALS_V4)
    + _svc(f'vip = "{VIP_GUE}"\nport = 80\nproto = "tcp"\nmethod = "tun"\ntunnel_source = "198.18.0.2"\n'
           'tunnel_type = "gue"\ntunnel_port = 5555\ntunnel_csum = "csum"', L.MICRO_REALS_V4))
MARK_TOML = (BASE_TOML + f'[[mark]]\nmark = 1\nproto = "tcp"\ndst = "{VIP_MARK}/32"\nports = [80, 443]\n\n'
             + _svc("fwmark = 1", L.MICRO_REALS_V4))


@dataclasses.dataclass
class Case:
    name: str
    target: str                 # "xlb", or a baseline of bench/bpf/baselines.c: "pass", "drop", "min_fwd", ...
    dst: str
    dport: int = 80
    proto: int = TCP
    flags: int = TCP_ACK
    sport: int = 10000          # flow f: client 1 + f % nclients, source port sport + f // nclients
    nflows: int = 16384         # FRESH: a new flow on every run
    nclients: int = 4096
    same_packet: bool = False   # rerunning on its own output takes the same path: report repeat=N too
    establish: bool = False     # run a SYN (TCP) or one datagram per flow first
    cold_src: str = ""          # repeat=1 frames from this range instead of the driver's (fresh clients)
    flow_cache: bool = True     # False: the same case with the flow cache off (settings.flow_ttl = 0)
    sync: bool = False          # True: state-sync export on, the ring buffer emptied before every run

    def src_base(self):
        return CLIENTS_V6 if ":" in self.dst else CLIENTS_V4

    def template(self, flags=None):
        return frame(self.src_base(), self.dst, self.sport, self.dport, self.proto,
                     self.flags if flags is None else flags, src_mac=L.GEN_MAC, dst_mac=L.LB0_MAC)

    def frames(self, start, n):
        """The frames of flows start..start+n, as the driver makes them (or from cold_src)."""
        out = []
        for f in range(start, start + n):
            if self.cold_src:
                src, sport = ipaddress.ip_address(self.cold_src) + f, self.sport
            else:
                src = ipaddress.ip_address(self.src_base()) + 1 + f % self.nclients
                sport = self.sport + f // self.nclients
            out.append(frame(str(src), self.dst, sport, self.dport, self.proto, self.flags,
                             src_mac=L.GEN_MAC, dst_mac=L.LB0_MAC))
        return out


def _cases():
    est = dict(establish=True, same_packet=True)
    new = dict(flags=TCP_SYN, nflows=FRESH, nclients=65535)
    return [
        Case("xdp_pass", "pass", VIP4, same_packet=True),
        Case("xdp_drop", "drop", VIP4, same_packet=True),
        Case("min_fwd", "min_fwd", VIP4, same_packet=True),
        # Floors for any stateful forwarder: one read of dense per-flow state; one insert per new flow.
        Case("floor_flow_read", "flow_read", VIP4, same_packet=True),
        Case("floor_conn_insert", "conn_insert", VIP4, sport=20000, **new),
        Case("non_vip_pass", "xlb", NON_VIP, same_packet=True),
        Case("established_tcp_v4", "xlb", VIP4, **est),
        Case("established_tcp_v4_no_flow_cache", "xlb", VIP4, flow_cache=False, **est),
        Case("established_tcp_v6", "xlb", VIP6, **est),
        # Tunnels: the output is the input encapsulated, so no repeat=N figure (the driver strips what grew).
        Case("established_tcp_v4_tun_ipip", "xlb", VIP_IPIP, establish=True),
        Case("established_tcp_v4_tun_gue_csum", "xlb", VIP_GUE, establish=True),
        Case("udp_v4", "xlb", VIP4, dport=53, proto=UDP, **est),
        Case("new_conn_v4", "xlb", VIP4, sport=20000, **new),
        # The same with state sync's export on (bpf/sync.h): one ring-buffer record per new connection.
        Case("new_conn_v4_sync", "xlb", VIP4, sport=20000, sync=True, **new),
        # Persistence hit: templates for 198.19.0-255.0/24 are made first (see _prepare).
        Case("new_conn_persist_hit_v4", "xlb", VIP_PERSIST, sport=30001, **new),
        # Netmask /32: a fresh client, so a fresh template, on every run (at most 65535 of them).
        Case("new_conn_template_v4", "xlb", VIP_TEMPLATE, sport=40000, flags=TCP_SYN, nflows=65535,
             nclients=65535, cold_src=COLD_CLIENTS_V4),
        Case("fwmark_v4", "xlb", VIP_MARK, sport=20000, **new),
    ]


def _action(run):
    return XDP_ACTIONS.get(run.attr.retval, str(run.attr.retval))


class _Bench:
    def __init__(self, lab, traffic, fds, quick):
        self.lab, self.traffic, self.fds = lab, traffic, fds
        self.ifindex = lab.ifindex["l0"]
        self.rounds = 3 if quick else 5
        self.repeat = 10000 if quick else 200000
        self.cold_n = 500 if quick else 8192

    def once(self, fd, frames):
        for f in frames:
            PreparedRun(fd, f, ifindex=self.ifindex)()

    def driven(self, case, fd, repeat):
        """Median ns of `rounds` driver runs of `repeat` flows each; and the last run's action."""
        self.traffic.target(fd)
        run = PreparedRun(self.traffic.drive.fd, case.template(), ifindex=self.ifindex, repeat=repeat)

        def timed():
            if case.sync:
                self.lab.drain_sync()  # the daemon's reader keeps up; a full ring would time the lost path
            return run()
        timed()  # warm-up round
        ns = statistics.median(timed() for _ in range(self.rounds))
        return ns, _action(run)

    def cold(self, case, fd, start):
        """Median over rounds of the mean ns of repeat=1 runs, one frame per flow."""
        means, actions = [], {}
        for i in range(self.rounds):
            frames = case.frames(start + (i * self.cold_n if case.nflows >= FRESH or case.cold_src else 0),
                                 self.cold_n)
            runs = [PreparedRun(fd, f, ifindex=self.ifindex) for f in frames]
            if case.sync:
                self.lab.drain_sync()
            total = 0
            for run in runs:
                total += run()
            for run in runs:
                actions[_action(run)] = actions.get(_action(run), 0) + 1
            means.append(total / len(runs))
        return statistics.median(means), actions

    def same(self, case, fd):
        run = PreparedRun(fd, case.template(), ifindex=self.ifindex, repeat=self.repeat)
        run()
        return statistics.median(run() for _ in range(self.rounds))

    def measure(self, case):
        with self.lab.flow_cache_as(case.flow_cache), self.lab.sync_as(case.sync):
            return self._measure(case)

    def _measure(self, case):
        fd = self.fds[case.target]
        t = self.traffic
        repeat = self.repeat
        if case.nflows >= FRESH or case.cold_src:
            # New connections into a table with room: an LRU table at capacity adds an eviction to every insert.
            repeat = min(repeat, 50000)
            table = self.lab.baselines[b"xb_conns"] if case.target == "conn_insert" else self.lab.prog["conns"]
            if not L.is_empty(table):
                table.items_delete_batch()
        if case.sync:
            repeat = min(repeat, SYNC_RING_ROOM)
        if case.nflows < FRESH and case.cold_src:
            repeat = min(repeat, 60000 // (self.rounds + 1))  # fresh clients run out at 65535
        t.flows(case.template(), case.nflows, case.nclients, pos=0)
        if case.establish:
            # A SYN (TCP) or a first datagram per flow, then (TCP) an ACK per flow: every flow is established,
            # as on a busy queue, before anything is measured.
            self.traffic.target(fd)
            first = case.template(TCP_SYN if case.proto == TCP else None)
            PreparedRun(t.drive.fd, first, ifindex=self.ifindex, repeat=case.nflows)()
            if case.proto == TCP:
                t.set_pos(0)
                PreparedRun(t.drive.fd, case.template(), ifindex=self.ifindex, repeat=case.nflows)()
            t.set_pos(0)
        before = self._counts() if case.target == "xlb" else None
        res = {}
        res["driven"], res["action"] = self.driven(case, fd, repeat)
        res["runs"] = repeat * (self.rounds + 1)
        if before is not None:
            res["verdicts"], res["templates_created"] = self._delta(before)
        # repeat=1: established cases reuse the flows just driven; fresh cases take flows beyond the driver's.
        cold_start = 0 if case.nflows < FRESH else 1 << 24
        res["cold"], res["cold_actions"] = self.cold(case, fd, cold_start)
        if case.same_packet:
            res["same"] = self.same(case, fd)
        res["repeat"] = repeat
        return res

    def _counts(self):
        return ({k: v.packets for k, v in self.lab.dp.verdict_counts().items()},
                L.count(self.lab.prog["persist"]))

    def _delta(self, before):
        after = self._counts()
        verdicts = {k: v - before[0][k] for k, v in after[0].items() if v != before[0][k]}
        return verdicts, after[1] - before[1]


def tables(lab, quick):
    """The micro part's table sizes: a connection table of 1M entries per CPU, as large as Katran's LRU in the
    side-by-side cases (bench/katran_peer.py); --quick keeps the lab's (no second compile)."""
    if quick:
        return lab.tables
    return dataclasses.replace(lab.tables, conns=(1 << 20) * possible_cpus())


def run(lab, quick=False, log=print):
    """Measure every case, then the same cases side by side with Katran; returns the JSON "micro" section, notes
    on the method and the "katran" section."""
    with lab.tables_of(tables(lab, quick)):
        return _run(lab, quick, log)


def _run(lab, quick, log):
    base, traffic = lab.baselines, lab.traffic
    fds = {name: L.xdp_fd(base, f"xb_{name}").fd
           for name in ("drop", "pass", "min_fwd", "flow_read", "conn_insert")}
    fds["xlb"] = lab.prog.fd
    b = _Bench(lab, traffic, fds, quick)
    log(f"bench: micro ({b.rounds} rounds of {b.repeat} driven runs and {b.cold_n} single runs per case)")
    results = {}
    old_cpus = L.pin_cpu(L.default_cpu())
    try:
        lab.dataplane(BASE_TOML)
        with L.in_netns(lab.lb):
            # Templates for every /24 of the persistence-hit case's clients.
            b.once(lab.prog.fd, [frame(f"198.19.{s}.1", VIP_PERSIST, 30000, 80, TCP, TCP_SYN, src_mac=L.GEN_MAC,
                                       dst_mac=L.LB0_MAC) for s in range(256)])
            for case in _cases():
                if case.name == "fwmark_v4":
                    lab.apply(MARK_TOML)
                results[case.name] = b.measure(case)
            # Baselines again at the end, keeping each figure's lower value: a baseline measured while another
            # tenant of the machine was busy would distort every case.
            for case in _cases()[:3]:
                again = b.measure(case)
                for key in ("driven", "cold", "same"):
                    results[case.name][key] = min(results[case.name][key], again[key])
            from . import katran_peer  # it builds on this module's cases
            katran = katran_peer.run(b, quick, log)
    finally:
        L.unpin(old_cpus)
    return (*_report(results, b), katran)


def _report(res, b):
    out = {}
    for name, r in res.items():
        case = {}
        for suffix, key in (("", "driven"), ("_cold", "cold"), ("_repeat", "same")):
            if key not in r:
                continue
            raw, base, mf = r[key], res["xdp_pass"][key], res["min_fwd"][key]
            case[f"ns_per_pkt{suffix}"] = round(raw - base, 1)
            case[f"ns_raw{suffix}"] = round(raw, 1)
            case[f"ratio_to_min_fwd{suffix}"] = round(raw / mf, 2)
            case[f"ratio_to_min_fwd_net{suffix}"] = round((raw - base) / (mf - base), 2) if mf - base >= 1 else None
        case["action"] = r["action"]
        case["cold_actions"] = r["cold_actions"]
        for k in ("verdicts", "templates_created", "runs"):
            if k in r:
                case[k] = r[k]
        out[name] = case
    notes = {
        "cpu": L.default_cpu(),
        "rounds": b.rounds,
        "ratio_to_min_fwd": "raw figure / min_fwd's raw figure (both include the harness's per-run cost, as "
                            "both would a driver's); ratio_to_min_fwd_net: after subtracting xdp_pass from both "
                            "(null when min_fwd's net figure is under 1 ns)",
        "ns_per_pkt": f"driver (xb_drive) tail-calling the program, repeat={b.repeat}, a different flow each "
                      f"run; minus xdp_pass's ({res['xdp_pass']['driven']:.1f} ns raw)",
        "ns_per_pkt_cold": f"repeat=1 runs of {b.cold_n} prebuilt frames of distinct flows, mean; minus "
                           f"xdp_pass's ({res['xdp_pass']['cold']:.1f} ns raw)",
        "ns_per_pkt_repeat": f"one frame, repeat={b.repeat}; minus xdp_pass's ({res['xdp_pass']['same']:.1f} ns raw)",
    }
    return out, notes
