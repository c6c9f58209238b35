"""ipvsadm's listings of the daemon's state (`xlb ipvsadm -L/-S/-c`, `xlb list`): the daemon's listing snapshot
printed exactly as ipvsadm prints the kernel's (its print_title, print_service_entry, print_conn and print_largenum
formats). Pure (tests/test_ipvsadm.py); ``snap`` is the daemon's "list" result (xlb/ops/listings.py listing()).
What differs from ipvsadm is said in xlb/ops/ipvsadm.py.
"""
from __future__ import annotations

import ipaddress

from .ipvsadm import SOURCE
from .parse import PROTO_OPTION, ident_name, ident_option
from . import tunopts
from ..errors import ConfigError

IPVS_VERSION = "1.2.1"


def _host(family, addr):
    return f"[{addr}]" if family == 6 else str(addr)


def _svc_sort_key(s):
    # ipvs_cmp_services: fwmark, family, protocol, address, port (fwmark 0 = VIP services first).
    proto = {"tcp": 6, "udp": 17}.get(s.get("proto"), 0)
    addr = int(ipaddress.ip_address(s["vip"])) if s.get("vip") else 0
    return (s.get("fwmark") or 0, s["family"], proto, addr, s.get("port") or 0)


def _real_sort_key(r):
    a = ipaddress.ip_address(r["address"])
    return (a.version, int(a), r["port"])


def sorted_services(snap):
    return sorted(snap["services"], key=_svc_sort_key)


def svc_name(s, rule=False):
    if s.get("fwmark") is not None:
        if rule:
            return f"-f {s['fwmark']}" + (" -6" if s["family"] == 6 else "")
        return f"FWM  {s['fwmark']}" + (" IPv6" if s["family"] == 6 else "")
    vname = f"{_host(s['family'], s['vip'])}:{s['port']}"
    if rule:
        return f"{PROTO_OPTION[s['proto']]} {vname}"
    name = f"{s['proto'].upper()}  {vname}"
    return name[:33] if s["family"] == 4 else name


def real_name(s, r):
    name = f"{_host(s['family'], r['address'])}:{r['port']}"
    return name[:28] if s["family"] == 4 else name


def largenum(i, exact=False):
    """ipvsadm's print_largenum: 9 columns, K/M/G/T above 100 million unless --exact."""
    if exact:
        n = len(str(i))
        return f"{i:>{9 if n <= 8 else n + 1}}"
    for limit, div, unit in ((10**8, 1, ""), (10**9, 10**3, "K"), (10**11, 10**6, "M"), (10**14, 10**9, "G")):
        if i < limit:
            return f"{i:9d}" if not unit else f"{i // div:8d}{unit}"
    return f"{i // 10**12:8d}T"


def _title(fmt):
    head = f"{'Prot LocalAddress:Port':<33}"
    if "stats" in fmt:
        return [f"{head} {'Conns':>8} {'InPkts':>8} {'OutPkts':>8} {'InBytes':>8} {'OutBytes':>8}",
                "  -> RemoteAddress:Port"]
    if "rate" in fmt:
        return [f"{head} {'CPS':>8} {'InPPS':>8} {'OutPPS':>8} {'InBPS':>8} {'OutBPS':>8}", "  -> RemoteAddress:Port"]
    if "thresholds" in fmt:
        return [f"{head} {'Uthreshold':<10} {'Lthreshold':<10} {'ActiveConn':<10} {'InActConn':<10}",
                "  -> RemoteAddress:Port"]
    if "persistent-conn" in fmt:
        return [f"{head} {'Weight':<9} {'PersistConn':<11} {'ActiveConn':<10} {'InActConn':<10}",
                "  -> RemoteAddress:Port"]
    return ["Prot LocalAddress:Port Scheduler Flags",
            "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn"]


def _persist_flags(s):
    if s.get("persistence") is None:
        return ""
    out = f" persistent {s['persistence']}"
    full = "255.255.255.255" if s["family"] == 4 else "128"
    if s["netmask"] != full:
        out += f" mask {s['netmask']}"
    return out + (f" pe {s['pe']}" if s.get("pe") else "")


def _service_lines(s, fmt):
    exact = "exact" in fmt
    name = svc_name(s)
    if "stats" in fmt or "rate" in fmt:
        k = "stats" if "stats" in fmt else "rate"
        cols = ("conns", "inpkts", "outpkts", "inbytes", "outbytes") if k == "stats" else \
            ("cps", "inpps", "outpps", "inbps", "outbps")
        lines = [f"{name:<33}" + "".join(largenum(s[k][c], exact) for c in cols)]
    else:
        sched = s["scheduler"] + (f" ({','.join(s['sched_flags'])})" if s.get("sched_flags") else "")
        lines = [f"{name} {sched}{_persist_flags(s)}{' ops' if s.get('ops') else ''}"]
    for r in sorted(s["reals"], key=_real_sort_key):
        dname = real_name(s, r)
        if "stats" in fmt:
            st = r["stats"]
            lines.append(f"  -> {dname:<28}" + "".join(largenum(st[c], exact) for c in
                                                       ("conns", "inpkts", "outpkts", "inbytes", "outbytes")))
        elif "rate" in fmt:
            rt = r["rate"]
            lines.append(f"  -> {dname:<28} {rt['cps']:8d} {rt['inpps']:8d} {rt['outpps']:8d}"
                         + largenum(rt["inbps"], exact) + largenum(rt["outbps"], exact))
        elif "thresholds" in fmt:
            lines.append(f"  -> {dname:<28} {r['uthreshold']:<10} {r['lthreshold']:<10} {r['active']:<10} "
                         f"{r['inactive']:<10}")
        elif "persistent-conn" in fmt:
            lines.append(f"  -> {dname:<28} {r['weight']:<9} {r['persist']:<11} {r['active']:<10} "
                         f"{r['inactive']:<10}")
        else:
            lines.append(f"  -> {dname:<28} {tunopts.forward_name(s):<7} {r['weight']:<6} {r['active']:<10} "
                         f"{r['inactive']:<10}")
    return lines


def render_list(snap, fmt=frozenset(), service=None) -> str:
    """`ipvsadm -L -n` and its variants; with ``service`` only that service, without the version line."""
    if "timeout" in fmt:
        t = snap["timeouts"]
        return f"Timeout (tcp tcpfin udp): {t['tcp']} {t['tcpfin']} {t['udp']}\n"
    services = sorted_services(snap)
    if service is not None:
        services = [s for s in services if matches(s, service)]
        if not services:
            raise ConfigError(SOURCE, ident_option(service), f"no service {ident_name(service)}")
        lines = _title(fmt)
    else:
        lines = [f"IP Virtual Server version {IPVS_VERSION} (size={snap['size']})"] + _title(fmt)
    for s in services:
        lines += _service_lines(s, fmt)
    return "\n".join(lines) + "\n"


def matches(s, ident):
    if "fwmark" in ident:
        return s.get("fwmark") == ident["fwmark"] and s["family"] == ident["family"]
    return (s.get("proto") == ident["proto"] and s.get("port") == ident["port"] and s.get("vip") is not None
            and ipaddress.ip_address(s["vip"]) == ipaddress.ip_address(ident["vip"]))


def render_save(snap) -> str:
    """`ipvsadm -S -n`: one -A line per service and one -a line per real, restorable with -R."""
    lines = []
    for s in sorted_services(snap):
        line = f"-A {svc_name(s, rule=True)} -s {s['scheduler']}"
        if s.get("sched_flags"):
            line += f" -b {','.join(s['sched_flags'])}"
        if s.get("persistence") is not None:
            line += f" -p {s['persistence']}"
            full = "255.255.255.255" if s["family"] == 4 else "128"
            if s["netmask"] != full:
                line += f" -M {s['netmask']}"
            if s.get("pe"):
                line += f" --pe {s['pe']}"
        if s.get("ops"):
            line += " -o"
        lines.append(line)
        for r in sorted(s["reals"], key=_real_sort_key):
            line = (f"-a {svc_name(s, rule=True)} -r {_host(s['family'], r['address'])}:{r['port']} "
                    f"{tunopts.save_options(s)} -w {r['weight']}")
            if r["uthreshold"]:
                line += f" -x {r['uthreshold']}"
            if r["lthreshold"]:
                line += f" -y {r['lthreshold']}"
            lines.append(line)
    return "".join(f"{line}\n" for line in lines)


def render_conns(entries) -> str:
    """`ipvsadm -L -n -c`: connections and persistence templates (client port 0, state NONE)."""
    lines = ["IPVS connection entries", f"pro expire {'state':<11} {'source':<18} {'virtual':<18} destination"]
    for e in entries:
        secs = max(0, int(e["expire"]))
        expire = f"{secs // 60:02d}:{secs % 60:02d}"
        fam = e["family"]
        c = f"{_host(fam, e['caddr'])}:{e['cport']}"
        v = f"{_host(fam, e['vaddr'])}:{e['vport']}"
        d = f"{_host(fam, e['daddr'])}:{e['dport']}"
        lines.append(f"{e['proto']:<3} {expire:<6} {e['state']:<11} {c:<18} {v:<18} {d}")
    return "\n".join(lines) + "\n"
