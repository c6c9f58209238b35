"""A service's health keys (``delay_loop``, ``quorum``, ``sorry_server``, ``[service.real.check]``...) read into
the health spec (xlb/health/spec.py validates them and names the field; xlb/config/read.py adds the line).

A service whose table and reals carry no health key has no health spec: its reals are always up, as in IPVS
without keepalived. The raw tables are kept beside the spec so xlb/config/dump.py writes them back unchanged (a
runtime edit re-reads the config from its dump)."""

from __future__ import annotations

from ..health import spec as hspec

SERVICE_KEYS = hspec.SERVICE_KEYS
REAL_KEYS = hspec.REAL_KEYS


def picked(tbl: dict, keys) -> dict:
    """The health part of a service or real table (a copy, in the file's order)."""
    return {k: v for k, v in tbl.items() if k in keys}


def health_name(svc) -> str:
    """How keepalived's log lines name a virtual service: ``[198.51.100.10]:tcp:80``, ``FWM 1``."""
    if svc.fwmark is not None:
        return f"FWM {svc.fwmark}"
    return f"[{svc.vip}]:{svc.proto}:{svc.port}"


def service_spec(svc, tbl: dict, source: str):
    """The health spec of ``svc`` (a config.model.Service whose reals carry their raw ``health`` tables), or None
    when neither the service nor any of its reals has a health key."""
    if not picked(tbl, SERVICE_KEYS) and not any(r.health for r in svc.reals):
        return None
    port = svc.port or 0  # a real's own port (NAT) is the one its checks go to and the pool names it by
    reals = [(str(r.address), port if r.port is None else r.port, r.weight, dict(r.health or {}), r.where)
             for r in svc.reals]
    return hspec.parse_service(health_name(svc), svc.proto or "tcp", picked(tbl, SERVICE_KEYS), reals, svc.where,
                               source, vip=None if svc.vip is None else str(svc.vip), tunnel=svc.tunnel)
