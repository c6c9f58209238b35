"""Part "flood": the SYN-flood defense's costs and its effect (docs/reliability.md, "SYN flood"), through
BPF_PROG_TEST_RUN with the flow-cycling driver (bench/bpf/traffic.c xb_drive), pinned to one CPU, in one process.
Each figure is measured with [tables] half_open on (the default) and off, and reported as ratios:

- new_conn: a SYN of a never-seen flow (the half-open insert vs the conns insert);
- handshake: a never-seen flow's SYN and then its ACK (the ACK promotes the half-open entry);
- established: packets of E established flows with no flood, then with a flood of never-seen SYNs interleaved
  one for one (after twice the half-open table's capacity of flood SYNs, so its LRU evicts on every insert, a
  batch of flood SYNs before each timed batch of as many established packets); `flood_ratio` = established ns
  under the flood / without it. With the flow cache on and off (off: every packet reads conns);
- kept: established flows whose conns entry survived a flood of twice the connection table's capacity.
"""
import dataclasses
import ipaddress
import socket
import statistics

from xlb.dataplane import structs as S
from xlb.dataplane.program import half_open_size
from xlb.dataplane.testrun import PreparedRun

from . import lab as L
from .micro import BASE_TOML, VIP4
from .packets import TCP, TCP_ACK, TCP_SYN, frame

CLIENTS = "198.19.0.0"        # the driver's clients: .1 up to nclients
EST_SPORT, FLOOD_SPORT, NEW_SPORT = 10000, 30000, 50000


def _template(flags, sport):
    return frame(CLIENTS, VIP4, sport, 80, TCP, flags, src_mac=L.GEN_MAC, dst_mac=L.LB0_MAC)


class _Flood:
    def __init__(self, lab, quick):
        self.lab, self.t = lab, lab.traffic
        self.ifindex = lab.ifindex["l0"]
        self.rounds = 3 if quick else 7
        self.est = 4096 if quick else 16384       # established flows
        self.batch = 2048 if quick else 8192      # runs per timed batch
        self.prefill = 2 * half_open_size(lab.tables.conns)  # flood SYNs before the timed batches
        self.fresh_pos = 0                        # next never-seen flow of the flood and new-connection sets

    def drive(self, template, nflows, nclients, pos, repeat):
        """ns per run of `repeat` driver runs over the flows of `template` from flow `pos`."""
        self.t.flows(template, nflows, nclients, pos=pos)
        run = PreparedRun(self.t.drive.fd, template, ifindex=self.ifindex, repeat=repeat)
        return run()

    def fresh(self, flags, sport, repeat):
        """`repeat` never-seen flows (65535 clients x ports from sport) with these flags."""
        return self.drive(_template(flags, sport), 1 << 30, 65535, self.fresh_pos, repeat)

    def clear(self):
        for name in ("conns", "half_open", "persist", "persist_half"):
            if not L.is_empty(self.lab.prog[name]):
                self.lab.prog[name].items_delete_batch()

    def new_conn(self):
        out = []
        for _ in range(self.rounds):
            self.clear()
            out.append(self.fresh(TCP_SYN, NEW_SPORT, self.batch))
        return statistics.median(out)

    def handshake(self):
        out = []
        for _ in range(self.rounds):
            self.clear()
            syn = self.fresh(TCP_SYN, NEW_SPORT, self.batch)
            ack = self.fresh(TCP_ACK, NEW_SPORT, self.batch)
            self.fresh_pos += self.batch
            out.append(syn + ack)
        return statistics.median(out)

    def established(self, flood):
        """Median ns of a timed batch over the established flows, each batch after one of flood SYNs if `flood`;
        and how many established flows still have their conns entry afterwards."""
        est_ack, est_syn = _template(TCP_ACK, EST_SPORT), _template(TCP_SYN, EST_SPORT)
        nclients = 4096
        self.clear()
        self.drive(est_syn, self.est, nclients, 0, self.est)
        self.drive(est_ack, self.est, nclients, 0, self.est)
        self.drive(est_ack, self.est, nclients, 0, self.est)  # warm
        out, pos = [], 0
        if flood:
            self.flood_syns(self.prefill)
        for _ in range(self.rounds * 4):
            if flood:
                self.flood_syns(self.batch)
            out.append(self.drive(est_ack, self.est, nclients, pos, self.batch))
            pos = (pos + self.batch) % self.est
        return statistics.median(out)

    def flood_syns(self, n):
        for _ in range(0, n, 1 << 16):
            self.fresh(TCP_SYN, FLOOD_SPORT, min(n, 1 << 16))
            self.fresh_pos += min(n, 1 << 16)

    def kept(self):
        """Established flows (of self.est) whose conns entry outlives a flood of 2x the connection table."""
        self.established(False)
        self.flood_syns(2 * self.lab.tables.conns)
        conns = self.lab.prog["conns"]
        return sum(1 for k in self._est_keys() if conns.get(conns.Key.from_buffer_copy(k)) is not None)

    def _est_keys(self):
        for f in range(self.est):
            k = S.ConnKey()
            k.src = S.addr_words(ipaddress.ip_address(CLIENTS).packed.ljust(16, b"\0"))
            k.src[0] = socket.htonl(int(ipaddress.ip_address(CLIENTS)) + 1 + f % 4096)
            k.dst = S.addr_words(ipaddress.ip_address(VIP4).packed.ljust(16, b"\0"))
            k.sport, k.dport = socket.htons(EST_SPORT + f // 4096), socket.htons(80)
            k.proto, k.family = TCP, 4
            yield bytes(k)

    def measure(self):
        res = {"new_conn_ns": self.new_conn(), "handshake_ns": self.handshake()}
        for cache in (True, False):
            with self.lab.flow_cache_as(cache):
                sfx = "" if cache else "_no_flow_cache"
                quiet = self.established(False)
                loud = self.established(True)
                res[f"established_ns{sfx}"] = quiet
                res[f"established_flood_ns{sfx}"] = loud
                res[f"flood_ratio{sfx}"] = round(loud / quiet, 3)
        res["kept"], res["established"] = self.kept(), self.est
        return res


def run(lab, quick=False, log=print):
    """{"on": figures, "off": figures, "ratios": on/off} for the flood part."""
    b = _Flood(lab, quick)
    log(f"bench: flood ({b.rounds} rounds; {b.est} established flows; batches of {b.batch}; half-open capacity "
        f"{half_open_size(lab.tables.conns)})")
    out = {}
    old_cpus = L.pin_cpu(L.default_cpu())
    try:
        with L.in_netns(lab.lb):
            for name, on in (("on", True), ("off", False)):
                dp = lab.dataplane(BASE_TOML)
                dp.apply(dataclasses.replace(dp.config, tables=dataclasses.replace(lab.tables, half_open=on)))
                b.t.target(lab.prog.fd)
                out[name] = b.measure()
    finally:
        L.unpin(old_cpus)
    out["flood_sources"] = b.fresh_pos
    out["new_conn_ratio_on_off"] = round(out["on"]["new_conn_ns"] / out["off"]["new_conn_ns"], 3)
    out["handshake_ratio_on_off"] = round(out["on"]["handshake_ns"] / out["off"]["handshake_ns"], 3)
    return out
