"""Reading the maps for the rest of xlb: per-CPU counters summed, each real's connection counts and load, as
numpy records from one batched read each. A mixin of DataPlane (xlb/dataplane/apply.py).
"""
import ctypes as ct

import numpy as np

from . import structs as S
from .bpfsys import lookup_batch_into
from ..tables import sched


class Reader:
    """What DataPlane reads back from its maps."""

    def loads(self, svc):
        """(active, inactive, overloaded) of each of svc's reals now (idle for reals not yet in the maps)."""
        if svc.scheduler not in sched.CONN_SCHEDULERS:
            return None
        table = self.m["real_conns"]
        loads = []
        for r in svc.reals:
            rid = self.real_ids.get((svc.key, r.address))
            if rid is None:
                loads.append((0, 0, False))
                continue
            rc = table[ct.c_uint32(rid)]
            loads.append((max(rc.active, 0), max(rc.inactive, 0), bool(rc.flags & S.RC_F_OVERLOAD)))
        return loads

    def real_rows(self, name, struct):
        """Array map `name` (one entry per real id) from 0 to the highest real id handed out, as numpy records of
        ctypes `struct`: one batched read."""
        table = self.m[name]
        n = min(self.real_ids.next, table.max_entries)
        keys, rows = np.empty(n, np.uint32), np.zeros(n, np.dtype(struct))
        lookup_batch_into(table.map_fd, keys, rows)
        return rows

    def real_loads(self):
        """{real id: (active, inactive, overloaded)} for every configured real, as the data plane schedules on
        them (overloaded: RC_F_OVERLOAD, set at uthreshold, cleared below lthreshold): one batched read."""
        ids = list(self.real_ids.ids.values())
        rows = self.real_rows("real_conns", S.RealConns)[ids]
        return dict(zip(ids, zip(np.maximum(rows["active"], 0).tolist(), np.maximum(rows["inactive"], 0).tolist(),
                                 (rows["flags"] & S.RC_F_OVERLOAD != 0).tolist())))

    def real_conn_counts(self):
        """{real id: (active, inactive)} for every configured real, as the data plane schedules on them."""
        return {rid: (act, inact) for rid, (act, inact, _) in self.real_loads().items()}

    # -- reading ------------------------------------------------------------------------------------------
    def counters(self, name, idx):
        """Sum of a per-CPU counters slot."""
        vals = self.m[name][ct.c_uint32(idx)]
        return S.Counters(packets=sum(v.packets for v in vals), bytes=sum(v.bytes for v in vals),
                          conns=sum(v.conns for v in vals))

    def verdict_counts(self):
        return {name: self.counters("verdicts", num) for num, name in S.REASONS.items()}
