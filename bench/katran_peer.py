"""Katran as a system of the micro bench: xlb and Katran's balancer run the same cases in the same process, on the
same pinned CPU, alternating round by round, with connection tables of the same size per CPU, aged the same way.

The peer (Katran's `balancer.bpf.c` built from its own sources, and a loader that configures it through its maps)
lives outside this repository: `../shared/peers/katran` next to the checkout, or the directory named by
$XLB_BENCH_KATRAN_DIR. Without those files or without `libbpf1` (the loader's libbpf) the bench says so, runs
without Katran and records why.

Cases (IPv4 TCP to one VIP, 3 reals):
- established, 1 flow and 16384 flows (4096 clients): every flow's SYN and ACK run first; driven and repeat=1;
- new connection, a never-seen SYN; and its whole set-up, the SYN then the ACK of each never-seen flow (both
  counted: the per-flow figure is the sum);
- the same two on a persistent service whose clients all have a template (xlb: persistence netmask /24, every
  /24 templated beforehand). Katran has no templates; its nearest equivalent is a VIP hashed without the source
  port (F_HASH_NO_SRC_PORT): a client keeps its real by consistent hashing, with no extra lookup.

Each round runs XDP_PASS (the harness's cost), xlb and Katran once each (the order of the two alternates); a
case's figure is the median over rounds, its ratio the median of the per-round ratios (raw figures: each includes
the harness's cost, as a NIC's driver would be included).
"""
import ctypes as ct
import dataclasses
import importlib.util
import os
import statistics
import struct
from pathlib import Path

from xlb.dataplane.program import possible_cpus
from xlb.dataplane.testrun import XDP_ACTIONS, PreparedRun

from . import lab as L
from .micro import FRESH, VIP4, VIP_PERSIST, Case
from .packets import TCP_ACK, TCP_SYN

ENV_DIR = "XLB_BENCH_KATRAN_DIR"
DEFAULT_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "peers" / "katran"
# Stock Katran stops recording new connections above 125k/s per CPU, which a bench exceeds: this build does not.
OBJECT = "balancer-norate.o"
F_HASH_NO_SRC_PORT = 1   # Katran's vip_meta flag: hash on the client address only
AGE_SPORT = 28000        # the flows that age both tables (see _age)


def _cases():
    est = dict(flags=TCP_ACK, establish=True)
    new = dict(flags=TCP_SYN, nflows=FRESH, nclients=65535)
    return [
        Case("established_1_flow", "xlb", VIP4, sport=22000, nflows=1, nclients=1, **est),
        Case("established_16384_flows", "xlb", VIP4, sport=23000, **est),
        Case("established_16384_flows_no_flow_cache", "xlb", VIP4, sport=23100, flow_cache=False, **est),
        Case("new_conn_syn", "xlb", VIP4, sport=24000, **new),
        Case("new_conn_setup", "xlb", VIP4, sport=25000, **new),
        Case("new_conn_syn_persist_hit", "xlb", VIP_PERSIST, sport=26000, **new),
        Case("new_conn_setup_persist_hit", "xlb", VIP_PERSIST, sport=27000, **new),
    ]


def open_peer(log):
    """(the katran loader module, a loaded Katran) or (None, the reason it is not there)."""
    where = Path(os.environ.get(ENV_DIR) or DEFAULT_DIR)
    for name in ("katran.py", OBJECT):
        if not (where / name).is_file():
            return None, f"no {where / name}: the Katran peer files are missing (set ${ENV_DIR} to their directory)"
    try:
        spec = importlib.util.spec_from_file_location("xlb_bench_katran", where / "katran.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    except OSError as exc:  # ctypes could not open libbpf.so.1
        return None, f"Katran's loader needs libbpf.so.1 (Debian's libbpf1): {exc}"
    try:
        k = mod.Katran(str(where / OBJECT), expected_attach_type=0, log_stats=False)
    except OSError as exc:
        return None, f"Katran's program did not load: {str(exc).splitlines()[0]}"
    log(f"bench: Katran peer {where / OBJECT}")
    return (mod, k), None


class Peer:
    """Katran configured as xlb's micro bench is: the same VIPs and reals; one LRU, for the bench's CPU."""

    def __init__(self, mod, k, cpu, lru_size):
        self.mod, self.k, self.cpu, self.lru_size = mod, k, cpu, lru_size
        self.fd = k.fd
        k.configure(VIP4, 80, L.MICRO_REALS_V4, gw_mac=L.GEN_MAC, vip_num=0)
        k.configure(VIP_PERSIST, 80, L.MICRO_REALS_V4, gw_mac=L.GEN_MAC, vip_num=1)
        mod.update(k.map_fd("vip_map"), mod.vip_definition(VIP_PERSIST, 80, 6),
                   struct.pack("=II", F_HASH_NO_SRC_PORT, 1))
        self.lru = k.new_lru(cpu, lru_size)

    def empty(self, table=None):
        """Delete every entry of Katran's LRU, or of xlb's bcc `table`, the same way (BPF_MAP_LOOKUP_AND_DELETE_BATCH,
        as bcc's items_delete_batch); returns how many there were."""
        if table is None:
            return self.mod.delete_all(self.lru, self.mod.FLOW_KEY_SIZE, self.mod.REAL_POS_LRU_SIZE)
        return self.mod.delete_all(table.map_fd, ct.sizeof(table.Key), ct.sizeof(table.Leaf))

    def memlock(self):
        return int(self.mod.fdinfo(self.lru).get("memlock", 0))

    def close(self):
        self.k.close()


class SideBySide:
    """Runs the cases; `b` is micro's _Bench (lab, traffic, fds, ifindex)."""

    def __init__(self, b, peer, quick):
        self.b, self.peer, self.lab, self.t = b, peer, b.lab, b.traffic
        self.rounds = 3 if quick else 25
        self.repeat = 10000 if quick else 100000     # established, driven
        self.new_repeat = 4000 if quick else 20000   # new connections per driven round
        self.cold_n = 256 if quick else 2048         # repeat=1 runs per round
        self.fds = {"pass": b.fds["pass"], "xlb": self.lab.prog.fd, "katran": peer.fd}

    def _order(self, r):
        return ("pass", "xlb", "katran") if r % 2 == 0 else ("pass", "katran", "xlb")

    def _drive(self, fd, data, repeat):
        self.t.target(fd)
        run = PreparedRun(self.t.drive.fd, data, ifindex=self.b.ifindex, repeat=repeat)
        ns = run()
        return ns, XDP_ACTIONS.get(run.attr.retval, str(run.attr.retval))

    def _driven(self, case, fd, r):
        """One driven run (an established case) or one round's fresh flows (new connections): ns per flow."""
        if case.nflows < FRESH:
            self.t.set_pos(0)
            return self._drive(fd, case.template(), self.repeat)
        n = self.new_repeat
        self.t.flows(case.template(TCP_SYN), FRESH, case.nclients, pos=r * n)
        ns, action = self._drive(fd, case.template(TCP_SYN), n)
        if case.name.startswith("new_conn_setup"):
            self.t.flows(case.template(TCP_ACK), FRESH, case.nclients, pos=r * n)
            ack, action = self._drive(fd, case.template(TCP_ACK), n)
            ns += ack
        return ns, action

    def _cold_runs(self, case, r):
        """Lists of prepared repeat=1 runs, run one after the other per flow (SYN, then ACK for a set-up)."""
        if case.nflows < FRESH:
            frames = case.frames(0, min(self.cold_n, case.nflows))
            frames = (frames * (self.cold_n // len(frames)))[:self.cold_n]
            return [[f] for f in frames]
        syn = dataclasses.replace(case, flags=TCP_SYN).frames((1 << 24) + r * self.cold_n, self.cold_n)
        if not case.name.startswith("new_conn_setup"):
            return [[f] for f in syn]
        ack = dataclasses.replace(case, flags=TCP_ACK).frames((1 << 24) + r * self.cold_n, self.cold_n)
        return [list(pair) for pair in zip(syn, ack)]

    def _cold(self, flows, fd, actions):
        total = 0
        for runs in flows:
            for run in runs:
                run.attr.prog_fd = fd
                total += run()
                name = XDP_ACTIONS.get(run.attr.retval, str(run.attr.retval))
                actions[name] = actions.get(name, 0) + 1
        return total / len(flows)

    def _establish(self, case):
        self.t.flows(case.template(TCP_SYN), case.nflows, case.nclients, pos=0)
        for name in ("xlb", "katran"):
            self._drive(self.fds[name], case.template(TCP_SYN), case.nflows)
            self.t.set_pos(0)
        self.t.flows(case.template(), case.nflows, case.nclients, pos=0)
        for name in ("xlb", "katran"):
            self._drive(self.fds[name], case.template(), case.nflows)
            self.t.set_pos(0)

    def measure(self, case):
        with self.lab.flow_cache_as(case.flow_cache):
            return self._measure(case)

    def _seed(self, case):
        """Every client of a persistence case seen once by both systems: xlb's templates (made at the start of
        the micro part) are refreshed, Katran's per-client LRU entries (the port is not part of its key on this
        VIP) made; xlb's connection entries of those SYNs are deleted, Katran's entries are its templates."""
        seed = dataclasses.replace(case, sport=case.sport + 999, nflows=case.nclients)
        for name in ("xlb", "katran"):
            self.t.flows(seed.template(TCP_SYN), seed.nflows, seed.nclients, pos=0)
            self._drive(self.fds[name], seed.template(TCP_SYN), seed.nflows)
        self.peer.empty(self.lab.prog["conns"])

    def _measure(self, case):
        if case.establish:
            self._establish(case)
        else:
            self.peer.empty(self.lab.prog["conns"])
            self.peer.empty()
            if case.dst == VIP_PERSIST:
                self._seed(case)
        per = {s: {"driven": [], "cold": []} for s in self.fds}
        actions = {s: None for s in self.fds}
        cold_actions = {s: {} for s in self.fds}
        for name in self.fds:  # warm-up (new connections: round 0's flows, never measured)
            self._driven(case, self.fds[name], 0)
        for r in range(1, self.rounds + 1):
            flows = [[PreparedRun(0, f, ifindex=self.b.ifindex) for f in runs] for runs in self._cold_runs(case, r)]
            for name in self._order(r):
                ns, actions[name] = self._driven(case, self.fds[name], r)
                per[name]["driven"].append(ns)
                per[name]["cold"].append(self._cold(flows, self.fds[name], cold_actions[name]))
        out = {}
        for key, suffix in (("driven", ""), ("cold", "_cold")):
            x, k, p = (per[s][key] for s in ("xlb", "katran", "pass"))
            out[f"xlb_ns{suffix}"] = round(statistics.median(x), 1)
            out[f"katran_ns{suffix}"] = round(statistics.median(k), 1)
            out[f"pass_ns{suffix}"] = round(statistics.median(p), 1)
            out[f"ratio_to_katran{suffix}"] = round(statistics.median(a / b for a, b in zip(x, k)), 3)
            net = [(a - c) / (b - c) for a, b, c in zip(x, k, p) if b - c >= 1]
            out[f"ratio_to_katran_net{suffix}"] = round(statistics.median(net), 3) if net else None
        out["actions"] = {s: actions[s] for s in ("xlb", "katran")}
        out["cold_actions"] = {s: cold_actions[s] for s in ("xlb", "katran")}
        if not case.establish:
            # Entries in each table after the case, which started with none (persistence: Katran's client
            # entries only).
            out["flows_sent"] = (self.rounds + 1) * self.new_repeat + self.rounds * self.cold_n
            out["recorded"] = {"xlb": self.peer.empty(self.lab.prog["conns"]), "katran": self.peer.empty()}
        return out

    def age(self):
        """Fill both tables to their per-CPU capacity with new connections and empty them the same way: an LRU
        table that was filled and emptied places new elements differently from a fresh one."""
        n = self.peer.lru_size
        age = Case("age", "xlb", VIP4, sport=AGE_SPORT, flags=TCP_SYN, nflows=FRESH, nclients=65535)
        self.peer.empty(self.lab.prog["conns"])
        for name in ("xlb", "katran"):
            self.t.flows(age.template(), FRESH, age.nclients, pos=0)
            self._drive(self.fds[name], age.template(), n)
        return {"xlb": self.peer.empty(self.lab.prog["conns"]), "katran": self.peer.empty()}


def run(b, quick, log):
    """The "katran" section of the results: {"present": True, cases, notes} or {"present": False, "reason"}."""
    got, reason = open_peer(log)
    if got is None:
        log(f"bench: running without Katran: {reason}")
        return {"present": False, "reason": reason}
    mod, k = got
    lru_size = b.lab.tables.conns // possible_cpus()
    peer = Peer(mod, k, L.default_cpu(), lru_size)
    try:
        s = SideBySide(b, peer, quick)
        log(f"bench: side by side with Katran ({s.rounds} rounds; tables {lru_size} entries per CPU)")
        aged = s.age()
        cases = {}
        for case in _cases():
            cases[case.name] = s.measure(case)
            c = cases[case.name]
            plain = cases.get(case.name.replace("_persist_hit", ""))
            if plain is not case and plain is not None and case.dst == VIP_PERSIST:
                # Against Katran's plain new connection (an LRU miss and insert; the same process, other rounds).
                for sfx in ("", "_cold"):
                    c[f"ratio_to_katran_new_conn{sfx}"] = round(c[f"xlb_ns{sfx}"] / plain[f"katran_ns{sfx}"], 3)
            log(f"bench:   {case.name}: xlb {c['xlb_ns']:.0f} ns, Katran {c['katran_ns']:.0f} ns driven "
                f"({c['ratio_to_katran']:.2f}x); repeat=1 {c['ratio_to_katran_cold']:.2f}x")
        notes = {
            "object": str(Path(os.environ.get(ENV_DIR) or DEFAULT_DIR) / OBJECT),
            "table_entries_per_cpu": lru_size,
            "katran_lru_memlock_bytes": peer.memlock(),
            "aged_with": aged,
            "rounds": s.rounds,
            "driven": f"xb_drive tail-calling each system; established: repeat={s.repeat} over the case's flows; new "
                      f"connections: {s.new_repeat} never-seen flows a round (a set-up: their SYNs, then their "
                      "ACKs, the two figures added). Every driven run first undoes what the previous one grew "
                      "(Katran's IPIP, 20 bytes) with bpf_xdp_adjust_head: the same call for every system",
            "cold": f"{s.cold_n} repeat=1 runs a round of prebuilt frames (a set-up: SYN then ACK per flow, added)",
            "ratio": "median over rounds of xlb's raw ns / Katran's raw ns in the same round; _net: both minus "
                     "XDP_PASS's of the same round",
            "persist_hit": "xlb: a persistent service (netmask /24) whose every client /24 has a template; a new "
                           "connection is placed by it and recorded. Katran has no templates: its nearest "
                           "equivalent is a VIP hashed without the source port (F_HASH_NO_SRC_PORT), whose LRU "
                           "entries are keyed without it too, so a client seen before (every client is, as every "
                           "xlb client has its template) is an LRU hit and nothing is recorded per connection. "
                           "ratio_to_katran_new_conn: xlb's figure over Katran's never-seen SYN (an insert) of "
                           "the plain case",
            "differences": "Katran encapsulates (IPIP) and keeps no TCP state, connection counts or templates; "
                           "its ring is filled round robin (one array read per pick, as Maglev's)",
        }
        return {"present": True, "cases": cases, "notes": notes}
    finally:
        peer.close()
