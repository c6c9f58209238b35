"""Matching multi-column numpy rows against a table's rows exactly (the sweep's and the reader's joins: a template
to its service by key, a connection to its template by client and service), with no Python object per row."""
import numpy as np


def exact_keys(rows, table):
    """One int64 key per row for equality matching of multi-column rows: ``rows`` and ``table`` are lists of
    uint64 columns (n and m long). Returns (row keys, row valid, table keys): a valid row's key equals a table
    row's key exactly when every column does; an invalid row has a value no table row has in some column.
    Columns are rank-compressed against the table's values only as far as int64 needs, so the usual cases (one
    column that varies, the others constant) cost one pass per column."""
    rk = rows[0].view(np.int64)
    tk = table[0].view(np.int64)
    valid = np.ones(len(rk), bool)
    bound = 2**64  # distinct values the key may take so far
    for rc, tc in zip(rows[1:], table[1:]):
        u = np.unique(tc)
        if len(u) == 1:
            valid &= rc == u[0]
            continue
        if bound * len(u) >= 2**62:  # make the key so far a dense rank among the table's keys
            tu, tk = np.unique(tk, return_inverse=True)
            rk, ok = _rank(tu, rk)
            valid &= ok
            bound = len(tu)
        r, ok = _rank(u, rc)
        valid &= ok
        rk = rk * len(u) + r
        tk = tk * len(u) + np.searchsorted(u, tc)
        bound *= len(u)
    return rk, valid, tk


def _rank(sorted_values, x):
    """(index of each x in sorted_values, whether it is there)."""
    if not len(sorted_values):
        return np.zeros(len(x), np.int64), np.zeros(len(x), bool)
    i = np.minimum(np.searchsorted(sorted_values, x), len(sorted_values) - 1)
    return i, sorted_values[i] == x


def max_per_key(keys, values, table):
    """For each key of `table` (int64; any order, repeats allowed) the largest of `values` (>= 0) whose entry of
    `keys` equals it, 0 where none does. A binary search of each key among the table's (the few: templates), not
    a sort of the keys (the many: connections)."""
    u, inverse = np.unique(table, return_inverse=True)
    i, found = _rank(u, keys)
    out = np.zeros(len(u), values.dtype)
    np.maximum.at(out, i[found], values[found])
    return out[inverse]


def row_index(rows, table, missing=-1):
    """For each row (columns as in exact_keys) the index of the equal table row (table rows distinct), or
    ``missing``."""
    rk, valid, tk = exact_keys(rows, table)
    order = np.argsort(tk, kind="stable")
    i, found = _rank(tk[order], rk)
    return np.where(valid & found, order[i] if len(order) else missing, missing)
