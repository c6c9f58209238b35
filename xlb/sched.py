"""Scheduling tables: pure builders of the lookup tables the data plane indexes once per new connection.

Each builder returns a list of indexes into the caller's list of reals. The data plane picks
``table[counter % len]`` (rr, wrr), ``table[hash(src) % len]`` (sh, mh) or ``table[hash(dst) % len]`` (dh), so all
the IPVS scheduling semantics live here, where they are tested without root (tests/test_sched.py).
Imports no bcc.
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
import math
from fractions import Fraction
from functools import reduce


def is_prime(n) -> bool:
    """True if ``n`` is a prime integer (trial division; fine for table sizes up to a few million)."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 2:
        return False
    if n < 4:
        return True
    if n % 2 == 0:
        return False
    i = 3
    while i * i <= n:
        if n % i == 0:
            return False
        i += 2
    return True


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
    """
    if not is_prime(size):
        raise ValueError(f"maglev table size must be prime, got {size!r}")
    _check_weights([w for _, w in reals])
    live = [(i, bytes(ident), w) for i, (ident, w) in enumerate(reals) if w > 0]
    if not live:
        return []
    wmax = max(w for _, _, w in live)
    offset = [_h64(ident, b"xlb-maglev-off") % size for _, ident, _ in live]
    skip = [_h64(ident, b"xlb-maglev-skip") % (size - 1) + 1 for _, ident, _ in live]
    nxt = [0] * len(live)  # position in each real's permutation

    # The credit rule means real k makes its m-th claim (m = 1, 2, ...) in round ceil(m * wmax / w) - 1, and within
    # a round reals go in list order. A heap of (round, k) replays exactly that order without walking idle rounds.
    heap = [(-(-wmax // w) - 1, k) for k, (_, _, w) in enumerate(live)]
    heapq.heapify(heap)
    claims = [0] * len(live)
    table = [-1] * size
    filled = 0
    while filled < size:
        _, k = heapq.heappop(heap)
        off, sk = offset[k], skip[k]
        slot = (off + nxt[k] * sk) % size
        while table[slot] >= 0:
            nxt[k] += 1
            slot = (off + nxt[k] * sk) % size
        table[slot] = live[k][0]
        nxt[k] += 1
        filled += 1
        claims[k] += 1
        w = live[k][2]
        heapq.heappush(heap, (-(-(claims[k] + 1) * wmax // w) - 1, k))  # ceil((m+1) * wmax / w) - 1
    return table


# --- connection-count schedulers ---------------------------------------------------------------------------------

CONN_SCHEDULERS = ("lc", "wlc", "sed", "nq", "fo", "ovf")


def conn_cost(scheduler, weight, active, inactive):
    """IPVS's cost of giving a real one more connection (lower is better), as a sortable key.

    lc: active * 256 + inactive; wlc: that / weight; sed: (active + 1) / weight; nq: an idle real first, else sed;
    fo: the highest weight; ovf: the highest weight among reals whose active count is below their weight."""
    if scheduler == "lc":
        return Fraction(active * 256 + inactive)
    if scheduler == "wlc":
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
