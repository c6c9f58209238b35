"""A tunnel service's settings (``method = "tun"``): how packets are wrapped toward its reals, read from a service's
``tunnel_*`` keys and written back by dump. Pure, as the rest of xlb/config.

Keys (all optional; IPVS's defaults):
- ``tunnel_type``: "ipip" (default), "gue" or "gre", as IPVS puts them on the wire.
- ``tunnel_port``: GUE's UDP destination port (required for GUE with its header, as ipvsadm's --tun-port; 6080,
  Katran's, without it).
- ``tunnel_csum``: "nocsum" (default), "csum" or "remcsum" (GUE), "nocsum" or "csum" (GRE).
- ``tunnel_gue_header``: false sends Katran's header-less GUE (the inner packet right after UDP).
- ``tunnel_source``: the outer source, an address or a prefix (per-flow sources from its host bits, for RSS/ECMP
  spread at the reals), or a list with one per family; by default the balancer's own address toward each real.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from .model import show_value

TUNNEL_TYPES = ("ipip", "gue", "gre")
TUNNEL_CSUMS = {"ipip": ("nocsum",), "gue": ("nocsum", "csum", "remcsum"), "gre": ("nocsum", "csum")}
BARE_GUE_PORT = 6080  # Katran's
KEYS = ("tunnel_type", "tunnel_port", "tunnel_csum", "tunnel_gue_header", "tunnel_source")


@dataclass(frozen=True)
class Tunnel:
    """How a service's packets are encapsulated toward its reals."""

    type: str = "ipip"
    port: int = 0  # GUE's destination port; 0 otherwise
    csum: str = "nocsum"
    gue_header: bool = True  # False: Katran's header-less GUE
    sources: tuple = ()  # ip_network per family given (a /32 or /128: one fixed address); none: learned per real

    def source_for(self, family):
        """The configured outer source network of this family, or None (the balancer's address toward the real)."""
        return next((n for n in self.sources if n.version == family), None)


def read(v, tbl, where, method, join) -> Tunnel | None:
    """The service's Tunnel (method "tun"), or None; tunnel keys on another method are an error."""
    if method != "tun":
        for k in KEYS:
            if k in tbl:
                v.fail(join(where, k), f"{k} applies only to method \"tun\" (this service's method is "
                                       f"{show_value(method)})")
        return None
    ttype = v.choice(tbl, where, "tunnel_type", TUNNEL_TYPES, default="ipip")
    header = v.flag(tbl, where, "tunnel_gue_header", True)
    if ttype != "gue":
        for k in ("tunnel_port", "tunnel_gue_header"):
            if k in tbl:
                v.fail(join(where, k), f"{k} applies only to tunnel_type \"gue\" (this one is {show_value(ttype)})")
    port = 0
    if ttype == "gue":
        port = v.integer(tbl, where, "tunnel_port", 1, 65535, default=None if header else BARE_GUE_PORT,
                         required=header)
    csum = v.choice(tbl, where, "tunnel_csum", TUNNEL_CSUMS[ttype], default="nocsum")
    if csum == "remcsum" and not header:
        v.fail(join(where, "tunnel_csum"), "remcsum needs GUE's header (its option lives there)")
    return Tunnel(type=ttype, port=port, csum=csum, gue_header=header,
                  sources=_sources(v, tbl.get("tunnel_source"), join(where, "tunnel_source")))


def _sources(v, value, where) -> tuple:
    if value is None:
        return ()
    items = value if isinstance(value, list) else [value]
    out = []
    for i, item in enumerate(items):
        iwhere = f"{where}[{i}]" if isinstance(value, list) else where
        try:
            net = ipaddress.ip_network(item, strict=True) if isinstance(item, str) else None
        except ValueError as e:
            v.fail(iwhere, f"tunnel_source must be an address or a prefix like \"198.18.5.0/24\": {e}")
        if net is None:
            v.fail(iwhere, f"tunnel_source must be an address or a prefix string, got {show_value(item)}")
        if any(n.version == net.version for n in out):
            v.fail(iwhere, f"a second IPv{net.version} tunnel_source; give at most one per family")
        out.append(net)
    return tuple(out)


def tree(t: Tunnel) -> dict:
    """The service keys that say t (dump: only what differs from the defaults)."""
    out = {"tunnel_type": t.type}
    if t.type == "gue":
        out["tunnel_port"] = t.port
        if not t.gue_header:
            out["tunnel_gue_header"] = False
    if t.csum != "nocsum":
        out["tunnel_csum"] = t.csum
    if t.sources:
        srcs = [str(n.network_address) if n.prefixlen == n.max_prefixlen else str(n) for n in t.sources]
        out["tunnel_source"] = srcs[0] if len(srcs) == 1 else srcs
    return out
