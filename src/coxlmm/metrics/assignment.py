"""The linear sum assignment (Hungarian matching) of the matching metrics: stability (two seeds' concepts),
recovery (factors to concepts) and planted recovery (features to concepts).

`linear_sum_assignment(C, maximize)` has the contract of `scipy.optimize.linear_sum_assignment`, the reference
it is tested against (tests/metrics/test_assignment.py): for an (n, m) matrix, min(n, m) pairs (rows sorted)
with the least (or, `maximize`, the largest) total of C over the matched entries. scipy's is the right solver,
but `scipy.optimize` takes 0.4 s to import, a tenth of a cached job (bench/cached_job.py), for matrices of
tens of rows. So a matrix of at most `SMALL` rows or columns is solved here, with the algorithm scipy uses
(shortest augmenting paths, Crouse 2016, "On implementing 2D rectangular assignment algorithms"): one
augmenting path per row, each a Dijkstra search over the columns in numpy, O(n² m) in all; a larger one goes
to scipy, whose C++ loop is faster there than this file's Python one.

Ties between equally good matchings may be broken differently from scipy's; the total is the same.
"""

from __future__ import annotations

import numpy as np

SMALL = 256  # above this many rows and columns, scipy's solver is faster than the import it costs


def linear_sum_assignment(C: np.ndarray, maximize: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols): the optimal one-to-one matching of a finite (n, m) cost matrix; rows ascending."""
    C = np.asarray(C, dtype=np.float64)
    if C.ndim != 2:
        raise ValueError(f"linear_sum_assignment takes a 2-d matrix, not shape {C.shape}")
    if not np.isfinite(C).all():
        raise ValueError("linear_sum_assignment takes a finite cost matrix (no NaN or inf)")
    if min(C.shape) > SMALL:
        from scipy.optimize import linear_sum_assignment as scipy_lsa

        return scipy_lsa(C, maximize=maximize)
    transposed = C.shape[0] > C.shape[1]
    cost = -C if maximize else C
    rows_to_cols = _shortest_augmenting_paths(cost.T if transposed else cost)
    rows = np.arange(len(rows_to_cols))
    if not transposed:
        return rows, rows_to_cols
    order = np.argsort(rows_to_cols)
    return rows_to_cols[order], rows[order]


def _shortest_augmenting_paths(C: np.ndarray) -> np.ndarray:
    """col4row of the least-cost matching of the n <= m rows of C (n, m): each row is matched in turn along the
    shortest augmenting path in the reduced costs C[i, j] - u[i] - v[j] (duals u, v kept feasible)."""
    n, m = C.shape
    u, v = np.zeros(n), np.zeros(m)
    col4row, row4col = np.full(n, -1), np.full(m, -1)
    for start in range(n):
        shortest, path = np.full(m, np.inf), np.full(m, -1)
        seen_rows, seen_cols = np.zeros(n, bool), np.zeros(m, bool)
        i, lowest, sink = start, 0.0, -1
        while sink < 0:
            seen_rows[i] = True
            reduced = lowest + C[i] - u[i] - v
            better = ~seen_cols & (reduced < shortest)
            path[better], shortest[better] = i, reduced[better]
            open_cost = np.where(seen_cols, np.inf, shortest)
            lowest = open_cost.min()
            ties = np.flatnonzero(open_cost == lowest)
            free = ties[row4col[ties] < 0]  # an unmatched column ends the path: prefer it among equals
            j = int(free[0] if len(free) else ties[0])
            seen_cols[j] = True
            if row4col[j] < 0:
                sink = j
            else:
                i = int(row4col[j])
        u[start] += lowest  # duals: feasible again, tight along the new matching
        others = seen_rows.copy()
        others[start] = False
        u[others] += lowest - shortest[col4row[others]]
        v[seen_cols] -= lowest - shortest[seen_cols]
        j = sink
        while True:  # augment: flip the path's edges back to `start`
            i = int(path[j])
            row4col[j] = i
            col4row[i], j = j, col4row[i]
            if i == start:
                break
    return col4row
