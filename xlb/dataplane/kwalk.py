"""The sweep's walk in the kernel: one program, run once per sweep by BPF_PROG_TEST_RUN, that walks the connection
tables with bpf_for_each_map_elem and does the per-entry work the sweep did in numpy over a read of all of them.

- conns and half_open: each entry's expiry is its last-seen time plus its state's timeout; an expired entry is
  deleted (the element is at hand: no key copied out and back in) and counted; a live one counts for its real
  (active when established, else inactive) if its generation is the real's, and, if its service is persistent,
  raises its client's aggregate: the latest expiry among the client's live connections, and whether one of them is
  in conns (not half-open). The client is (source under the service's persistence netmask, service id), the key
  the sweep matches templates by. Aggregates live in direct-mapped slots (an mmap-able array, read in place; a
  slot is free when its epoch is an earlier walk's), a slot's other clients in a hash cleared by each walk.
- nat_revs and nat_half: a reverse entry is deleted when neither conns nor half_open holds its connection with its
  real (the connection expired, was evicted or replaced), unless it was written after the sweep began.

User space then reads one array of per-real counts, the aggregates (one per client of a persistent service, not one
per connection) and the small template table, instead of every connection. The program and its scratch maps are
the walker's own (created here, not pinned: nothing outlives the process).
"""
import ctypes as ct
import mmap
import os
import weakref

import numpy as np

from . import bpfasm as A
from . import structs as S
from .bpfsys import lookup_batch_into, update_batch

_TIMEOUTS = S.CONN_STATES + 1   # one per state, then 0 for a state out of range (the numpy path's rule)


class WalkArgs(ct.Structure):
    """The walker's one-entry array: inputs, then what the walk counted."""
    _fields_ = [("now", ct.c_int64), ("read_at", ct.c_int64), ("timeout_ns", ct.c_uint64 * _TIMEOUTS),
                ("which", ct.c_uint64),            # set by the program: 0 walking conns/nat_revs, 1 the half ones
                ("expired", ct.c_uint64 * 2),      # conns, half_open
                ("nat_expired", ct.c_uint64 * 2),  # nat_revs, nat_half
                ("seen", ct.c_uint64 * 4),         # conns, half_open, nat_revs, nat_half
                ("overflow", ct.c_uint64),         # an aggregate did not fit: the sweep reads the table instead
                ("epoch", ct.c_uint64)]            # this walk's number (the slots of earlier walks are stale)


class RealSlot(ct.Structure):
    """Per real id: its generation (written for the live reals), and the walk's counts."""
    _fields_ = [("gen", ct.c_uint64), ("inactive", ct.c_uint32), ("active", ct.c_uint32)]


class SvcSlot(ct.Structure):
    """Per service id: the persistence netmask as two words; picked: its connections are aggregated."""
    _fields_ = [("mask", ct.c_uint64 * 2), ("picked", ct.c_uint64)]


class AggKey(ct.Structure):
    _fields_ = [("w0", ct.c_uint64), ("w1", ct.c_uint64), ("sid", ct.c_uint32), ("epoch", ct.c_uint32)]


class Agg(ct.Structure):
    _fields_ = [("until", ct.c_int64), ("in_conns", ct.c_uint64)]


class AggSlot(ct.Structure):
    """A slot of the direct-mapped aggregates: a key (its epoch this walk's, or the slot is free) and its Agg."""
    _fields_ = [("key", AggKey), ("agg", Agg)]


# The slot of a client: a multiplicative hash of its key's words, top bits.
_MIX = (0x2545F491, 0x3C6EF372, 0x27D4EB2F)


def _off(struct_t, field, i=0):
    return getattr(struct_t, field).offset + i


def _args_to_r9(a, stop):
    """r9 = the WalkArgs entry (r1-r5 clobbered); to `stop` if the lookup fails."""
    a.store(4, A.FP, -4, imm=0)
    a.map_fd(1, a.fds["args"])
    a.mov(2, A.FP)
    a.alu("add", 2, imm=-4)
    a.call(A.MAP_LOOKUP_ELEM)
    a.jump("jeq", stop, 0, imm=0)
    a.mov(9, 0)


def _count(a, field):
    """args.field[args.which] += 1 (r9: args; r1-r3 clobbered)."""
    a.load(8, 1, 9, _off(WalkArgs, "which"))
    a.alu("and", 1, imm=1)
    a.alu("lsh", 1, imm=3)
    a.mov(2, 9)
    a.alu("add", 2, 1)
    a.load(8, 3, 2, _off(WalkArgs, field))
    a.alu("add", 3, imm=1)
    a.store(8, 2, _off(WalkArgs, field), 3)


def _clamp(a, reg, size, label):
    """reg = min(reg, size - 1), as the numpy path indexes its per-id arrays."""
    a.jump("jlt", label, reg, imm=size)
    a.mov(reg, imm=size - 1)
    a.label(label)


def _lookup_u32(a, name, reg):
    """r0 = map `name`'s entry at index `reg` (stored at fp-4)."""
    a.store(4, A.FP, -4, reg)
    a.map_fd(1, a.fds[name])
    a.mov(2, A.FP)
    a.alu("add", 2, imm=-4)
    a.call(A.MAP_LOOKUP_ELEM)


def _in_conns(a, reg):
    """reg = 1 walking conns, 0 walking half_open (r1 clobbered)."""
    a.load(8, 1, 9, _off(WalkArgs, "which"))
    a.mov(reg, imm=1)
    a.alu("sub", reg, 1)


def _direct_slot(a, slot_bits):
    """The client's slot among 2^slot_bits (key at fp-40, expiry at fp-16): a stale slot is claimed, the client's
    own goes to c_found with r0 at its Agg, another client's to c_hash. A slot costs an inlined array lookup
    where the hash costs a helper call, a jhash and two dependent misses (the bench's 1M connections of 49,152
    clients: ~0.1 s of aggregation against ~0.17 s all in the hash)."""
    words = [-40 + _off(AggKey, "w0"), -40 + _off(AggKey, "w1"), -40 + _off(AggKey, "sid")]
    a.load(8, 1, A.FP, words[0])
    a.alu("mul", 1, imm=_MIX[0])
    a.load(8, 2, A.FP, words[1])
    a.alu("mul", 2, imm=_MIX[1])
    a.alu("xor", 1, 2)
    a.load(8, 2, A.FP, words[2])                 # sid and epoch
    a.alu("xor", 1, 2)
    a.alu("mul", 1, imm=_MIX[2])
    a.alu("rsh", 1, imm=64 - slot_bits)
    _lookup_u32(a, "slots", 1)
    a.jump("jeq", "c_hash", 0, imm=0)
    a.load(4, 1, 0, _off(AggKey, "epoch"))
    a.load(4, 2, 9, _off(WalkArgs, "epoch"))
    a.jump("jne", "c_claim", 1, 2)
    for off in words:
        a.load(8, 1, 0, off + 40)
        a.load(8, 2, A.FP, off)
        a.jump("jne", "c_hash", 1, 2)
    a.alu("add", 0, imm=_off(AggSlot, "agg"))
    a.jump("ja", "c_found")
    a.label("c_claim")
    for off in words:
        a.load(8, 1, A.FP, off)
        a.store(8, 0, off + 40, 1)
    a.load(8, 1, A.FP, -16)
    a.store(8, 0, _off(AggSlot, "agg") + _off(Agg, "until"), 1)
    _in_conns(a, 2)
    a.store(8, 0, _off(AggSlot, "agg") + _off(Agg, "in_conns"), 2)
    a.exit(0)


def _conn_callback(a, max_reals, max_services, slot_bits):
    """sweep_conn(map, key, value, ctx): one conns or half_open entry. Stack: fp-4 an index, fp-16 the expiry,
    fp-40..-17 the aggregate's key, fp-56..-41 a new aggregate."""
    a.func("sweep_conn", 4)
    a.mov(6, 1)                                  # r6: the map, r7: the ConnKey, r8: the Conn
    a.mov(7, 2)
    a.mov(8, 3)
    _args_to_r9(a, "c_stop")
    a.load(1, 1, 8, _off(S.Conn, "state"))       # until = seen_ns + timeout_ns[min(state, CONN_STATES)]
    a.jump("jle", "c_state", 1, imm=S.CONN_STATES)
    a.mov(1, imm=S.CONN_STATES)
    a.label("c_state")
    a.alu("lsh", 1, imm=3)
    a.mov(2, 9)
    a.alu("add", 2, 1)
    a.load(8, 2, 2, _off(WalkArgs, "timeout_ns"))
    a.load(8, 3, 8, _off(S.Conn, "seen_ns"))
    a.alu("add", 2, 3)
    a.store(8, A.FP, -16, 2)
    a.load(8, 3, 9, _off(WalkArgs, "now"))
    a.jump("jsge", "c_alive", 2, 3)
    _count(a, "expired")                         # expired: counted and deleted
    a.mov(1, 6)
    a.mov(2, 7)
    a.call(A.MAP_DELETE_ELEM)
    a.exit(0)
    a.label("c_alive")                           # live: counts for its real if of the real's generation
    a.load(4, 1, 8, _off(S.Conn, "real_id"))
    _clamp(a, 1, max_reals, "c_rid")
    _lookup_u32(a, "reals", 1)
    a.jump("jeq", "c_agg", 0, imm=0)
    a.load(8, 1, 0, _off(RealSlot, "gen"))
    a.load(4, 2, 8, _off(S.Conn, "real_gen"))
    a.jump("jne", "c_agg", 1, 2)
    a.load(1, 1, 8, _off(S.Conn, "state"))
    a.jump("jeq", "c_active", 1, imm=S.CONN_STATE["est"])
    a.load(4, 1, 0, _off(RealSlot, "inactive"))
    a.alu("add", 1, imm=1)
    a.store(4, 0, _off(RealSlot, "inactive"), 1)
    a.jump("ja", "c_agg")
    a.label("c_active")
    a.load(4, 1, 0, _off(RealSlot, "active"))
    a.alu("add", 1, imm=1)
    a.store(4, 0, _off(RealSlot, "active"), 1)
    a.label("c_agg")                             # a persistent service's: its client's aggregate
    a.load(4, 1, 8, _off(S.Conn, "svc_id"))
    _clamp(a, 1, max_services, "c_sid")
    a.store(4, A.FP, -40 + _off(AggKey, "sid"), 1)
    a.load(4, 2, 9, _off(WalkArgs, "epoch"))
    a.store(4, A.FP, -40 + _off(AggKey, "epoch"), 2)
    _lookup_u32(a, "svcs", 1)
    a.jump("jeq", "c_done", 0, imm=0)
    a.load(8, 1, 0, _off(SvcSlot, "picked"))
    a.jump("jeq", "c_done", 1, imm=0)
    for i, word in enumerate(("w0", "w1")):
        a.load(8, 1, 7, _off(S.ConnKey, "src", 8 * i))
        a.load(8, 2, 0, _off(SvcSlot, "mask", 8 * i))
        a.alu("and", 1, 2)
        a.store(8, A.FP, -40 + _off(AggKey, word), 1)
    _direct_slot(a, slot_bits)
    a.label("c_hash")                            # the slot holds another client: the hash
    a.map_fd(1, a.fds["agg"])
    a.mov(2, A.FP)
    a.alu("add", 2, imm=-40)
    a.call(A.MAP_LOOKUP_ELEM)
    a.jump("jeq", "c_new", 0, imm=0)
    a.label("c_found")                           # r0: the client's Agg
    a.load(8, 1, A.FP, -16)                      # known client: the later expiry; in conns if this one is
    a.load(8, 2, 0, _off(Agg, "until"))
    a.jump("jsle", "c_flag", 1, 2)
    a.store(8, 0, _off(Agg, "until"), 1)
    a.label("c_flag")
    a.load(8, 1, 9, _off(WalkArgs, "which"))
    a.jump("jne", "c_done", 1, imm=0)
    a.store(8, 0, _off(Agg, "in_conns"), imm=1)
    a.exit(0)
    a.label("c_new")                             # a new client
    a.load(8, 1, A.FP, -16)
    a.store(8, A.FP, -56 + _off(Agg, "until"), 1)
    _in_conns(a, 2)
    a.store(8, A.FP, -56 + _off(Agg, "in_conns"), 2)
    a.map_fd(1, a.fds["agg"])
    a.mov(2, A.FP)
    a.alu("add", 2, imm=-40)
    a.mov(3, A.FP)
    a.alu("add", 3, imm=-56)
    a.mov(4, imm=1)                              # BPF_NOEXIST
    a.call(A.MAP_UPDATE_ELEM)
    a.jump("jeq", "c_done", 0, imm=0)
    a.store(8, 9, _off(WalkArgs, "overflow"), imm=1)
    a.label("c_done")
    a.exit(0)
    a.label("c_stop")
    a.exit(1)


def _nat_callback(a):
    """sweep_nat(map, key, value, ctx): one nat_revs or nat_half entry (key: the real's side; value: a NatRev).
    Stack: fp-48..-9 the client's ConnKey (what conns is keyed by)."""
    a.func("sweep_nat", 4)
    a.mov(6, 1)
    a.mov(7, 2)
    a.mov(8, 3)
    _args_to_r9(a, "n_stop")
    base = -48
    for i in range(0, 40, 8):
        a.store(8, A.FP, base + i, imm=0)
    copies = [(8, 7, _off(S.ConnKey, "dst", i), _off(S.ConnKey, "src", i)) for i in (0, 8)]
    copies += [(8, 8, _off(S.NatRev, "vip", i), _off(S.ConnKey, "dst", i)) for i in (0, 8)]
    copies += [(2, 7, _off(S.ConnKey, "dport"), _off(S.ConnKey, "sport")),
               (2, 8, _off(S.NatRev, "vport"), _off(S.ConnKey, "dport")),
               (1, 7, _off(S.ConnKey, "proto"), _off(S.ConnKey, "proto")),
               (1, 7, _off(S.ConnKey, "family"), _off(S.ConnKey, "family"))]
    for size, reg, src, dst in copies:
        a.load(size, 1, reg, src)
        a.store(size, A.FP, base + dst, 1)
    for name in ("conns", "half_open"):          # kept while either table holds the connection with its real
        a.map_fd(1, a.fds[name])
        a.mov(2, A.FP)
        a.alu("add", 2, imm=base)
        a.call(A.MAP_LOOKUP_ELEM)
        a.jump("jeq", f"n_{name}", 0, imm=0)
        a.load(4, 1, 0, _off(S.Conn, "real_id"))
        a.load(4, 2, 8, _off(S.NatRev, "real_id"))
        a.jump("jeq", "n_keep", 1, 2)
        a.label(f"n_{name}")
    a.load(8, 1, 8, _off(S.NatRev, "born_ns"))  # written since the sweep began: its connection may be newer
    a.load(8, 2, 9, _off(WalkArgs, "read_at"))
    a.jump("jsge", "n_keep", 1, 2)
    _count(a, "nat_expired")
    a.mov(1, 6)
    a.mov(2, 7)
    a.call(A.MAP_DELETE_ELEM)
    a.label("n_keep")
    a.exit(0)
    a.label("n_stop")
    a.exit(1)


def _walk(a, name, callback, which=None, seen=None):
    """Main program: bpf_for_each_map_elem(map `name`, callback); args.which set first, the count stored after."""
    if which is not None:
        a.store(8, 9, _off(WalkArgs, "which"), imm=which)
    a.map_fd(1, a.fds[name])
    a.func_addr(2, callback)
    a.mov(3, imm=0)
    a.mov(4, imm=0)
    a.call(A.FOR_EACH_MAP_ELEM)
    if seen is not None:
        a.store(8, 9, _off(WalkArgs, "seen", 8 * seen), 0)


def program(fds, max_reals, max_services, slot_bits):
    """The walker's instructions (an Asm) over the map fds `fds` (by name)."""
    a = A.Asm()
    a.fds = fds
    a.func("xlb_sweep", 1)
    _args_to_r9(a, "m_out")
    _walk(a, "agg", "sweep_clear")               # the last sweep's aggregates go first
    _walk(a, "conns", "sweep_conn", 0, 0)
    _walk(a, "half_open", "sweep_conn", 1, 1)
    _walk(a, "nat_revs", "sweep_nat", 0, 2)
    _walk(a, "nat_half", "sweep_nat", 1, 3)
    a.label("m_out")
    a.exit(2)                                    # XDP_PASS
    a.func("sweep_clear", 4)                     # delete this entry
    a.call(A.MAP_DELETE_ELEM)
    a.exit(0)
    _conn_callback(a, max_reals, max_services, slot_bits)
    _nat_callback(a)
    return a


class Walker:
    """The loaded walker and its scratch maps, for one DataPlane's tables (`m`: name -> bcc table). Raises
    KernelError when the kernel cannot load it (before 5.13: no bpf_for_each_map_elem)."""

    def __init__(self, m, max_reals, max_services, max_clients):
        """max_clients: how many clients of persistent services the aggregates hold, half of them (rounded to a
        power of two) in direct-mapped slots, the rest, a slot's other clients, in a hash."""
        self.max_reals, self.max_services, self.max_clients = max_reals, max_services, max_clients
        self.slot_bits = min(max(max_clients // 2 - 1, 1).bit_length(), 20)
        self.epoch = 0
        fds = {name: m[name].map_fd for name in ("conns", "half_open", "nat_revs", "nat_half")}
        own = []
        self._fin = weakref.finalize(self, _close_all, own)
        try:
            own.append(A.map_create(A.MAP_ARRAY, 4, ct.sizeof(WalkArgs), 1, name="xlb_sweep_args"))
            own.append(A.map_create(A.MAP_ARRAY, 4, ct.sizeof(RealSlot), max_reals, name="xlb_sweep_reals"))
            own.append(A.map_create(A.MAP_ARRAY, 4, ct.sizeof(SvcSlot), max_services, name="xlb_sweep_svcs"))
            own.append(A.map_create(A.MAP_HASH, ct.sizeof(AggKey), ct.sizeof(Agg), max_clients,
                                    A.BPF_F_NO_PREALLOC, name="xlb_sweep_agg"))
            own.append(A.map_create(A.MAP_ARRAY, 4, ct.sizeof(AggSlot), 1 << self.slot_bits, A.BPF_F_MMAPABLE,
                                    name="xlb_sweep_slots"))
            # read in place (no copy of the slots: a batched read of 262,144 cost ~0.06 s)
            self._slots_mem = mmap.mmap(own[-1], ct.sizeof(AggSlot) << self.slot_bits, mmap.MAP_SHARED,
                                        mmap.PROT_READ)
            self.slots = np.frombuffer(self._slots_mem, np.dtype(AggSlot))
            fds.update(zip(("args", "reals", "svcs", "agg", "slots"), own))
            self.fds = fds
            own.append(A.load(program(fds, max_reals, max_services, self.slot_bits), "xlb_sweep"))
        except Exception:
            self._fin()
            raise
        self.prog_fd = own[-1]
        self._svc_ids = np.arange(max_services, dtype=np.uint32)

    def close(self):
        self._fin()

    def run(self, now, read_at, timeouts, gens, svcs):
        """One walk. gens: {real id: generation} of the live reals; svcs: {service id: persistence netmask (16
        bytes)} of the services whose connections are aggregated. Returns (WalkArgs after the walk, per-real
        records (RealSlot dtype, by id, up to the highest live one), aggregates (AggKey records, Agg records))."""
        self.epoch = self.epoch % 0xFFFFFFFF + 1   # never 0: a slot never written is stale
        args = WalkArgs(now=now, read_at=read_at, epoch=self.epoch)
        args.timeout_ns[:S.CONN_STATES] = list(timeouts)
        # Only the live reals' slots are written and read back (real ids are allocated from the lowest): the
        # others may keep an old generation and counts, which nothing reads.
        ids = np.fromiter(gens, np.uint32, len(gens))
        reals = np.zeros(len(ids), np.dtype(RealSlot))
        reals["gen"] = list(gens.values())
        slots = np.zeros(self.max_services, np.dtype(SvcSlot))
        for sid, mask in svcs.items():
            slots["mask"][sid] = np.frombuffer(mask, np.uint64)
            slots["picked"][sid] = 1
        one = np.zeros(1, np.uint32)
        update_batch(self.fds["args"], one, np.frombuffer(bytearray(args), np.dtype(WalkArgs)))
        update_batch(self.fds["reals"], ids, reals)
        update_batch(self.fds["svcs"], self._svc_ids, slots)
        A.test_run(self.prog_fd)
        out = np.zeros(1, np.dtype(WalkArgs))
        lookup_batch_into(self.fds["args"], one, out)
        upto = int(ids.max()) + 1 if len(ids) else 0
        counts = np.zeros(upto, np.dtype(RealSlot))
        lookup_batch_into(self.fds["reals"], np.empty(upto, np.uint32), counts)
        slots = self.slots[self.slots["key"]["epoch"] == self.epoch]
        keys = np.empty(self.max_clients, np.dtype(AggKey))
        vals = np.empty(self.max_clients, np.dtype(Agg))
        n = lookup_batch_into(self.fds["agg"], keys, vals)
        return (WalkArgs.from_buffer_copy(out.tobytes()), counts,
                (np.concatenate([slots["key"], keys[:n]]), np.concatenate([slots["agg"], vals[:n]])))


def _close_all(fds):
    for fd in fds:
        os.close(fd)
