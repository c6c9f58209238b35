"""How the control plane names things in the maps: the data plane's clock, service keys, byte order, and a
service's scheduling table as positions in its reals. Shared by apply, sweep, adopt and the readers.
"""
import collections
import ipaddress
import itertools
import time
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

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
    return S.SvcKey.from_buffer_copy(svc_keys([svc]))


def svc_keys(svcs):
    """The services' keys (struct svc_key) as numpy records: a firewall-mark service by its mark, the others by
    address, port and protocol (apply makes 10,000 at once)."""
    rows = np.zeros(len(svcs), np.dtype(S.SvcKey))
    rows["family"] = [svc.family for svc in svcs]
    by_mark = np.array([svc.fwmark is not None for svc in svcs], bool)
    rows["mark"][by_mark] = [svc.fwmark for svc in itertools.compress(svcs, by_mark)]
    by_vip = list(itertools.compress(svcs, ~by_mark))
    if by_vip:
        rows["addr"][~by_mark] = addr_rows([svc.vip for svc in by_vip])
        rows["port"][~by_mark] = np.array([svc.port for svc in by_vip], np.uint16).byteswap()
        rows["proto"][~by_mark] = [PROTO_NUM[svc.proto] for svc in by_vip]
    return rows


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
    if svc.scheduler in _BY_WEIGHTS:
        return list(_weights_table(svc.scheduler, tuple(weights)))
    if svc.placement == "consistent":
        # The same table on every balancer whatever the order its config lists the reals in: built over them
        # sorted by address (the Maglev fill's claims go in list order), then mapped back to svc.reals' positions.
        idents = maglev_idents(svc.reals)
        order = sorted(range(len(svc.reals)), key=idents.__getitem__)
        table = sched.maglev_table([(idents[i], svc.reals[i].weight) for i in order], svc.mh_table_size)
        return [order[j] for j in table]
    return sched.maglev_table(list(zip(maglev_idents(svc.reals), (r.weight for r in svc.reals))),
                              svc.mh_table_size)


def maglev_idents(reals) -> list:
    """Each real's Maglev identity: its 16-byte address, and its port after it only where another real of the
    service shares the address (NAT to two ports): the others keep the identity they had before ports were
    allowed, so a second port on one address moves no other real's slots."""
    addrs = [addr_bytes(r.address) for r in reals]
    shared = {a for a, n in collections.Counter(addrs).items() if n > 1}
    return [a + (r.port or 0).to_bytes(2, "big") if a in shared else a for a, r in zip(addrs, reals)]


def real_key(svc_key, real) -> tuple:
    """A real's identity in the control plane's id pool (DataPlane.real_ids): its service's key, its address
    and its port as the maps hold it (Real.ident), so adopt() rebuilds it from a pinned reals entry."""
    return (svc_key, *real.ident)


_BY_WEIGHTS = {"rr": sched.rr_table, "wrr": sched.wrr_table, "sh": sched.sh_table, "dh": sched.dh_table}


@lru_cache(maxsize=4096)
def _weights_table(scheduler, weights):
    """The tables that depend on the weights alone, computed once per (scheduler, weights): services that share
    them (10,000 services of 10 equal reals have one) do not pay for them again."""
    return tuple(_BY_WEIGHTS[scheduler](list(weights)))


def addr_rows(addresses):
    """The addresses as an (n, 4) uint32 array of 16-byte network-order words, as the structs hold them. IPv4
    addresses are converted as integers in one pass (apply writes 100,000 reals' addresses)."""
    n = len(addresses)
    out = np.zeros((n, 4), np.uint32)
    v4 = np.fromiter((isinstance(a, ipaddress.IPv4Address) for a in addresses), bool, n)
    if v4.any():
        out[v4, 0] = np.fromiter(map(int, itertools.compress(addresses, v4)), np.uint32).byteswap()
    if not v4.all():
        rest = itertools.compress(addresses, ~v4)
        out[~v4] = np.frombuffer(b"".join(map(addr_bytes, rest)), np.uint32).reshape(-1, 4)
    return out


@dataclass
class SvcState:
    """What the control plane knows of one service in the maps: its id, key, table and slot region, and its reals'
    ids (in svc.reals' order, as apply() took them)."""

    svc: object
    id: int
    key_bytes: bytes
    table: list = field(default_factory=list)
    region: tuple = (0, 0)
    real_ids: list = field(default_factory=list)


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
