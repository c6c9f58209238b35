"""keepalived's tunnel forwarding: ``lb_kind TUN`` / ``lvs_method TUN [type ipip|gue|gre] [port N]
[nocsum|csum|remcsum]`` read with keepalived's rules (check_parser.c svr_forwarding_handler) into a service's
``tunnel_*`` keys; a real's forwarding method (method_of, the one definition the importer uses) and the tunnel a
TUN virtual server's reals must share in xlb."""
from __future__ import annotations

_TYPES = ("ipip", "gue", "gre")
_CSUMS = ("nocsum", "csum", "remcsum")


def options(n, err) -> dict:
    """The tunnel keys of a TUN line n (its words after TUN); problems reported through err(node, message)."""
    args = list(n.args[1:])
    ttype, port, csum = "ipip", 0, "nocsum"
    i = 0
    while i < len(args):
        word = args[i]
        if word in ("type", "port"):
            if i + 1 == len(args):
                err(n, "missing tunnel type" if word == "type" else "missing port for gue tunnel")
                return {}
            value = args[i + 1]
            if word == "type" and value not in _TYPES:
                err(n, f"unknown tunnel type {value}")
                return {}
            if word == "port" and not (value.isdigit() and 1 <= int(value) <= 65535):
                err(n, f"invalid gue tunnel port {value}")
                return {}
            ttype, port = (value, port) if word == "type" else (ttype, int(value))
            i += 2
            continue
        if word not in _CSUMS:
            err(n, f"invalid tunnel option {word}")
            return {}
        csum = word
        i += 1
    if (ttype == "gue") != (port != 0):
        err(n, "gue tunnels require port, otherwise cannot have port")
        return {}
    if ttype == "ipip" and csum != "nocsum":
        err(n, "ipip tunnels do not support checksum option")
        return {}
    if ttype == "gre" and csum == "remcsum":
        err(n, "gre tunnels do not support remote checksum option")
        return {}
    keys = {"tunnel_type": ttype}
    if port:
        keys["tunnel_port"] = port
    if csum != "nocsum":
        keys["tunnel_csum"] = csum
    return keys


def method_of(vs, rs):
    """A real server's forwarding method: its own lvs_method, else its virtual server's, else keepalived's
    default, NAT."""
    return rs.method or vs.method or "nat"


def service_tunnel(vs, err) -> dict:
    """The tunnel keys every real of a TUN virtual server is forwarded with (a real's own TUN line, else the
    virtual server's); reals whose tunnel options differ are reported through err: xlb forwards every real of a
    service alike. (Reals of different methods are the virtual server's check.)"""
    kinds = {}
    for rs in vs.reals:
        tunnel = (rs.tunnel if rs.method is not None else vs.tunnel) or {}
        kinds.setdefault((method_of(vs, rs), tuple(sorted(tunnel.items()))), rs)
    if len({m for m, _ in kinds}) == 1 and len(kinds) > 1:
        (m1, t1), (m2, t2) = list(kinds)[:2]
        err(kinds[(m2, t2)].node, f"real servers of one virtual server forwarded by {m1}{dict(t1) or ''} and "
                                  f"{m2}{dict(t2) or ''}: xlb forwards every real of a service alike")
    return dict(next(iter(kinds), ("dr", ()))[1])
