"""The node-wide tables of the config: ``[timeouts]``, ``[tables]``, ``[sync]`` and ``[bgp]`` (read.py reads the
document and hands each its table; errors name the field, as everywhere in the reader).
"""
import dataclasses
import ipaddress

from .model import CONNS_MAX, CONNS_MIN, FLOW_CACHE_MAX, FLOW_CACHE_MIN, SYNC_MODES, TIMEOUT_MAX, Bgp, Sync, Tables, \
    Timeouts, show_value
from .validate import join

MAXLEN_MIN = 8 + 72  # a sync message's header and one IPv6 entry


def timeouts(v, top) -> Timeouts:
    where = "timeouts"
    tbl = v.table(top.get(where, {}), where, [f.name for f in dataclasses.fields(Timeouts)])
    d = Timeouts()
    return Timeouts(**{f.name: v.integer(tbl, where, f.name, 1, TIMEOUT_MAX, getattr(d, f.name))
                       for f in dataclasses.fields(Timeouts)})


def tables(v, top) -> Tables:
    where = "tables"
    tbl = v.table(top.get(where, {}), where, ("conns", "templates", "sweep_interval", "flow_cache", "half_open"))
    d = Tables()
    conns = v.integer(tbl, where, "conns", CONNS_MIN, CONNS_MAX, d.conns)
    templates = v.integer(tbl, where, "templates", CONNS_MIN, CONNS_MAX, d.templates)
    sweep = tbl.get("sweep_interval", d.sweep_interval)
    if not isinstance(sweep, (int, float)) or isinstance(sweep, bool) or not 0.05 <= sweep <= 60:
        v.fail(join(where, "sweep_interval"),
               f"sweep_interval must be a number of seconds 0.05..60, got {show_value(sweep)}")
    flow_cache = v.integer(tbl, where, "flow_cache", 0, FLOW_CACHE_MAX, d.flow_cache)
    if flow_cache & (flow_cache - 1) or 0 < flow_cache < FLOW_CACHE_MIN:
        v.fail(join(where, "flow_cache"), f"flow_cache must be a power of two from {FLOW_CACHE_MIN} (entries per "
               f"CPU), or 0 for none; got {flow_cache}")
    half_open = v.flag(tbl, where, "half_open", d.half_open)
    return Tables(conns=conns, templates=templates, sweep_interval=float(sweep), flow_cache=flow_cache,
                  half_open=half_open)


def sync(v, top) -> Sync:
    where = "sync"
    tbl = v.table(top.get(where, {}), where, ("mode", "iface", "syncid", "refresh", "mcast_group", "mcast_port",
                                              "mcast_ttl", "maxlen"))
    if not tbl:
        return Sync()
    mode = v.choice(tbl, where, "mode", SYNC_MODES, required=True)
    iface = tbl.get("iface")
    if not isinstance(iface, str) or not 0 < len(iface) < 16 or "/" in iface or iface.strip() != iface:
        v.fail(join(where, "iface"), f"iface must name the sync interface (1..15 characters), got "
               f"{show_value(iface)}")
    refresh = tbl.get("refresh", Sync.refresh)
    if not isinstance(refresh, (int, float)) or isinstance(refresh, bool) or not 1 <= refresh <= 3600:
        v.fail(join(where, "refresh"), f"refresh must be a number of seconds 1..3600, got {show_value(refresh)}")
    group = sync_group(v, tbl.get("mcast_group", Sync.mcast_group), join(where, "mcast_group"))
    headers = 48 if ":" in group else 28
    maxlen = v.integer(tbl, where, "maxlen", 0, 65535 - headers, 0)
    if 0 < maxlen < MAXLEN_MIN:
        v.fail(join(where, "maxlen"), f"maxlen must be 0 (the default: 1500 bytes less the IP and UDP headers) or "
                                      f"{MAXLEN_MIN}..{65535 - headers} (a message holds at least one IPv6 entry), "
                                      f"got {maxlen}")
    return Sync(mode=mode, iface=iface, syncid=v.integer(tbl, where, "syncid", 0, 255, 0), refresh=float(refresh),
                mcast_group=group, mcast_port=v.integer(tbl, where, "mcast_port", 1, 65535, Sync.mcast_port),
                mcast_ttl=v.integer(tbl, where, "mcast_ttl", 1, 255, Sync.mcast_ttl), maxlen=maxlen)


def sync_group(v, value, where):
    """A multicast group address (IPv4 or IPv6, no zone) as its canonical string."""
    try:
        group = ipaddress.ip_address(value) if isinstance(value, str) else None
    except ValueError:
        group = None
    if group is None or not group.is_multicast or getattr(group, "scope_id", None):
        v.fail(where, f"mcast_group must be an IPv4 or IPv6 multicast address like \"224.0.0.81\" or "
                      f"\"ff02::8848\", got {show_value(value)}")
    return str(group)


def bgp(v, top) -> Bgp:
    """``[bgp]``: bird_socket and bird_include, both absolute paths, both or neither (an empty table is none)."""
    where = "bgp"
    tbl = v.table(top.get(where, {}), where, ("bird_socket", "bird_include"))
    paths = {}
    for key, example in (("bird_socket", "/run/bird/bird.ctl"), ("bird_include", "/etc/bird/xlb-vips.conf")):
        if key not in tbl:
            continue
        value = tbl[key]
        if not isinstance(value, str) or not value.startswith("/") or "\0" in value or value.endswith("/"):
            v.fail(join(where, key), f"{key} must be an absolute file path like \"{example}\", got "
                                     f"{show_value(value)}")
        paths[key] = value
    if len(paths) == 1:
        missing = ({"bird_socket", "bird_include"} - set(paths)).pop()
        v.fail(join(where, missing), f"{missing} is required with {next(iter(paths))} (xlb writes the VIP routes "
                                     "to bird_include and asks BIRD through bird_socket to read them)")
    if paths and paths["bird_socket"] == paths["bird_include"]:
        v.fail(join(where, "bird_include"), "bird_include must not be the control socket's path")
    return Bgp(**paths)
