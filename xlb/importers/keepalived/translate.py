"""Import keepalived.conf (and iptables MARK rules) into xlb's Config.

Pure: no bcc, no root. :func:`load` reads the file with xlb/importers/keepalived/reader.py (keepalived's own
reading rules: comments, ``@`` lines, ``$`` parameters, ``~SEQ``, ``include``), checks the ``virtual_server``,
``virtual_server_group`` and ``global_defs lvs_timeouts`` keywords as keepalived does (checks.py) and turns them
into the TOML-shaped tree xlb/config/read.py validates (:func:`xlb.config.read.from_tree`), so the native config
stays the one validator. A config error about a
field is re-raised naming the keepalived file, line and keyword that produced the field.

What keepalived calls a configuration problem in a virtual server (``keepalived -t`` says it and exits 5) is an
error here: xlb never guesses a correction (keepalived's "no protocol set - defaulting to UDP"), except where
keepalived's own correction changes nothing under direct routing and keepalived runs the config: those
(``protocol`` of a fwmark service, a real's port) are Problems of kind "warning", logged, and the config runs.
What keepalived accepts but xlb cannot forward the same way (NAT, TUN, one-packet scheduling, weights above
65535) is an error of kind "unsupported". Sections xlb does not use (VRRP,
BFD, global settings other than lvs_timeouts, ...) are skipped with one warning per kind of section.
Health-check blocks and the checker settings (delay_loop, quorum, sorry_server, ...) are read as keepalived reads
them (health.py, through xlb/health/kaconf.py) into the config's health keys; the blocks are also kept as written
in :class:`Import`.
"""
from __future__ import annotations

from ...config import read as xread
from ...config import realcheck
from ...errors import ConfigError
from .checks import SKIP_REASON, Checks, kw_addr, kw_port, kw_true, settings_of
from .health import Health
from .tunnel import method_of, service_tunnel
from .model import CheckSettings, Entry, HealthCheck, Import, KeepalivedError, Problem, VS
from .reader import Reader
from .tree import build_tree
from ...health.kaconf import track_files


def load(path, marks=None, instance_id=None) -> Import:
    """Read keepalived.conf at ``path`` (and an iptables MARK rules file ``marks``) into an :class:`Import`.

    Raises KeepalivedError (a ConfigError) listing every problem, or ConfigError from the shared validation.
    """
    return _Importer(str(path), instance_id).run(str(marks) if marks is not None else None)


class _Importer(Checks, Health):
    def __init__(self, path, instance_id):
        self.path = path
        self.instance_id = instance_id
        self.problems: list[Problem] = []
        self.warnings: list[str] = []
        self.skipped: dict[str, list] = {}
        self.vss: list[VS] = []
        self.groups: dict[str, tuple] = {}  # name -> (node, entries)
        self.timeouts = {}
        self.script_user = None  # global_defs script_user: (value, node)
        self.where: dict[str, tuple] = {}  # config field path -> (file, line, keyword)



    def run(self, marks_path):
        reader = Reader(self.instance_id)
        reader.read(self.path)
        for p in reader.problems:
            self.problems.append(Problem(p.file, p.line, "(file)", p.message))
        self.warnings.extend(f"{p.file}: line {p.line}: {p.message}" for p in reader.notes)
        root, tree_problems = build_tree(reader.lines)
        self.track_files = track_files(root)
        for node in root:
            self.root_node(node)
        spans = [(vs.node.file, vs.node.line) for vs in self.vss]
        for p in tree_problems:
            # Brace trouble inside a virtual server changes what it means; elsewhere it only concerns skipped parts.
            if p.everywhere or any(p.file == f for f, _ in spans):
                self.problems.append(Problem(p.file, p.line, "(block)", p.message))
            else:
                self.warnings.append(f"{p.file}: line {p.line}: {p.message} (outside virtual servers; ignored)")
        for kind, nodes in self.skipped.items():
            first = nodes[0]
            more = f" and {len(nodes) - 1} more" if len(nodes) > 1 else ""
            self.warnings.append(f"{first.file}: line {first.line}: skipped {kind}{more}: "
                                 f"{SKIP_REASON.get(kind, 'not used by xlb')}")
        tree = {"service": []}
        if self.timeouts:
            tree["timeouts"] = self.timeouts
        checks, settings = [], []
        for vs in self.vss:
            self.finish_vs(vs, tree["service"], checks, settings)
        if marks_path is not None:
            from ..iptables import load_rules
            rules = load_rules(marks_path)
            tree["mark"] = [r.tree for r in rules]
            for i, r in enumerate(rules):
                self.where[f"mark[{i}]"] = (r.file, r.line, r.command)
        self.problems.sort(key=lambda p: (p.kind == "warning", p.file != self.path, p.file, p.line))
        if any(p.kind != "warning" for p in self.problems):
            raise KeepalivedError(self.problems)
        reported = tuple(self.problems)
        self.warnings[:0] = [str(p) for p in reported]
        cfg = self.validate(tree)
        return Import(config=cfg, health_checks=tuple(checks), check_settings=tuple(settings),
                      warnings=tuple(self.warnings), files=tuple(reader.files), reported=reported)

    def validate(self, tree):
        try:
            return xread.from_tree(tree, self.path)
        except ConfigError as e:
            raise self.translate(e) from None

    def translate(self, e: ConfigError) -> ConfigError:
        """Name the keepalived file, line and keyword behind a field path of the generated tree."""
        path = e.where
        while path:
            if path in self.where:
                file, line, keyword = self.where[path]
                field_name = e.where[len(path):].lstrip(".")
                detail = e.message
                if field_name:
                    detail = f"{detail} (xlb field {e.where})"
                return ConfigError(file, f"line {line}", f"{keyword}: {detail}")
            cut = max(path.rfind("."), path.rfind("["))
            path = path[:cut] if cut > 0 else ""
        return ConfigError(self.path, e.where, e.message)

    # --- virtual_server_group ----------------------------------------------------------------------------------

    # --- virtual_server ----------------------------------------------------------------------------------------

    # --- from a virtual server to xlb services -----------------------------------------------------------------

    def finish_vs(self, vs, services, checks, settings):
        """One virtual server: keepalived's checks of it, then one xlb service per entry it stands for."""
        if not self.vs_complete(vs):
            return
        entries = self.vs_entries(vs)
        if entries is None:
            return
        self.vs_protocol(vs, entries)
        weight_sum = self.vs_reals(vs, entries)
        self.sorry_server(vs, entries)
        if vs.quorum > weight_sum:
            self.err(vs.lines.get("quorum", vs.node), f"quorum {vs.quorum} exceeds total weight of real servers "
                                                      f"{weight_sum}")
        elif vs.hysteresis >= vs.quorum and "hysteresis" in vs.lines:
            self.err(vs.lines["hysteresis"], f"hysteresis {vs.hysteresis} >= quorum {vs.quorum}")
        first_name = None
        for entry in entries:
            svc = self.service_tree(vs, entry, len(services))
            if not self.merged(vs, svc, services):
                services.append(svc)
            first_name = first_name or _service_name(svc)
        self.keep_checks(vs, first_name or "", checks, settings)

    def merged(self, vs, svc, services):
        """A service an earlier virtual server already defined (the same group twice, the same fwmark twice):
        keepalived's add of it to IPVS finds it there (EEXIST, which keepalived ignores) and adds this virtual
        server's reals to it, so the first's settings stay and the reals join; a real it already has stays as it
        is (EEXIST again). Said as a warning at this virtual server; True if svc went into an earlier one."""
        name = _service_name(svc)
        index = next((i for i, s in enumerate(services) if _service_name(s) == name), None)
        if index is None:
            return False
        first, new, old = services[index], f"service[{len(services)}]", f"service[{index}]"
        had = {(r["address"], r.get("port")) for r in first["real"]}
        for i, real in enumerate(svc["real"]):
            if (real["address"], real.get("port")) not in had:
                self.move_where(f"{new}.real[{i}]", f"{old}.real[{len(first['real'])}]")
                first["real"].append(real)
        self.move_where(new, None)
        line = self.where[old][1]
        self.warn(vs.node, f"service {name} is already defined by the virtual server at line {line}: its real "
                           "servers join that service, whose settings stay (as keepalived does: IPVS keeps the first)")
        return True

    def move_where(self, path, to):
        """Move the recorded origins of a field path and the paths below it to `to` (None: forget them)."""
        for key in [k for k in self.where if k == path or k.startswith((path + ".", path + "["))]:
            origin = self.where.pop(key)
            if to is not None:
                self.where[to + key[len(path):]] = origin

    def vs_complete(self, vs):
        """keepalived's checks that a virtual server says enough: reals, a scheduler, a forwarding method."""
        node = vs.node
        if not vs.reals:
            self.err(node, "virtual server has no real servers (keepalived ignores it)")
            return False
        if vs.sched is None and "lb_algo" not in vs.lines and "lvs_sched" not in vs.lines:
            self.err(node, "no scheduler set (keepalived defaults to wlc): add 'lb_algo wlc' or another")
        methods = {method_of(vs, rs) for rs in vs.reals}
        if len(methods) > 1:  # IPVS's method is a real's, xlb's a service's
            self.unsupported(node, f"real servers with different forwarding methods ({', '.join(sorted(methods))})"
                                   ": xlb's method is a virtual server's")
        return True

    def vs_entries(self, vs):
        """The entries this virtual server stands for (one xlb service each), or None if its group is missing."""
        node = vs.node
        if vs.kind == "fwmark":
            return [Entry("fwmark", vs.fwmark, None, 0, node)]
        if vs.kind != "group":
            return [Entry("addr", vs.addr, vs.addr.version, vs.port, node)]
        grp = self.groups.get(vs.group)
        if grp is None:
            self.err(node, f"virtual server group {vs.group} is not defined")
            return None
        entries = []
        for e in grp[1]:
            if e[0] == "fwmark":
                entries.append(Entry("fwmark", e[1], e[2], 0, e[3]))
            else:
                entries.extend(Entry("addr", addr, addr.version, e[2], e[3]) for addr in e[1])
        return entries

    def vs_protocol(self, vs, entries):
        address_based = any(e.kind == "addr" for e in entries)
        if address_based and vs.proto is None:
            self.err(vs.node, "no protocol set (keepalived defaults to UDP): add 'protocol TCP' or 'protocol UDP'")
        if not address_based and vs.proto is not None:
            self.warn(vs.proto_node, "protocol specified for fwmark - protocol will be ignored (as keepalived "
                                     "does: the mark rules choose protocols)")

    def vs_reals(self, vs, entries):
        """keepalived's checks of the real servers (duplicates, ports under direct routing); their total weight."""
        seen = {}
        weight_sum = 0
        for rs in vs.reals:
            key = (rs.addr, rs.port)
            if key in seen:
                self.err(rs.node, f"real server {rs.addr} is duplicated (first at line {seen[key]})")
            seen.setdefault(key, rs.node.line)
            weight_sum += rs.weight if rs.weight is not None else (vs.weight or 1)
            if rs.port and method_of(vs, rs) != "nat":  # only NAT may change the port
                vports = {e.port for e in entries if e.kind == "addr"}
                if any(e.kind == "fwmark" for e in entries):
                    self.warn(rs.node, f"fwmark virtual server, real server {rs.addr} has port {rs.port} specified "
                                       "- clearing (as keepalived does: direct routing keeps the packet's port)")
                elif vports and vports != {rs.port}:
                    report = self.err if vs.kind == "group" else self.warn  # keepalived resets only a plain VS's
                    report(rs.node, f"virtual server port {'/'.join(map(str, sorted(vports)))} and real server "
                                    f"port {rs.port} don't match - resetting (direct routing keeps the port)")
        return weight_sum

    def service_tree(self, vs, entry, index):
        """The config tree of service[index] for one entry, each field's keepalived origin recorded."""
        node, enode = vs.node, entry.node
        svc = {}
        sw = f"service[{index}]"
        self.where[sw] = (node.file, node.line, "virtual_server")
        if entry.kind == "fwmark":
            svc["fwmark"] = entry.value
            family = entry.family or vs.af or 4
            svc["family"] = f"ipv{family}"
            self.where[f"{sw}.fwmark"] = (enode.file, enode.line, enode.keyword)
        else:
            family = entry.family
            svc["vip"] = str(entry.value)
            svc["port"] = entry.port
            svc["proto"] = vs.proto or "udp"
            self.where[f"{sw}.vip"] = (enode.file, enode.line, enode.keyword)
            self.where[f"{sw}.port"] = (enode.file, enode.line, enode.keyword)
            if vs.proto_node:
                self.where[f"{sw}.proto"] = (vs.proto_node.file, vs.proto_node.line, "protocol")
            if entry.port == 0 and vs.ptimeout is None:
                self.err(enode, "port 0 (every port) is only valid for persistent services: "
                                "add persistence_timeout")
        svc["method"] = method_of(vs, vs.reals[0])
        node_m = vs.lines.get("lb_kind") or vs.lines.get("lvs_method")
        if node_m:
            self._w(f"{sw}.method", node_m)
        if svc["method"] == "nat" and svc.get("proto") == "sctp":
            self.unsupported(node_m or vs.node, "SCTP under NAT: rewriting its addresses or ports needs the packet's "
                                                "CRC32c recomputed, which xlb does not do (DR and TUN forward SCTP)")
        if vs.sched:
            svc["scheduler"] = vs.sched
            self._w(f"{sw}.scheduler", vs.lines.get("lb_algo") or vs.lines.get("lvs_sched"))
        if vs.ptimeout is not None:
            svc["persistence_timeout"] = vs.ptimeout
            self._w(f"{sw}.persistence_timeout", vs.ptimeout_node)
        if vs.pgran is not None:
            svc["persistence_netmask"] = vs.pgran
            self._w(f"{sw}.persistence_netmask", vs.pgran_node)
        if vs.pe:
            self.engine(vs, svc, sw)
        if vs.flags:
            svc["sched_flags"] = [f for f, _ in vs.flags]
            for i, (_, fn) in enumerate(vs.flags):
                self._w(f"{sw}.sched_flags[{i}]", fn)
            self._w(f"{sw}.sched_flags", vs.flags[0][1])
        if vs.ops_node is not None:
            if svc.get("proto") == "tcp":  # keepalived sets it; IPVS applies it to UDP only
                self.warnings.append(f"{vs.ops_node.where()}: ops has no effect on a TCP service (one-packet "
                                     "scheduling is for UDP); skipped")
            else:
                svc["ops"] = True
                self._w(f"{sw}.ops", vs.ops_node)
        if svc["method"] == "tun":
            svc.update(service_tunnel(vs, self.unsupported))
        virtualhost = self.health_settings(vs.settings, svc, sw)
        svc["real"] = self.real_trees(vs, sw, family, virtualhost, entry, any_family=svc["method"] == "tun")
        if self.script_user and any("check" in r for r in svc["real"]):  # a health-checked service
            svc["script_user"] = self.script_user[0]
            self._w(f"{sw}.script_user", self.script_user[1])
        return svc

    def engine(self, vs, svc, sw):
        """persistence_engine sip: on a persistent UDP or fwmark service; elsewhere it has no effect in xlb (IPVS's
        SIP engine reads UDP datagrams only, and would drop a TCP or SCTP service's connections), said once."""
        if vs.ptimeout is not None and svc.get("proto") in (None, "udp"):
            svc["persistence_engine"] = vs.pe
            self._w(f"{sw}.persistence_engine", vs.pe_node)
        elif not getattr(vs, "pe_skipped", False):
            vs.pe_skipped = True
            why = "without persistence_timeout" if vs.ptimeout is None else f"on a {svc['proto'].upper()} service"
            self.warnings.append(f"{vs.pe_node.where()}: persistence_engine {vs.pe} has no effect {why} (IPVS's "
                                 f"SIP engine reads UDP datagrams of persistent services); skipped")

    def real_trees(self, vs, sw, family, virtualhost=None, entry=None, any_family=False):
        """The reals of service `sw` (those of its address family, or all for a tunnel), each field's origin
        recorded. A NAT real's port is kept where it differs from the service's (the entry's): two real_servers
        on one address with two ports are two reals, as they are two IPVS destinations."""
        svc_port = entry.port if entry else 0
        reals = []
        for rs in vs.reals:
            if rs.addr.version != family and not any_family:
                continue  # a group mixing families: each service takes the reals of its family
            if rs.addr.is_loopback:  # IPVS delivers to a real on the director itself; XDP forwarding cannot
                self.unsupported(rs.node, f"real {rs.addr} is a loopback address: {realcheck.LOCAL}")
            elif entry and entry.kind == "addr" and rs.addr == entry.value:
                self.unsupported(rs.node, f"real {rs.addr} is the virtual server's own address: {realcheck.LOCAL}")
            rw = f"{sw}.real[{len(reals)}]"
            self._w(rw, rs.node)
            real = {"address": str(rs.addr), "weight": rs.weight if rs.weight is not None else (vs.weight or 1)}
            if rs.weight_node:
                self._w(f"{rw}.weight", rs.weight_node)
            if rs.port and rs.port != svc_port and method_of(vs, rs) == "nat":
                real["port"] = rs.port
                self._w(f"{rw}.port", rs.node)
            if rs.uthreshold:
                real["uthreshold"] = rs.uthreshold
                self._w(f"{rw}.uthreshold", rs.lines["uthreshold"])
            if rs.lthreshold:
                if rs.uthreshold:
                    real["lthreshold"] = rs.lthreshold
                    self._w(f"{rw}.lthreshold", rs.lines["lthreshold"])
                else:
                    self.warnings.append(f"{rs.lines['lthreshold'].where()}: lthreshold has no effect "
                                         "without uthreshold; skipped")
            self.real_checks(rs, rw, real, self.health_settings(rs.settings, real, rw) or virtualhost)
            reals.append(real)
        return reals

    @staticmethod
    def keep_checks(vs, name, checks, settings):
        """The checker blocks and settings of a virtual server and its reals, kept for the health checks."""
        for rs in vs.reals:
            for c in rs.checks:
                checks.append(HealthCheck(c.keyword, name, str(rs.addr), c.file, c.line, tuple(c.children or ())))
            if rs.settings:
                settings.append(CheckSettings(name, str(rs.addr), settings_of(rs.settings)))
        if vs.settings:
            settings.append(CheckSettings(name, None, settings_of(vs.settings)))

    def sorry_server(self, vs, entries):
        """keepalived's checks of a sorry server (kept for the health-check work, not used for forwarding yet)."""
        n = vs.lines.get("sorry_server")
        if n is None or not n.args or kw_addr(n.args[0]) is None:
            return
        addr = kw_addr(n.args[0])
        port = kw_port(n.args[1]) if len(n.args) > 1 and n.args[1].strip("0") else 0
        vports = {e.port for e in entries if e.kind == "addr"}
        if port and vports and vports != {port} and (vs.method or "nat") != "nat":  # keepalived: the VS's own
            self.err(n, f"virtual server and sorry server ports don't match ({port})")
        inhibit = "sorry_server_inhibit" in vs.lines
        vs_inhibit = "inhibit_on_failure" in vs.lines
        for rs in vs.reals:
            if rs.addr == addr and (not rs.port or not port or rs.port == port):
                rs_inhibit = kw_true(rs.lines["inhibit_on_failure"]) if "inhibit_on_failure" in rs.lines \
                    else vs_inhibit
                if rs_inhibit != inhibit:
                    self.err(n, f"real server {rs.addr} (line {rs.node.line}) is also the sorry server, but their "
                                "inhibit_on_failure settings differ")

    def _w(self, path, node):
        if node is not None:
            self.where[path] = (node.file, node.line, node.keyword)


def _service_name(svc):
    if "fwmark" in svc:
        return f"fwm{'6' if svc.get('family') == 'ipv6' else ''}/{svc['fwmark']}"
    host = f"[{svc['vip']}]" if ":" in svc["vip"] else svc["vip"]
    return f"{svc['proto']}/{host}:{svc['port']}"
