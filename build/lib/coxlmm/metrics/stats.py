"""Summaries and paired tests of per-sample scores (pure functions on 1-D arrays).

A method and a baseline scored on the same test samples give two score vectors a, b (n,). Their
comparison is paired: the differences d = a − b, their mean, and a bootstrap confidence interval of
that mean (scipy.stats.bootstrap, percentile method, resampling the samples). The difference is
called significant when the interval excludes 0.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import bootstrap

CONFIDENCE = 0.95
N_RESAMPLES = 10_000


def mean_std(prefix: str, scores) -> dict[str, float]:
    """{prefix_mean, prefix_std} of (n,) scores (population std); {} when n = 0."""
    s = np.asarray(scores.double() if isinstance(scores, torch.Tensor) else scores, dtype=np.float64)
    if s.size == 0:
        return {}
    return {f"{prefix}_mean": float(s.mean()), f"{prefix}_std": float(s.std())}


def paired_ci(a, b, confidence: float = CONFIDENCE, n_resamples: int = N_RESAMPLES, seed: int = 0
              ) -> tuple[float, float, float]:
    """(mean of a − b, lower, upper) with a bootstrap CI of the mean paired difference.

    Identical vectors give (0, 0, 0); fewer than 2 samples give a NaN interval."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if d.shape != np.asarray(b).shape or d.ndim != 1:
        raise ValueError(f"paired_ci needs two score vectors of one shape, got {np.shape(a)} and {np.shape(b)}")
    m = float(d.mean()) if d.size else float("nan")
    if d.size < 2:
        return m, float("nan"), float("nan")
    if np.all(d == d[0]):  # a constant difference: every resample has the same mean
        return m, float(d[0]), float(d[0])
    res = bootstrap((d,), np.mean, confidence_level=confidence, n_resamples=n_resamples, method="percentile",
                    vectorized=True, rng=np.random.default_rng(seed))
    return m, float(res.confidence_interval.low), float(res.confidence_interval.high)


def paired_scores(prefix: str, a, b, seed: int = 0) -> dict[str, float]:
    """{prefix_diff, prefix_ci_lo, prefix_ci_hi, prefix_significant (0/1)} of a − b."""
    m, lo, hi = paired_ci(a, b, seed=seed)
    sig = float(np.isfinite(lo) and (lo > 0 or hi < 0))
    return {f"{prefix}_diff": m, f"{prefix}_ci_lo": lo, f"{prefix}_ci_hi": hi, f"{prefix}_significant": sig}
