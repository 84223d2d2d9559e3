"""coxlmm's linear sum assignment against scipy's, the reference: the same optimal total on random,
rectangular, tied and negative matrices, min or max; a valid one-to-one matching; scipy's for large ones."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment as scipy_lsa

from coxlmm.metrics import assignment
from coxlmm.metrics.assignment import linear_sum_assignment


def matrices(n: int = 600):
    rng = np.random.default_rng(0)
    for t in range(n):
        rows, cols = rng.integers(1, 14, 2)
        C = rng.random((rows, cols))
        if t % 3 == 0:
            C = np.round(C * 3)  # many ties
        if t % 5 == 0:
            C = C * 100 - 50  # negative entries
        yield C


@pytest.mark.parametrize("maximize", [False, True])
def test_the_matching_is_optimal_and_one_to_one_as_scipys(maximize):
    for C in matrices():
        rows, cols = linear_sum_assignment(C, maximize=maximize)
        want_rows, want_cols = scipy_lsa(C, maximize=maximize)
        assert len(rows) == len(cols) == min(C.shape)
        assert (np.diff(rows) > 0).all() and len(set(cols.tolist())) == len(cols)  # rows sorted, columns distinct
        assert C[rows, cols].sum() == pytest.approx(C[want_rows, want_cols].sum(), abs=1e-9)


def test_a_unique_optimum_is_found_exactly():
    C = np.array([[0.1, 0.9, 0.2], [0.8, 0.3, 0.1]])  # |cos| of 2 concepts against 3
    rows, cols = linear_sum_assignment(C, maximize=True)
    assert rows.tolist() == [0, 1] and cols.tolist() == [1, 0]
    rows, cols = linear_sum_assignment(C.T, maximize=True)
    assert rows.tolist() == [0, 1] and cols.tolist() == [1, 0]


def test_large_matrices_go_to_scipy_and_bad_input_is_refused(monkeypatch):
    monkeypatch.setattr(assignment, "SMALL", 4)
    C = np.random.default_rng(1).random((6, 7))
    rows, cols = linear_sum_assignment(C)
    want_rows, want_cols = scipy_lsa(C)
    assert rows.tolist() == want_rows.tolist() and cols.tolist() == want_cols.tolist()
    with pytest.raises(ValueError, match="finite"):
        linear_sum_assignment(np.array([[1.0, np.nan]]))
    with pytest.raises(ValueError, match="2-d"):
        linear_sum_assignment(np.zeros(3))


def test_the_stability_metric_does_not_import_scipy_optimize():
    code = ("import sys, torch; from coxlmm.metrics.stability import matched_cosine; "
            "U = torch.randn(20, 8); print(round(matched_cosine(U, U[torch.randperm(20)]), 6), "
            "'scipy.optimize' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=600)
    assert out.stdout.split() == ["1.0", "False"]
