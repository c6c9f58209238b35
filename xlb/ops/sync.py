"""State sync in `xlb run --sync master|backup|both` (or the config's ``[sync]``), compatible with the IPVS sync
daemon (protocol version 1, xlb/sync/).

- master: the data plane writes a record for every new connection and every TCP state change of a connection
  entry into its ring buffer (bpf/sync.h; only while the settings flag is on). Each record becomes the connection's
  sync entry and, for a persistent service, its template's (the masked client on the connection's real, for the
  persistence timeout), as IPVS sends a connection with its template. Every `refresh` seconds the connections
  active since the last refresh are sent again (IPVS re-sends busy connections every sync_period packets; an
  established flow here never leaves the flow cache to be counted), so a backup that started late learns them and
  long-lived ones do not time out there. A message leaves when full or FLUSH seconds after its first entry.
- backup: each received entry is written into the connection or template table for the local service with the
  same VIP, protocol and port (or mark) and its real with the same address, to expire in the timeout the entry
  carries (at most the local one). An entry of a service or real unknown here is counted by reason and skipped.

One thread does both roles; it takes the daemon's lock only to write maps and to read the id tables. Nothing that
arrives can end it: wire.decode refuses bad messages, and a failed round is logged and counted.
"""
import ipaddress
import select
import threading
import time
from collections import Counter

from ..config.model import addr_bytes, fwmark_key, mask_address
from ..dataplane import structs as S
from ..dataplane.mapkeys import NS, htons, now_ns, real_key
from ..errors import brief
from ..sync import transport, wire

POLL = 0.05  # seconds the thread waits for ring-buffer records or datagrams per round
FLUSH = 0.2  # seconds an entry may wait in a message that is not full (the kernel's master waits up to 2 s)
PROTO_NAME = {wire.IPPROTO_TCP: "tcp", wire.IPPROTO_UDP: "udp"}
CS = S.CONN_STATE
# The data plane's states as IPVS's (a director sees a client's SYN as SYN_RECV), and IPVS's states as ours.
TO_WIRE = {CS["syn"]: wire.TCP_S_SYN_RECV, CS["est"]: wire.TCP_S_ESTABLISHED, CS["fin"]: wire.TCP_S_FIN_WAIT,
           CS["udp"]: wire.UDP_S_NORMAL}
FROM_WIRE_TCP = {wire.TCP_S_ESTABLISHED: CS["est"], **dict.fromkeys(
    (wire.TCP_S_FIN_WAIT, wire.TCP_S_TIME_WAIT, wire.TCP_S_CLOSE, wire.TCP_S_CLOSE_WAIT, wire.TCP_S_LAST_ACK),
    CS["fin"])}  # every other TCP state: SYN
TIMEOUT_OF = {CS["syn"]: "syn", CS["est"]: "tcp", CS["fin"]: "tcpfin", CS["udp"]: "udp"}
# A service's forwarding method as the entries' flags name it (IPVS takes them from the dest: ip_vs_bind_dest).
FWD_FLAG = {"dr": wire.CONN_F_DROUTE, "nat": wire.CONN_F_MASQ, "tun": wire.CONN_F_TUNNEL}


def _address(words, family):
    raw = bytes(words)
    return ipaddress.IPv4Address(raw[:4]) if family == S.AF_INET else ipaddress.IPv6Address(raw)


def _ntohs(port):
    return htons(port)  # a byte swap both ways


def to_wire(ev, st, daddr, timeouts, dport=0):
    """The sync entries of one ring-buffer record of service state `st` on real `daddr` (`dport`: its own port,
    NAT's; 0: the one the client sent to): its template first (a persistent service), then the connection."""
    svc, k = st.svc, ev.key
    caddr, vaddr = _address(k.src, k.family), _address(k.dst, k.family)
    cport, vport = _ntohs(k.sport), _ntohs(k.dport)
    established = ev.state == CS["est"]
    fwd = FWD_FLAG[svc.method]
    out = []
    if svc.persistence_timeout:
        client = _address(mask_address(addr_bytes(caddr), svc.persistence_netmask), k.family)
        state = wire.CTPL_S_ASSURED if established else wire.CTPL_S_NONE
        if svc.fwmark is not None:
            out.append(wire.fwmark_template(svc.fwmark, client, daddr, svc.persistence_timeout, fwd, state))
        else:
            out.append(wire.template(client, vaddr, svc.port, daddr, dport or svc.port, k.proto,
                                     svc.persistence_timeout, fwd, state))
    flags = fwd | (0 if established else wire.CONN_F_INACTIVE)
    out.append(wire.SyncConn(k.proto, caddr, cport, vaddr, vport, daddr, dport or vport, flags, TO_WIRE[ev.state],
                             svc.fwmark or 0, getattr(timeouts, TIMEOUT_OF[ev.state])))
    return out


def _service(dp, c):
    """The local service state a received entry belongs to, or None."""
    if c.is_template:
        if c.protocol == wire.IPPROTO_IP:
            return dp.services.get(fwmark_key(c.family, c.template_mark))
        return dp.services.get((PROTO_NAME.get(c.protocol), c.vaddr, c.vport))
    if c.fwmark:
        st = dp.services.get(fwmark_key(c.family, c.fwmark))
        if st is not None:
            return st
    proto = PROTO_NAME.get(c.protocol)
    return dp.services.get((proto, c.vaddr, c.vport)) or dp.services.get((proto, c.vaddr, 0))


def _order(dest):
    return dest[0].version, dest[0], dest[1]


def _real_id(dp, st, c):
    """The id of the real a received entry names: by its address and port (IPVS's destination; under NAT two
    reals may share an address), else by address alone for a real without a port of its own (DR, TUN, NAT to the
    client's port), whose entries carry the service's or the client's port. A template of a fwmark or port-zero
    service carries no port (dport 0): it names the one real on its address, and none when two ports share it."""
    rid = dp.real_ids.get((st.svc.key, c.daddr, c.dport)) or dp.real_ids.get((st.svc.key, c.daddr, 0))
    if rid is None and c.dport == 0:
        (one, *more) = [r for r in st.svc.reals if r.address == c.daddr] or [None]
        if one is not None and not more:
            rid = dp.real_ids.get(real_key(st.svc.key, one))
    return rid


def _keeps_local(dp, st, client, rid, addr_of):
    """Whether a received template on real `rid` yields to the one in force here: when each of several
    masters (`--sync both` behind ECMP) placed a client before hearing of the others, each would take the other's
    and they would swap, and a refresh (which sends a connection's template on the connection's real) would
    flip them again. So of two templates in force on different reals, every node keeps the one on the lower real
    address (and port), and all end on the same one. (IPVS keeps whichever it has, so its directors may stay
    apart.)"""
    here = dp.live_template_real(st, client)
    if here is None or here == rid:
        return False
    if not addr_of:
        addr_of.update((i, (addr, port)) for (_key, addr, port), i in dp.real_ids.ids.items())
    local = addr_of.get(here)
    return local is not None and _order(local) < _order(addr_of[rid])


def _load_one(dp, c, addr_of, written):
    if not c.is_template and c.protocol not in PROTO_NAME:
        return "skipped_protocol"
    st = _service(dp, c)
    if st is None:
        return "skipped_unknown_service"
    rid = _real_id(dp, st, c)
    if rid is None:
        return "skipped_unknown_real"
    if c.is_template:
        if not st.svc.persistence_timeout:
            return "skipped_not_persistent"
        client = addr_bytes(c.caddr)
        if _keeps_local(dp, st, client, rid, addr_of):
            return "kept_templates"
        dp.write_synced_template(st, client, rid, c.timeout or st.svc.persistence_timeout)
        return "loaded_templates"
    state = CS["udp"] if c.protocol == wire.IPPROTO_UDP else FROM_WIRE_TCP.get(c.state, CS["syn"])
    key = S.ConnKey(src=S.addr_words(addr_bytes(c.caddr)), dst=S.addr_words(addr_bytes(c.vaddr)),
                    sport=htons(c.cport), dport=htons(c.vport), proto=c.protocol,
                    family=S.AF_INET if c.family == 4 else S.AF_INET6)
    timeout = c.timeout or getattr(dp.config.timeouts, TIMEOUT_OF[state])
    return "replaced" if dp.write_synced_conn(key, st.id, rid, state, timeout, written) else "loaded_conns"


def load_entries(dp, conns, written=None):
    """Write received sync entries (wire.SyncConn) into DataPlane dp's maps; {outcome: count}: loaded_conns,
    loaded_templates, kept_templates (a template in force here won: _keeps_local), replaced (a connection moved
    to another real), skipped_<why>. `written`: a dict that gets {connection key bytes: last-seen time written}."""
    addr_of = {}  # real id -> address, read once per batch when a template needs it
    counts = Counter(_load_one(dp, c, addr_of, written) for c in conns)
    if counts["replaced"]:
        dp.invalidate_flow_cache()  # an entry moved to another real: no cached flow may keep the old one
    return +counts


class SyncRunner:
    """The sync roles of one daemon: `start()` after the data plane is up, `close()` before it goes."""

    def __init__(self, daemon, spec):
        self.daemon, self.dp, self.spec, self.log = daemon, daemon.dp, spec, daemon.log
        self.counts = Counter()
        self._events = []
        self._views_of = self._view = None
        self._stop = threading.Event()
        self._thread = None
        self._next_refresh = time.monotonic() + spec.refresh
        # {connection key bytes: last-seen time} of the entries written from sync since the last refresh: an entry
        # whose time is still the one written was only heard of here, and a refresh does not send it back (two
        # `both` nodes would otherwise re-send an idle connection to each other forever, each resetting its
        # timeout). At most one per connection-table entry.
        self._heard = {}
        self.sender = self.receiver = None
        try:
            group = {"group": spec.mcast_group, "port": spec.mcast_port, "maxlen": spec.maxlen}
            if spec.mode in ("master", "both"):
                self.sender = transport.SyncSender(spec.iface, spec.syncid, ttl=spec.mcast_ttl, **group)
            if spec.mode in ("backup", "both"):
                self.receiver = transport.SyncReceiver(spec.iface, spec.syncid, **group)
        except BaseException:
            self.close()
            raise

    def start(self):
        if self.sender:
            self.dp.open_sync_events(self._events.append)
            with self.daemon.lock:
                self.dp.set_sync_export(True)
        self._thread = threading.Thread(target=self._run, name="xlb-sync", daemon=True)
        self._thread.start()
        self.log(f"xlb: state sync {self.spec.mode} on {self.spec.iface}, syncid {self.spec.syncid} "
                 f"({self.group()})")

    def group(self):
        """The group and port as the log and status show them: 224.0.0.81:8848, [ff02::8848]:8848."""
        return transport.shown(self.spec.mcast_group, self.spec.mcast_port)

    def close(self):
        self._stop.set()
        if self._thread:
            self._thread.join()
            self._thread = None
        if self.sender:
            try:
                with self.daemon.lock:
                    self.dp.set_sync_export(False)
            except Exception:  # noqa: BLE001 - the program may already be gone; nothing exports then
                pass
        for end in (self.sender, self.receiver):
            if end:
                end.close()

    def _run(self):
        while not self._stop.is_set():
            try:
                self.round()
            except Exception as exc:  # noqa: BLE001 - no bad entry or map error may end state sync
                self.counts["errors"] += 1
                if self.counts["errors"] <= 10:
                    self.log(f"xlb: state sync: {brief(exc)}")
                self._stop.wait(POLL)

    def round(self):
        """Wait up to POLL for records or datagrams; send what the data plane exported, load what arrived."""
        if self.sender:
            self.dp.poll_sync_events(int(POLL * 1000))
            self.send_events()
            if time.monotonic() >= self._next_refresh:
                self._next_refresh = time.monotonic() + self.spec.refresh
                self.refresh()
            self.sender.flush_if_older(FLUSH)
        if self.receiver:
            if not self.sender:
                select.select([self.receiver], [], [], POLL)
            conns = self.receiver.receive()
            if conns:
                with self.daemon.lock:
                    self.load(conns)

    # -- master ---------------------------------------------------------------------------------------------
    def _views(self):
        """(services by id, real addresses by id, timeouts) as applied now: each apply makes a new config, and
        the real ids are read again only then."""
        with self.daemon.lock:
            dp = self.dp
            if self._views_of is not dp.config:
                reals = {rid: (addr, port) for (_key, addr, port), rid in dp.real_ids.ids.items()}
                self._views_of, self._view = dp.config, (dp.by_id, reals, dp.config.timeouts)
            return self._view

    def send_events(self):
        events, self._events[:] = list(self._events), []
        if not events:
            return
        self.counts["events"] += len(events)
        self._send(events)

    def _send(self, events):
        by_id, reals, timeouts = self._views()
        for ev in events:
            st, dest = by_id.get(ev.svc_id), reals.get(ev.real_id)
            if st is None or dest is None or ev.state not in TO_WIRE:
                self.counts["export_unknown"] += 1  # its service or real went away since
                continue
            for entry in to_wire(ev, st, dest[0], timeouts, dest[1]):
                self.sender.add(entry)

    def refresh(self):
        """Send again every connection this node saw a packet of since the last refresh (and its template); not
        those it only heard of by sync."""
        now = now_ns()
        since = now - int((self.spec.refresh + 1) * NS)
        heard, self._heard = self._heard, {}
        events = []
        for k, v, _r, _st, _left in self.dp.connections(now):
            if heard and heard.get(bytes(k)) == v.seen_ns:
                self._heard[bytes(k)] = v.seen_ns
                self.counts["refresh_heard"] += 1
            elif v.seen_ns >= since:
                events.append(S.SyncEvent(key=S.ConnKey.from_buffer_copy(k), svc_id=v.svc_id, real_id=v.real_id,
                                          state=v.state))
        self.counts["refreshed"] += len(events)
        self._send(events)

    # -- backup ---------------------------------------------------------------------------------------------
    def load(self, conns):
        """Write received entries into the maps (under the daemon's lock)."""
        if len(self._heard) > self.dp.m["conns"].max_entries:
            self._heard.clear()   # more than the table holds: the rest are gone; bounded, at worst sent back once
        self.counts.update(load_entries(self.dp, conns, self._heard))

    # -- status ---------------------------------------------------------------------------------------------
    def status(self):
        """What `xlb status` and the metrics show: the role, and every count by name."""
        out = {"mode": self.spec.mode, "iface": self.spec.iface, "syncid": self.spec.syncid,
               "group": self.group(), "counts": dict(self.counts)}
        if self.sender:
            out["sent"] = dict(self.sender.counts)
            out["ring_lost"] = self.dp.sync_lost()
        if self.receiver:
            out["received"] = dict(self.receiver.counts)
        return out

    def metrics(self):
        """[(what, count)] for xlb_sync_total: sent_*, received_* (refusals by reason), ring_lost, and ours."""
        st = self.status()
        rows = [(f"sent_{k}", n) for k, n in st.get("sent", {}).items()]
        rows += [(f"received_{k}", n) for k, n in st.get("received", {}).items()]
        if "ring_lost" in st:
            rows.append(("ring_lost", st["ring_lost"]))
        return sorted(rows + list(st["counts"].items()))
