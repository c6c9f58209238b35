"""Scheduling tables: pure builders of the lookup tables the data plane indexes once per new connection.

Each builder returns a list of indexes into the caller's list of reals. The data plane picks
``table[counter % len]`` (rr, wrr), ``table[hash(src) % len]`` (sh, mh) or ``table[hash(dst) % len]`` (dh), so all
the IPVS scheduling semantics live here, where they are tested without root (tests/test_sched.py).
Imports no bcc.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from array import array
from fractions import Fraction
from functools import reduce

import numpy as np

from ..config.model import is_prime




def _check_weights(weights):
    for w in weights:
        if not isinstance(w, int) or isinstance(w, bool) or w < 0:
            raise ValueError(f"weights must be non-negative integers, got {w!r}")


def rr_table(weights) -> list[int]:
    """Round robin: every real with weight > 0 once, in list order (IPVS rr skips weight-0 reals)."""
    _check_weights(weights)
    return [i for i, w in enumerate(weights) if w > 0]


def _reduce(weights) -> list[int]:
    """Weights divided by the gcd of the positive ones (all zero stays all zero)."""
    g = reduce(math.gcd, [w for w in weights if w > 0], 0) or 1
    return [w // g for w in weights]


def _wrr_cycle(ws) -> list[int]:
    """One full ip_vs_wrr cycle for gcd-reduced weights ``ws``.

    IPVS keeps a current weight cw starting at mw = max - (gcd - 1) and lowers it by gcd after each pass over the
    reals; a pass selects, in list order, every real whose weight >= cw; when cw drops to <= 0 it starts over.
    With weights divided by their gcd the sequence is identical and cw steps by 1. Cost is O(len(result) + n log n):
    the set of reals with weight >= cw only grows as cw falls, so it is kept sorted instead of rescanned.
    """
    order = sorted((i for i, w in enumerate(ws) if w > 0), key=lambda i: -ws[i])
    chosen, out, k = [], [], 0
    for cw in range(max(ws, default=0), 0, -1):
        while k < len(order) and ws[order[k]] >= cw:
            bisect.insort(chosen, order[k])
            k += 1
        out.extend(chosen)
    return out


def wrr_table(weights, max_len=65536) -> list[int]:
    """Weighted round robin: exactly the sequence IPVS's ip_vs_wrr yields over one cycle.

    E.g. ``[3, 1] -> [0, 0, 0, 1]``; ``[4, 3, 2] -> [0, 0, 1, 0, 1, 2, 0, 1, 2]``. Weight-0 reals never appear.
    The cycle is ``sum(weights) / gcd(weights)`` long. If that exceeds ``max_len`` the weights are scaled down
    proportionally (every positive weight stays >= 1) until the cycle fits; the ratios then hold only
    approximately (to about 1/max_len of the total). Raises ValueError if more than ``max_len`` reals have weight > 0.
    """
    _check_weights(weights)
    pos = [w for w in weights if w > 0]
    if len(pos) > max_len:
        raise ValueError(f"{len(pos)} reals with weight > 0 cannot fit a wrr table of {max_len}")
    ws = _reduce(weights)
    if sum(ws) <= max_len:
        return _wrr_cycle(ws)
    total = sum(pos)
    target = max_len
    while True:
        ws = _reduce([max(1, w * target // total) if w > 0 else 0 for w in weights])
        if sum(ws) <= max_len:
            return _wrr_cycle(ws)
        target -= max(1, sum(ws) - max_len)  # terminates: at target 1 every weight is 1 and len(pos) <= max_len


def sh_table(weights, size=256) -> list[int]:
    """Source hashing buckets, filled like IPVS's ip_vs_sh_reassign.

    Walk buckets 0..size-1 giving each the current real; move to the next real (wrapping) once the current one has
    ``weight`` buckets. A weight-0 real still gets exactly one bucket (IPVS's ``++d_count >= weight`` check); at
    lookup IPVS treats such a real as unavailable. Empty list of reals -> empty table.
    """
    _check_weights(weights)
    if not weights:
        return []
    table, cur, count = [], 0, 0
    for _ in range(size):
        table.append(cur)
        count += 1
        if count >= weights[cur]:
            cur = (cur + 1) % len(weights)
            count = 0
    return table


def dh_table(weights, size=256) -> list[int]:
    """Destination hashing buckets, filled like IPVS's ip_vs_dh_reassign: one bucket per real in turn, cycling.

    Weights are ignored for the fill, as in IPVS (a weight-0 real is unavailable at lookup).
    """
    _check_weights(weights)
    if not weights:
        return []
    return [b % len(weights) for b in range(size)]


def _h64(ident: bytes, person: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(ident, digest_size=8, person=person).digest(), "little")


def maglev_table(reals, size=4093) -> list[int]:
    """Weighted Maglev lookup table (Eisenbud et al., NSDI'16) of ``size`` slots, a prime.

    ``reals`` is a list of ``(ident: bytes, weight: int)``; ``ident`` should be stable for a real (e.g. its 16-byte
    address) because it alone decides the real's permutation: ``offset = h1(ident) % size``,
    ``skip = h2(ident) % (size - 1) + 1`` with two independently keyed BLAKE2b hashes, so tables are identical
    across processes and hosts. Reals take turns claiming their next preferred free slot. Weighting follows Katran's
    weighted Maglev idea with integer credit: in each round every real earns ``weight`` credit and claims a slot
    only when its credit reaches the largest weight (so the heaviest real claims every round, a real of half the
    weight every other round). With equal weights this is plain Maglev: slot counts differ by at most 1.
    Weight-0 reals get no slots; returns [] when no real has weight > 0, else every slot holds an index into
    ``reals``. Raises ValueError if ``size`` is not prime.

    The fill is the sequential one (each claim, in turn, takes its real's first free slot); numpy does the
    permutation scanning, so 65537 slots take tens of milliseconds rather than a third of a second
    (docs/performance.md section 3).
    """
    if not is_prime(size):
        raise ValueError(f"maglev table size must be prime, got {size!r}")
    _check_weights([w for _, w in reals])
    live = [(i, bytes(ident), w) for i, (ident, w) in enumerate(reals) if w > 0]
    if not live:
        return []
    offset = [_h64(ident, b"xlb-maglev-off") % size for _, ident, _ in live]
    skip = [_h64(ident, b"xlb-maglev-skip") % (size - 1) + 1 for _, ident, _ in live]
    claimer = _maglev_claim_order([w for _, _, w in live], size)
    slots = _maglev_fill(offset, skip, claimer, size)
    table = np.empty(size, np.int64)
    table[slots] = np.array([i for i, _, _ in live], np.int64)[claimer]
    return table.tolist()


def _maglev_claim_order(weights, size):
    """Which real (index into ``weights``, all > 0) makes each of the ``size`` claims, in order.

    The credit rule means real k makes its m-th claim (m = 1, 2, ...) in round ceil(m * wmax / w_k) - 1, and
    within a round reals go in list order. The table is full after exactly ``size`` claims."""
    n = len(weights)
    if len(set(weights)) == 1:
        return np.tile(np.arange(n), -(-size // n))[:size]
    wmax = max(weights)
    # int64 holds every product below unless the weights are astronomically large; then Python integers.
    dt = np.int64 if wmax * (size + 1) * 2 < 2**62 else object
    w = np.array(weights, dt)
    lo, hi = 0, size - 1  # the last round needed: the first whose cumulative claims reach size
    while lo < hi:
        mid = (lo + hi) // 2
        if (w * (mid + 1) // wmax).sum() >= size:
            hi = mid
        else:
            lo = mid + 1
    per = (w * (lo + 1) // wmax).astype(np.int64)             # claims of each real up to that round
    real = np.repeat(np.arange(n), per)
    m = np.arange(len(real)) - np.repeat(np.cumsum(per) - per, per) + 1
    rnd = (m.astype(dt) * wmax + w[real] - 1) // w[real] - 1  # ceil(m * wmax / w) - 1
    key = rnd.astype(np.int64) * n + real                      # rounds <= size: fits
    return real[np.argsort(key, kind="stable")[:size]]


# Tuning of _maglev_fill, measured at 65537 slots with 10 to 1000 reals (tests pin the result, not these).
_SEGMENT = 0.3   # refresh the candidates after this fraction of the free slots is claimed
_MARGIN = 1.5    # scan this many times the permutation positions a real's claims are expected to need
_LATE = 512      # the last claims: search the few free slots directly instead of scanning


def _maglev_fill(offset, skip, claimer, size):
    """The slot each claim takes, in claim order: claim i goes to real ``claimer[i]``'s first free slot, in its
    permutation ``(offset + j * skip) % size`` for j = 0, 1, ..., at that moment. Returns an int64 array.

    A real never looks back: every position before its cursor holds a filled slot. So, per segment of claims,
    numpy lists each claiming real's candidates, the slots still free at the segment's start from its cursor on
    (``_MARGIN`` times as many positions as its claims should need), and the Python loop replays the claims in
    order, each taking its real's next candidate that no earlier claim took; a real whose list runs out scans on
    one position at a time. The last ``_LATE`` claims instead take, among the free slots, the one earliest in
    their real's permutation (position = (slot - offset) * skip^-1 mod size)."""
    M = size
    off, stp = np.array(offset, np.int64), np.array(skip, np.int64)
    filled = bytearray(M + 1)                     # index M: the end-of-list sentinel, never filled
    filled_np = np.frombuffer(filled, np.uint8)    # the same bytes, for numpy
    taken = array("q")
    put = taken.append
    cursor = np.zeros(len(offset), np.int64)     # permutation position each real continues from
    a, late = 0, max(0, M - _LATE)
    while a < late:
        F = M - a
        b = min(late, a + max(int(F * _SEGMENT), 1))
        seg = claimer[a:b]
        cand, cpos, first = _maglev_candidates(off, stp, cursor, np.bincount(seg, minlength=len(offset)),
                                               filled_np, F, M)
        candl, nxt = cand.tolist(), first.tolist()
        beyond = {}  # real -> position after the last one it scanned past its list's end
        for k in seg.tolist():
            p = nxt[k]
            s = candl[p]
            while filled[s]:
                p += 1
                s = candl[p]
            if s == M:  # the list ran out: go on scanning the permutation
                q = beyond.get(k) or int(cpos[p])
                s, sk = (offset[k] + q * skip[k]) % M, skip[k]
                while filled[s]:
                    q += 1
                    s = s + sk - M if s + sk >= M else s + sk
                beyond[k] = q + 1
            else:
                nxt[k] = p + 1
            filled[s] = 1
            put(s)
        act = np.flatnonzero(first >= 0)
        cursor[act] = cpos[np.array(nxt, np.int64)[act]]
        for k, q in beyond.items():
            cursor[k] = q
        a = b
    free = np.flatnonzero(filled_np[:M] == 0)
    inverse = {}
    for k in claimer[a:].tolist():
        inv = inverse.get(k)
        if inv is None:
            inv = inverse[k] = pow(skip[k], -1, M)
        i = int(np.argmin((free - offset[k]) * inv % M))
        put(int(free[i]))
        free[i] = free[-1]
        free = free[:-1]
    return np.frombuffer(taken, np.int64)


def _maglev_candidates(off, stp, cursor, claims, filled_np, F, M):
    """For the reals with claims[k] > 0: the slots still free along their permutations from their cursors, each
    real's list ending in the sentinel M. Returns (slots, their positions, index of each real's first candidate,
    -1 for reals without claims). Reals are scanned in blocks of similar claim counts, so a real scans about
    _MARGIN * claims * M / F positions (F free slots: one in M / F positions is free)."""
    act = np.flatnonzero(claims)
    group = np.frexp(claims[act].astype(float))[1]   # claim counts within a power of two
    slots_out, pos_out = [], []
    first = np.full(len(claims), -1, np.int64)
    base = 0
    for g in np.unique(group).tolist():
        rows = act[group == g]
        width = min(M, int((_MARGIN * int(claims[rows].max()) + 1) * M / F) + 2)
        pos = cursor[rows][:, None] + np.arange(width + 1)
        slots = (off[rows][:, None] + pos * stp[rows][:, None]) % M
        keep = filled_np[slots] == 0
        keep &= pos < M
        slots[:, width] = M                      # the sentinel closes each row
        keep[:, width] = True
        idx = np.flatnonzero(keep)
        slots_out.append(slots.ravel().take(idx))
        pos_out.append(pos.ravel().take(idx))
        count = keep.sum(1)
        first[rows] = base + np.cumsum(count) - count
        base += len(idx)
    return np.concatenate(slots_out), np.concatenate(pos_out), first


# --- connection-count schedulers ---------------------------------------------------------------------------------

# lblc and lblcr place a destination address's first connection (and re-place an overloaded one) with wlc.
CONN_SCHEDULERS = ("lc", "wlc", "sed", "nq", "fo", "ovf", "lblc", "lblcr")


def conn_cost(scheduler, weight, active, inactive):
    """IPVS's cost of giving a real one more connection (lower is better), as a sortable key.

    lc: active * 256 + inactive; wlc: that / weight; sed: (active + 1) / weight; nq: an idle real first, else sed;
    fo: the highest weight; ovf: the highest weight among reals whose active count is below their weight."""
    if scheduler == "lc":
        return Fraction(active * 256 + inactive)
    if scheduler in ("wlc", "lblc", "lblcr"):
        return Fraction(active * 256 + inactive, weight)
    if scheduler == "sed":
        return Fraction(active + 1, weight)
    if scheduler == "nq":
        return (active > 0, Fraction(active + 1, weight))
    if scheduler == "fo":
        return -weight
    if scheduler == "ovf":
        return (active >= weight, -weight)
    raise ValueError(f"not a connection-count scheduler: {scheduler!r}")


def conn_candidates(scheduler, reals, limit) -> list[int]:
    """The reals (indexes, in list order) the data plane weighs for new connections of a connection-count service.

    ``reals`` is a list of ``(weight, active, inactive, overloaded)``. Weight-0 reals never take new connections and
    are left out. With at most ``limit`` others, all of them; otherwise the ``limit`` cheapest by ``conn_cost`` now
    (overloaded reals last), which the control plane refreshes from fresh counts at every sweep. List order is kept
    so that ties go to the earlier real, as in IPVS."""
    usable = [i for i, (w, *_rest) in enumerate(reals) if w > 0]
    if len(usable) <= limit:
        return usable
    def key(i):
        w, act, inact, over = reals[i]
        return (over, conn_cost(scheduler, w, act, inact), i)
    return sorted(sorted(usable, key=key)[:limit])
