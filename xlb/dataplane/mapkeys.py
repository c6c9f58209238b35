"""How the control plane names things in the maps: the data plane's clock, service keys, byte order, and a
service's scheduling table as positions in its reals. Shared by apply, sweep, adopt and the readers.
"""
import time
from dataclasses import dataclass, field

from . import structs as S
from ..config.model import addr_bytes, mask_address
from ..tables import marks as markmod
from ..tables import sched
from ..tables.hashes import placement_hash

NS = 1_000_000_000


PROTO_NUM = markmod.PROTO_NUM

CLOCK_MONOTONIC_COARSE = 6  # linux/time.h; Python's time module does not name it


def now_ns():
    """The data plane's clock: bpf_ktime_get_coarse_ns() is CLOCK_MONOTONIC_COARSE."""
    return time.clock_gettime_ns(CLOCK_MONOTONIC_COARSE)


def svc_key(svc) -> S.SvcKey:
    k = S.SvcKey(family=svc.family)
    if svc.fwmark is not None:
        k.mark = svc.fwmark
    else:
        k.addr = S.addr_words(addr_bytes(svc.vip))
        k.port = htons(svc.port)
        k.proto = PROTO_NUM[svc.proto]
    return k


def htons(port):
    return int.from_bytes(port.to_bytes(2, "big"), "little")


def table_indexes(svc, loads=None):
    """The slot table of a service as positions in svc.reals, in the order the data plane indexes them.

    Connection-count services get their candidates, chosen by `loads` ((active, inactive, overloaded) per real,
    default idle) when there are more than the data plane weighs."""
    weights = [r.weight for r in svc.reals]
    if svc.scheduler in sched.CONN_SCHEDULERS:
        loads = loads or [(0, 0, False)] * len(weights)
        return sched.conn_candidates(svc.scheduler, [(w, *ld) for w, ld in zip(weights, loads)], S.CAND_MAX)
    if svc.scheduler == "rr":
        return sched.rr_table(weights)
    if svc.scheduler == "wrr":
        return sched.wrr_table(weights)
    if svc.scheduler == "sh":
        return sched.sh_table(weights)
    if svc.scheduler == "dh":
        return sched.dh_table(weights)
    if svc.placement == "consistent":
        # The same table on every balancer whatever the order its config lists the reals in: built over them
        # sorted by address (the Maglev fill's claims go in list order), then mapped back to svc.reals' positions.
        order = sorted(range(len(svc.reals)), key=lambda i: addr_bytes(svc.reals[i].address))
        table = sched.maglev_table([(addr_bytes(svc.reals[i].address), svc.reals[i].weight) for i in order],
                                   svc.mh_table_size)
        return [order[j] for j in table]
    return sched.maglev_table([(addr_bytes(r.address), r.weight) for r in svc.reals], svc.mh_table_size)


@dataclass
class SvcState:
    """What the control plane knows of one service in the maps: its id, key, table and slot region."""

    svc: object
    id: int
    key_bytes: bytes
    table: list = field(default_factory=list)
    region: tuple = (0, 0)


def consistent_real(svc, client, table=None):
    """The real (address) a placement = "consistent" service gives a client that has no template, as every balancer
    computes it (bpf/persist.h placement_hash into the service's Maglev table): before an unavailable real's
    fallback, which only mh-fallback adds. ``table``: table_indexes(svc), when the caller has it."""
    table = table_indexes(svc) if table is None else table
    if not table:
        return None
    k = svc_key(svc)
    h = placement_hash(mask_address(addr_bytes(client), svc.persistence_netmask), S.words_bytes(k.addr), k.mark,
                       svc.port or 0, k.proto, k.family)
    return svc.reals[table[h % len(table)]].address
