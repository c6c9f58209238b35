"""ipvsadm's tunnel options (``-i --tun-type ipip|gue|gre --tun-port N --tun-nocsum|--tun-csum|--tun-remcsum``) as
a service's ``tunnel_*`` keys, and back for ``-S``. Pure (tests/test_ipvsadm.py)."""
from __future__ import annotations

from ..errors import ConfigError

# Long options (ipvsadm has no short forms for them); the first two take a value.
LONG = ("tun-type", "tun-port", "tun-nocsum", "tun-csum", "tun-remcsum")
WITH_ARG = ("tun-type", "tun-port")
_CSUM = ("tun-nocsum", "tun-csum", "tun-remcsum")


def method_of(opts, source):
    """("dr" | "tun" | None, the tunnel keys or None) that -g / -i and the --tun-* options give."""
    given = [o for o in LONG if o in opts]
    if "i" not in opts:
        if given:
            raise ConfigError(source, f"--{given[0]}", f"--{given[0]} applies only to tunnelling (-i)")
        return ("dr" if "g" in opts else None), None
    if "g" in opts:
        raise ConfigError(source, "-g", "give one forwarding method: -g (direct routing) or -i (tunnelling)")
    keys = {}
    if "tun-type" in opts:
        keys["tunnel_type"] = opts["tun-type"]
    if "tun-port" in opts:
        port = opts["tun-port"]
        if not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ConfigError(source, "--tun-port", f"--tun-port takes a port 1..65535, got {port!r}")
        keys["tunnel_port"] = int(port)
    csums = [o for o in _CSUM if o in opts]
    if len(csums) > 1:
        raise ConfigError(source, f"--{csums[1]}", f"give one of --{', --'.join(_CSUM)}")
    if csums:
        keys["tunnel_csum"] = csums[0][len("tun-"):]
    return "tun", keys


def save_options(s) -> str:
    """The -a line's forwarding options for listing service s (ipvsadm -S)."""
    if s.get("method") != "tun":
        return "-m" if s.get("method") == "nat" else "-g"
    t = s.get("tunnel") or {}
    out = "-i"
    if t.get("tunnel_type", "ipip") != "ipip":
        out += f" --tun-type {t['tunnel_type']}"
    if t.get("tunnel_port"):
        out += f" --tun-port {t['tunnel_port']}"
    if t.get("tunnel_type", "ipip") != "ipip":
        out += f" --tun-{t.get('tunnel_csum', 'nocsum')}"
    return out


def forward_name(s) -> str:
    """The Forward column of ipvsadm -L: Route (DR), Tunnel, Masq."""
    return {"tun": "Tunnel", "nat": "Masq"}.get(s.get("method"), "Route")
