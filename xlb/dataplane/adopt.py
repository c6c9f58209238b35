"""A restarted daemon adopts the maps its predecessor left pinned: service, real and mark-rule ids, real
generations, scheduling-table regions, trie entries and VIP prefixes come back from the maps. A mixin of
DataPlane (xlb/dataplane/apply.py).
"""
import ctypes as ct
import ipaddress

from . import structs as S
from .mapkeys import PROTO_NUM, SvcState, htons
from ..config.model import fwmark_key
from ..tables.marks import rule_identity_of_entries


class Adopter:
    """DataPlane.adopt."""

    # -- adopting pinned maps (a restarted daemon) ------------------------------------------------------------
    def adopt(self):
        """Rebuild the control plane's state from maps a previous daemon left pinned: service, real and mark-rule
        ids, real generations, scheduling-table regions, trie entries and VIP prefixes. The next apply() then
        keeps every id whose identity it keeps, so connections, templates and counters stay valid, and it writes
        only the difference. Returns what was found."""
        proto_name = {v: k for k, v in PROTO_NUM.items()}

        def addr(family, words):
            b = S.words_bytes(words)
            return ipaddress.ip_address(b[:4] if family == 4 else b)

        svc_of_id = {}
        for k, meta in self.m["services"].items():
            ident = (fwmark_key(k.family, k.mark) if k.mark else
                     (proto_name.get(k.proto), addr(k.family, k.addr), htons(k.port)))
            st = SvcState(None, meta.id, bytes(k))
            if meta.table_len:
                n, off = meta.table_len, meta.table_off
                st.region = (off, n)
                st.table = [self.m["sched_slots"][ct.c_uint32(i)].value for i in range(off, off + n)]
                self.slots.reserve(off, n)
            self.services[ident] = st
            self.svc_ids.ids[ident] = meta.id
            svc_of_id[meta.id] = ident
        for rid, r in self.m["reals"].items_lookup_batch():
            rid = getattr(rid, "value", rid)
            if r.gen:
                self.gens[rid] = r.gen
            if r.flags & S.REAL_F_LIVE and r.svc_id in svc_of_id:
                # mapkeys.real_key: the service, the address and the port the real entry holds
                self.real_ids.ids[(svc_of_id[r.svc_id], addr(r.family, r.addr), htons(r.port))] = rid
        rules = {}
        for k, v in self.m["mark_rules"].items():
            entry = (k.family, k.proto, htons(k.port), S.words_bytes(k.addr), k.prefixlen - 32)
            self.mark_entries[entry] = (v.mark, v.rule_id)
            self.fwm_prefixes.setdefault(fwmark_key(k.family, v.mark), set()).add((k.family, entry[3], entry[4]))
            rules.setdefault(v.rule_id, []).append((v.mark, entry))
        for rule_id, entries in rules.items():
            self.rule_ids.ids[rule_identity_of_entries(entries)] = rule_id
        for k in self.m["vip_prefixes"].keys():
            self.vips.add((k.family, S.words_bytes(k.addr), k.prefixlen - 32))
        for pool in (self.svc_ids, self.real_ids, self.rule_ids):
            used = set(pool.ids.values())
            pool.next = max(used, default=0) + 1
            pool.free = sorted(set(range(1, pool.next)) - used, reverse=True)
        return {"services": len(self.services), "reals": len(self.real_ids.ids), "mark_rules": len(rules)}
