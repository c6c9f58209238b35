"""The listings the control commands read (xlb/ops/commands.py), and the rate estimator behind them.

`edit` applies operations (xlb/ops/admin.py) to the running config through DataPlane.apply, which writes only the
difference: connections and templates of services an edit does not touch stay as they are. `list` and `conns`
read the maps for the ipvsadm-format listings built here (xlb/ops/ipvslist.py renders them on the client side);
`zero` clears counters; `save` prints the running config as TOML that `xlb run --config` takes back.

Runtime edits live in the running daemon: SIGHUP re-reads the config file, which is the truth (keepalived's
model), and so does a restart. `xlb save > FILE` keeps them.
"""
import ipaddress
import time

from .parse import ident_name, ident_option
from ..config import dump as xdump
from ..config import tunnel as xtunnel
from ..dataplane import structs as S
from ..dataplane.mapkeys import now_ns, NS
from ..errors import ConfigError
from ..observe.stats import FlowCounters

STATE_NAMES = {S.CONN_STATE["syn"]: "SYN_RECV", S.CONN_STATE["est"]: "ESTABLISHED",
               S.CONN_STATE["fin"]: "FIN_WAIT", S.CONN_STATE["udp"]: "UDP"}
PROTO_NAMES = {6: "TCP", 17: "UDP", 132: "SCTP"}
RATE_PERIOD = 2.0  # seconds, as IPVS's estimator


class RateEstimator:
    """IPVS's estimator: every 2 s the rate over the last period, smoothed avg += (rate - avg) / 4.

    Keyed by slot, ("svc", service id) or ("real", real id), which hash fast; `owners` records the service or real
    each slot held when last sampled, so a slot an apply gives to another starts afresh."""

    def __init__(self):
        self.last = {}    # slot -> (t, conns, packets, bytes, out packets, out bytes)
        self.rates = {}   # slot -> (cps, pps, bps, out pps, out bps)
        self.owners = {}  # slot -> service key, or (service key, real address)
        self.config = None
        self.t = None

    def sample(self, dp, t=None):
        t = time.monotonic() if t is None else t
        if self.t is not None and t - self.t < RATE_PERIOD * 0.95:
            return
        self.t = t
        if self.config is not dp.config:
            owners = dict(_owners(dp))
            self.forget([slot for slot in self.last if self.owners.get(slot) != owners.get(slot)])
            self.owners, self.config = owners, dp.config
        for slot, (packets, bytes_, conns), (opackets, obytes, _) in _counter_slots(dp):
            prev = self.last.get(slot)
            cur = self.last[slot] = (t, conns, packets, bytes_, opackets, obytes)
            if prev is None or t <= prev[0]:
                continue
            dt = t - prev[0]
            now = [max(0, c - p) / dt for c, p in zip(cur[1:], prev[1:])]
            old = self.rates.get(slot, (0.0,) * 5)
            self.rates[slot] = tuple(o + (n - o) / 4 for o, n in zip(old, now))

    def rate(self, slot):
        cps, pps, bps, opps, obps = self.rates.get(slot, (0.0,) * 5)
        return {"cps": round(cps), "inpps": round(pps), "outpps": round(opps), "inbps": round(bps),
                "outbps": round(obps)}

    def forget(self, slots):
        for slot in slots:
            self.last.pop(slot, None)
            self.rates.pop(slot, None)


def _owners(dp):
    """(slot, what holds it) of every service and real of the applied config."""
    for st, reals in dp.layout():
        yield ("svc", st.id), st.svc.key
        for r, rid, _ in reals:
            yield ("real", rid), (st.svc.key, r.ident)


def _counter_slots(dp):
    """(slot, (packets, bytes, conns), (out packets, out bytes, 0)) of every service and real the data plane
    holds: four batch reads."""
    counts = FlowCounters(dp)
    for st, reals in dp.layout():
        yield ("svc", st.id), counts.service(st.id), counts.service_out(st.id)
        for _, rid, _ in reals:
            if rid is not None:
                yield ("real", rid), counts.real(rid), counts.real_out(rid)


def _real_port(svc, real=None):
    if real is not None and real.port is not None:
        return real.port
    return svc.port if svc.fwmark is None else 0


def listing(dp, rates=None):
    """The running services with settings, counters, rates and connection counts: JSON for `list`."""
    rates = rates or RateEstimator()
    counts = dp.real_conn_counts()
    persist = _templates_per_real(dp)
    flows = FlowCounters(dp)
    services = []
    for st, slots in dp.layout():
        svc = st.svc
        c = flows.service(st.id)
        reals = []
        for r, rid, address in slots:
            if r.failed == "removed":  # health-failed: IPVS would not hold it (DEL_DEST)
                continue
            active, inactive = counts.get(rid, (0, 0))
            reals.append({"address": address, "port": _real_port(svc, r), "weight": r.weight,
                          "uthreshold": r.uthreshold, "lthreshold": r.lthreshold, "active": active,
                          "inactive": inactive, "persist": persist.get(rid, 0),
                          "stats": _stats(flows.real(rid), flows.real_out(rid)), "rate": rates.rate(("real", rid))})
        services.append({
            "name": svc.name, "fwmark": svc.fwmark, "family": svc.family, "proto": svc.proto,
            "vip": None if svc.vip is None else str(svc.vip), "port": svc.port, "scheduler": svc.scheduler,
            "sched_flags": list(svc.sched_flags), "method": svc.method, "ops": svc.ops,
            "persistence": svc.persistence_timeout, "tunnel": xtunnel.tree(svc.tunnel) if svc.tunnel else None,
            "netmask": xdump.netmask_spec(svc.family, svc.persistence_netmask),
            "persistence_mode": svc.persistence_mode, "pe": svc.persistence_engine,
            "stats": _stats(c, flows.service_out(st.id)), "rate": rates.rate(("svc", st.id)),
            "reals": reals})
    t = dp.config.timeouts
    return {"size": dp.tables.conns, "timeouts": {"tcp": t.tcp, "tcpfin": t.tcpfin, "udp": t.udp, "syn": t.syn},
            "services": services}


def _stats(c, out):
    """IPVS's counters: in = client to real; out = the real's replies, which only NAT services see."""
    packets, bytes_, conns = c
    return {"conns": conns, "inpkts": packets, "outpkts": out[0], "inbytes": bytes_, "outbytes": out[1]}


def _templates_per_real(dp):
    out = {}
    for _k, v, _st, _until in dp.templates(now_ns()):
        out[v.real_id] = out.get(v.real_id, 0) + 1
    return out


def _addr(family, words):
    b = S.words_bytes(words)
    return str(ipaddress.ip_address(b[:4] if family == 4 else b))


def _port(be16):
    return int.from_bytes(be16.to_bytes(2, "little"), "big")


def conn_entries(dp):
    """Connections and persistence templates as ipvsadm -c lists them."""
    now = now_ns()
    reals = dp.live_reals()
    out = []
    for k, v, r, _st, left in dp.connections(now):
        fam = k.family
        out.append({"proto": PROTO_NAMES.get(k.proto, str(k.proto)), "family": fam, "state": STATE_NAMES[v.state],
                    "expire": left // NS, "caddr": _addr(fam, k.src), "cport": _port(k.sport),
                    "vaddr": _addr(fam, k.dst), "vport": _port(k.dport), "daddr": _addr(fam, r.addr),
                    "dport": _port(r.port or k.dport)})
    for k, v, st, until in dp.templates(now):
        r = reals.get(v.real_id)
        if r is None:  # its real left between the two reads
            continue
        svc = st.svc
        fam = svc.family
        if svc.fwmark is not None:  # IPVS keys a mark's template by the mark, written as an address
            vaddr = str(ipaddress.ip_address(svc.fwmark.to_bytes(4, "big") + (b"" if fam == 4 else bytes(12))))
            proto, vport = "IP", 0
        else:
            vaddr, proto, vport = str(svc.vip), svc.proto.upper(), svc.port
        out.append({"proto": proto, "family": fam, "state": "NONE", "expire": (until - now) // NS,
                    "caddr": _addr(fam, k.client), "cport": 0, "vaddr": vaddr, "vport": vport,
                    "daddr": _addr(fam, r.addr), "dport": _port(r.port) if r.port else _real_port(svc)})
    return out


def zero(dp, rates, ident=None, source="xlb zero"):
    """Zero the counters of one service (and its reals) or of all; returns how many services.

    ``source`` names the command in the error for a service that does not exist (``ipvsadm: -t: no service
    tcp/198.51.100.99:80``), as edits do."""
    n = 0
    for st, reals in dp.layout():
        if ident is not None and not _is(st.svc, ident):
            continue
        n += 1
        dp.zero_counters(st.id, [rid for _, rid, _ in reals])
        slots = [("svc", st.id)] + [("real", rid) for _, rid, _ in reals]
        rates.forget(slots)
    if ident is not None and not n:
        raise ConfigError(source, ident_option(ident), f"no service {ident_name(ident)}")
    return n


def _is(svc, ident):
    if "fwmark" in ident:
        return svc.fwmark == ident["fwmark"] and svc.family == ident["family"]
    return (svc.proto == ident["proto"] and svc.port == ident["port"] and svc.vip is not None
            and svc.vip == ipaddress.ip_address(ident["vip"]))
