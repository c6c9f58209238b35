"""A Config written back as the TOML tree and text that xlb/config/read.py takes back (`xlb save`, keepalived
imports shown as TOML)."""

from __future__ import annotations

import dataclasses
import ipaddress
import json

from . import tunnel as xtunnel
from .model import Config

def to_tree(cfg: Config) -> dict:
    """The TOML-shaped tree of ``cfg``: every setting explicit, optional keys only where they mean something."""
    tree = {"timeouts": dataclasses.asdict(cfg.timeouts), "tables": dataclasses.asdict(cfg.tables),
            "icmp": dataclasses.asdict(cfg.icmp)}
    if cfg.sync.mode:
        tree["sync"] = dataclasses.asdict(cfg.sync)
    if cfg.bgp.bird_socket:
        tree["bgp"] = dataclasses.asdict(cfg.bgp)
    tree["mark"] = [_mark_tree(rule) for rule in cfg.marks]
    tree["service"] = [_service_tree(svc) for svc in cfg.services]
    return tree


def _mark_tree(rule) -> dict:
    out = {"mark": rule.mark, "proto": rule.proto, "dst": str(rule.dst)}
    if rule.ports:
        out["ports"] = [lo if lo == hi else f"{lo}-{hi}" for lo, hi in rule.ports]
    return out


def netmask_spec(family: int, mask: bytes):
    """The config spelling of a 16-byte persistence mask: a dotted IPv4 mask, or an IPv6 prefix length string."""
    if family == 4:
        return str(ipaddress.IPv4Address(mask[:4]))
    return str(bin(int.from_bytes(mask, "big")).count("1"))


def _service_tree(svc) -> dict:
    if svc.fwmark is not None:
        out = {"fwmark": svc.fwmark, "family": f"ipv{svc.family}"}
    else:
        out = {"vip": str(svc.vip), "port": svc.port, "proto": svc.proto}
    out["scheduler"] = svc.scheduler
    if svc.sched_flags:
        out["sched_flags"] = list(svc.sched_flags)
    if svc.scheduler == "mh":
        out["mh_table_size"] = svc.mh_table_size
    out["method"] = svc.method
    if svc.ops:
        out["ops"] = True
    if svc.tunnel is not None:
        out.update(xtunnel.tree(svc.tunnel))
    if svc.persistence_timeout is not None:
        out["persistence_timeout"] = svc.persistence_timeout
        out["persistence_netmask"] = netmask_spec(svc.family, svc.persistence_netmask)
        out["persistence_mode"] = svc.persistence_mode
        if svc.placement != "scheduler":
            out["placement"] = svc.placement
        if svc.expire_quiescent_template:
            out["expire_quiescent_template"] = True
        if svc.persistence_engine:
            out["persistence_engine"] = svc.persistence_engine
    reals = []
    for r in svc.reals:
        rt = {"address": str(r.address), "weight": r.weight}
        if r.port is not None:
            rt["port"] = r.port
        if r.uthreshold:
            rt["uthreshold"] = r.uthreshold
        if r.lthreshold:
            rt["lthreshold"] = r.lthreshold
        rt.update(r.health or {})
        reals.append(rt)
    out.update(svc.health_keys or {})
    out["real"] = reals
    return out


def dumps(tree: dict, header: str = "") -> str:
    """TOML text for a tree of tables, arrays of tables and scalar/scalar-array values (what to_tree makes)."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    _dump_table(lines, tree, "", 0)
    return "\n".join(lines).strip("\n") + "\n"


def _dump_table(lines, tbl, path, depth):
    indent = "  " * max(0, depth - 1)
    subs = []
    for key, value in tbl.items():
        if isinstance(value, dict) or (isinstance(value, list) and value and isinstance(value[0], dict)):
            subs.append((key, value))
        elif not (isinstance(value, list) and not value and key in ("mark", "service", "real")):
            lines.append(f"{indent}{key} = {_toml_value(value)}")
    for key, value in subs:
        sub = f"{path}.{key}" if path else key
        items = [value] if isinstance(value, dict) else value
        for item in items:
            lines.append("")
            lines.append(f"{'  ' * depth}[{sub}]" if isinstance(value, dict) else f"{'  ' * depth}[[{sub}]]")
            _dump_table(lines, item, sub, depth + 1)


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string: JSON's escapes are TOML's
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")
