"""Paired bootstrap CIs of per-sample score differences, and the lens readability metric."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from coxlmm.metrics.lens import lens_hits
from coxlmm.metrics.stats import mean_std, paired_ci, paired_scores


def test_paired_ci_covers_zero_for_identical_scores_and_excludes_it_for_a_shifted_copy():
    a = np.random.default_rng(0).normal(0.6, 0.3, size=93)  # the spread of CS over ~93 test samples
    m, lo, hi = paired_ci(a, a.copy())
    assert m == 0.0 and lo <= 0.0 <= hi
    m, lo, hi = paired_ci(a + 0.1, a + np.random.default_rng(1).normal(0, 0.05, size=93))
    assert lo > 0 and m == pytest.approx(0.1, abs=0.02)
    noisy = paired_scores("x", a, a + np.random.default_rng(2).normal(0, 0.3, size=93))
    assert noisy["x_ci_lo"] < 0 < noisy["x_ci_hi"] and noisy["x_significant"] == 0.0
    assert paired_scores("x", a + 0.1, a)["x_significant"] == 1.0


def test_paired_ci_is_seeded_and_checks_shapes():
    a, b = np.arange(10.0), np.arange(10.0)[::-1]
    assert paired_ci(a, b, seed=3) == paired_ci(a, b, seed=3)
    with pytest.raises(ValueError):
        paired_ci(a, b[:5])
    assert np.isnan(paired_ci([1.0], [0.0])[1])


def test_mean_std():
    assert mean_std("cs", torch.tensor([1.0, 3.0])) == {"cs_mean": 2.0, "cs_std": 1.0}
    assert mean_std("cs", []) == {}


def test_lens_hits():
    W = torch.eye(4) * 10  # vocab of 4; a state along e_j reads token j
    Z = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0.9, 0], [0, 0, 0, 1.0]])
    top1, top2 = lens_hits(lambda h: h @ W.T, Z, torch.tensor([0, 2, 1]), k=2, chunk=2)
    assert top1.tolist() == [True, False, False] and top2.tolist() == [True, True, False]


def test_the_two_level_interval_is_wider_when_null_draws_vary_and_equal_when_they_do_not():
    """The paired CI resamples the test samples and each sample's null draws: with draws that vary it is
    wider than the interval of the draw means alone; with equal draws it is exactly that interval."""
    from coxlmm.metrics.stats import bootstrap_diff

    rng = np.random.default_rng(0)
    a = rng.normal(0.6, 0.1, 90)
    draws = rng.normal(0.5, 0.1, 90)[:, None] + rng.normal(0, 1.0, (90, 20))  # the null's own randomness
    two = bootstrap_diff(a, draws, seed=1)
    one = bootstrap_diff(a, draws.mean(1), seed=1)  # draws averaged first: samples only
    assert two.mean == pytest.approx(one.mean)
    assert (two.hi - two.lo) > 1.1 * (one.hi - one.lo)
    constant = np.repeat(draws.mean(1, keepdims=True), 20, axis=1)
    same = bootstrap_diff(a, constant, seed=1)
    assert (same.lo, same.hi) == pytest.approx((one.lo, one.hi), abs=1e-12)


def test_refits_widen_the_interval_and_holm_adjusts_a_family():
    """Seeds (refits on resampled rows) are a level of the bootstrap: a method whose fits disagree gets
    a wider interval than one fit alone shows; Holm multiplies the smallest p by the family size."""
    from coxlmm.metrics.stats import bootstrap_diff, holm

    rng = np.random.default_rng(2)
    base = rng.normal(0.5, 0.1, 80)
    fits = np.stack([base + shift for shift in (0.0, 0.15, -0.15)])[:, :, None]  # (S, M, 1): the fit moves every sample
    b = np.zeros(80)
    across = bootstrap_diff(fits, b, seed=0)
    single = bootstrap_diff(fits[0, :, 0], b, seed=0)
    assert (across.hi - across.lo) > 2 * (single.hi - single.lo)
    assert holm([0.01, 0.02, 0.5]).tolist() == pytest.approx([0.03, 0.04, 0.5])
    assert holm([0.04, 0.01]).tolist() == pytest.approx([0.04, 0.02])
