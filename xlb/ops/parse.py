"""What operators type on the command line, parsed: a service's ``-t/-u/--sctp-service/-f`` identity, ``ADDR:PORT``,
a mark rule's port list, and how errors name a service and its option. Shared by the native commands
(xlb/admincli.py), the ipvsadm front end and the runtime edits (admin.py); pure."""
from __future__ import annotations

import ipaddress
import re
import socket

from ..config import model as xconfig
from ..errors import ConfigError


def parse_service(kind: str, text: str, ipv6: bool = False, where: str | None = None, source="xlb") -> dict:
    """IDENT from ``-t VIP:PORT`` / ``-u VIP:PORT`` / ``-f MARK`` (``-6`` makes a mark service IPv6).

    Accepts ``198.51.100.10:80``, ``[2001:db8::1]:80``, a service name (``:http``) and no port (port 0, which
    the validator then requires to be persistent, as IPVS does).
    """
    opt = where or ("--sctp-service" if kind == "sctp" else f"-{kind[0]}")
    if kind == "fwmark":
        try:
            mark = int(text, 0)
        except ValueError:
            raise ConfigError(source, opt, f"a firewall mark is a number 1..{xconfig.U32_MAX}, got {text!r}") from None
        return {"fwmark": mark, "family": 6 if ipv6 else 4}
    proto = kind
    addr, port = split_addr_port(text, proto, opt, source)
    return {"proto": proto, "vip": str(addr), "port": 0 if port is None else port}


def split_addr_port(text: str, proto: str, opt: str, source="xlb"):
    """(ip_address, port or None) from ``ADDR``, ``ADDR:PORT``, ``[V6]``, ``[V6]:PORT``; names of ports allowed."""
    m = re.fullmatch(r"\[([^\]]+)\](?::(\w[\w-]*))?", text)
    if m:
        host, port = m.group(1), m.group(2)
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, None  # an IPv4 address, or a bare IPv6 address (no port)
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(source, opt, f"{text!r}: give a numeric address (198.51.100.10:80 or "
                                       "[2001:db8::1]:80); xlb does not resolve host names") from None
    if port is None or port == "":
        return addr, None
    if port.isdigit():
        num = int(port)
    else:
        try:
            num = socket.getservbyname(port, proto if proto in ("tcp", "udp") else "tcp")
        except OSError:
            raise ConfigError(source, opt, f"{text!r}: unknown port name {port!r}") from None
    if not 0 <= num <= 65535:
        raise ConfigError(source, opt, f"{text!r}: port must be 0..65535")
    return addr, num


def parse_ports(text: str, source="xlb") -> list:
    """``80,443,1000-2000`` as the config's ``ports`` list."""
    out = []
    for part in text.split(","):
        part = part.strip()
        if re.fullmatch(r"\d+", part):
            out.append(int(part))
        elif re.fullmatch(r"\d+-\d+", part):
            out.append(part)
        else:
            raise ConfigError(source, "--ports", f"ports are a comma list of ports and ranges like "
                                                 f"80,443,1000-2000; got {part!r}")
    return out


def ident_name(ident: dict) -> str:
    """The operator's label of a service identity (as Service.name)."""
    if "fwmark" in ident:
        return f"fwm{'6' if ident.get('family') == 6 else ''}/{ident['fwmark']}"
    addr = ipaddress.ip_address(ident["vip"])
    host = f"[{addr}]" if addr.version == 6 else str(addr)
    return f"{ident['proto']}/{host}:{ident['port']}"


PROTO_OPTION = {"tcp": "-t", "udp": "-u", "sctp": "--sctp-service"}  # ipvsadm's option for a vip service


def ident_option(ident: dict) -> str:
    if "fwmark" in ident:
        return "-f"
    return PROTO_OPTION[ident["proto"]]
