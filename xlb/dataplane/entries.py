"""The services' and reals' map entries as apply() writes them (struct svc_meta, struct real): numpy records built a
column at a time from the config, so 10,000 services x 10 reals make no ctypes object per entry."""
import numpy as np

from . import structs as S
from .mapkeys import NS, addr_rows

SCHED_KIND = {**S.SCHED, "wrr": S.SCHED["rr"]}  # rr and wrr differ only in their tables
# on_real_failure -> svc_meta flags (bpf/consts.h); unset: TCP keeps, UDP reschedules (decided per packet).
FAIL_FLAGS = {None: 0, "keep": S.SVC_F_FAIL_KEEP, "reset": S.SVC_F_FAIL_RESET,
              "reschedule": S.SVC_F_FAIL_KEEP | S.SVC_F_FAIL_RESET}


def svc_flags(svc):
    """A service's svc_meta flags (bpf/consts.h SVC_F_*)."""
    flags = 0
    if svc.persistence_timeout:
        flags |= S.SVC_F_PERSIST
        # A Call-ID's template lives persistence_timeout after its last datagram (sip.h; docs/design.md).
        if svc.persistence_mode == "timeout" or svc.persistence_engine == "sip":
            flags |= S.SVC_F_PERSIST_TIMEOUT
        if svc.persistence_engine == "sip":
            flags |= S.SVC_F_PE_SIP
        if svc.expire_quiescent_template:
            flags |= S.SVC_F_EXPIRE_QUIESCENT
        if svc.placement == "consistent":
            flags |= S.SVC_F_CONSISTENT
    flags |= FAIL_FLAGS[getattr(svc.health, "on_real_failure", None)]
    if svc.sched_flags:
        names = {f.split("-", 1)[1] for f in svc.sched_flags}
        flags |= (S.SVC_F_HASH_PORT if "port" in names else 0) | (S.SVC_F_FALLBACK if "fallback" in names else 0)
    if svc.ops:
        flags |= S.SVC_F_OPS
    return flags


def svc_metas(states):
    """The entries of services (mapkeys.SvcState: service, id, table region), in their order."""
    svcs = [st.svc for st in states]
    rows = np.zeros(len(states), np.dtype(S.SvcMeta))
    rows["id"] = [st.id for st in states]
    rows["flags"] = [svc_flags(svc) for svc in svcs]
    rows["sched"] = [SCHED_KIND[svc.scheduler] for svc in svcs]
    rows["method"] = [S.METHOD[svc.method] for svc in svcs]
    rows["table_off"] = [st.region[0] for st in states]
    rows["table_len"] = [st.region[1] for st in states]
    rows["persist_timeout_ns"] = [(svc.persistence_timeout or 0) * NS for svc in svcs]
    rows["persist_mask"] = np.frombuffer(b"".join(svc.persistence_netmask for svc in svcs), np.uint32).reshape(-1, 4)
    return rows


def real_entries(states, reals, gens):
    """The live entries of `reals`, every real of the services `states` (SvcState) in their order, each with the
    generation `gens` gives it; a health-failed real is down and weighs nothing."""
    rows = np.zeros(len(reals), np.dtype(S.Real))
    rows["addr"] = addr_rows([r.address for r in reals])
    rows["gen"] = gens
    # a value per service, repeated for each of its reals
    per_svc = np.array([(st.id, S.METHOD[st.svc.method]) for st in states], np.int64).reshape(-1, 2)
    per_svc = np.repeat(per_svc, [len(st.svc.reals) for st in states], axis=0)
    rows["svc_id"], rows["method"] = per_svc[:, 0], per_svc[:, 1]
    rows["weight"] = [r.weight for r in reals]
    rows["family"] = [r.address.version for r in reals]  # a tunnel's real may be the other family
    rows["flags"] = S.REAL_F_LIVE
    down = np.array([bool(r.failed) for r in reals], bool)
    if down.any():
        rows["weight"][down] = 0
        rows["flags"][down] |= S.REAL_F_DOWN
    rows["uthreshold"] = [r.uthreshold for r in reals]
    rows["lthreshold"] = [r.lthreshold for r in reals]
    rows["port"] = np.array([r.port or 0 for r in reals], np.uint16).byteswap()
    return rows
