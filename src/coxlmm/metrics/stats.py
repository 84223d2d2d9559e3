"""Summaries, bootstrap intervals and multiple-comparison corrections (pure functions on arrays).

Every comparison here is of two score arrays laid out as

    x (S, M, R)   S fits (jobs of the same configuration but the seed: refits on resampled training
                  rows), M units (test samples, paired between a and b by position), R draws of a
                  null per unit (Rnd-Words, Rnd-Concept, noise images); (M,) and (M, R) are S = 1.

`bootstrap_diff(a, b)` estimates mean(a) − mean(b) and a percentile interval from a *hierarchical*
bootstrap: each replicate resamples the fits (with replacement; the same fits for a and b when they
come from the same jobs, `paired_fits`), the units (the same units for a and b when they are paired),
and, inside every (fit, unit) slot, the draws. The interval therefore widens with every source of
randomness the design has: the test samples, the fit and the null's own draws (conservatively: a
unit's draw mean already varies with its draws, and the draw level adds that variance again, as a
two-stage bootstrap of clustered data does). With one draw per
unit (or draws that are all equal) the draw level changes nothing, and the interval is the usual
paired bootstrap of the units: the three levels use three independent random streams, so the
replicates of the other two levels do not move. The two-sided p-value is the bootstrap's
2 · min(P*(d ≤ 0), P*(d ≥ 0)), with the replicate count's +1 correction.

`holm` adjusts p-values for a family of comparisons (Holm 1979, step-down, controls the family-wise
error rate).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

CONFIDENCE = 0.95
N_RESAMPLES = 10_000  # the sweep tables' intervals
JOB_RESAMPLES = 2_000  # one job's paired keys in metrics.json (a quick look; the tables recompute them)
_CELLS = 4_000_000  # (replicate, fit, unit, draw) cells per vectorised step: bounds the memory


def _array(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().double().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def per_unit(x) -> np.ndarray:
    """(M,) or (M, R) scores -> (M,): the mean over a unit's draws (NaN draws ignored)."""
    x = _array(x)
    return x if x.ndim == 1 else np.nanmean(x, axis=1)


def mean_std(prefix: str, scores) -> dict[str, float]:
    """{prefix_mean, prefix_std} of (M,) scores, or of (M, R) draws (the std of the units' draw means:
    a spread over samples, not over draws); {} when there is no unit."""
    s = per_unit(scores)
    if s.size == 0:
        return {}
    return {f"{prefix}_mean": float(s.mean()), f"{prefix}_std": float(s.std())}


def as_fits(x) -> tuple[np.ndarray, np.ndarray]:
    """Scores -> (X (S, M_max, R) padded with NaN, counts (S,) of units per fit).

    x: (M,), (M, R), (S, M, R), or a list of per-fit arrays (M_s,) / (M_s, R) with different M_s
    (ragged: e.g. the concepts that have words differ between refits)."""
    if isinstance(x, (list, tuple)) and x and not np.isscalar(x[0]) and np.ndim(_array(x[0])) >= 1:
        parts = [_array(p) for p in x]
        parts = [p[:, None] if p.ndim == 1 else p for p in parts]
        R = max(p.shape[1] for p in parts)
        M = max(p.shape[0] for p in parts)
        X = np.full((len(parts), M, R), np.nan)
        for s, p in enumerate(parts):
            X[s, : p.shape[0], : p.shape[1]] = p
        return X, np.array([p.shape[0] for p in parts])
    x = _array(x)
    if x.ndim == 1:
        x = x[None, :, None]
    elif x.ndim == 2:
        x = x[None]
    elif x.ndim != 3:
        raise ValueError(f"scores must be (M,), (M, R), (S, M, R) or a list of per-fit arrays, got shape {x.shape}")
    return x, np.full(x.shape[0], x.shape[1])


@dataclass(frozen=True)
class Diff:
    """mean(a) − mean(b), its percentile interval and two-sided bootstrap p-value."""

    mean: float
    lo: float
    hi: float
    p: float
    n_units: int
    n_fits: tuple[int, int]
    n_draws: tuple[int, int]

    @property
    def significant(self) -> bool:
        return bool(np.isfinite(self.lo) and (self.lo > 0 or self.hi < 0))


def _replicates(x: np.ndarray, counts: np.ndarray, fits: np.ndarray, units: np.ndarray, rng: np.random.Generator
                ) -> np.ndarray:
    """(B,) means of x (S, M, R) over resampled fits (B, S') and units (B, S', M): `units` holds uniform
    numbers in [0, 1), turned into row indices of the chosen fit (slots beyond its count are left out),
    and, per (fit, unit) slot, resampled draws."""
    B, S = fits.shape
    M, R = x.shape[1], x.shape[2]
    n = counts[fits]  # (B, S) units of each chosen fit
    rows = np.minimum((units * n[:, :, None]).astype(np.intp), n[:, :, None] - 1)  # (B, S, M)
    valid = np.arange(M)[None, None, :] < n[:, :, None]
    if R == 1:
        vals = x[fits[:, :, None], rows, 0]  # (B, S, M)
    else:
        draws = rng.integers(0, R, size=(B, S, M, R))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            vals = np.nanmean(x[fits[:, :, None, None], rows[..., None], draws], axis=3)
    vals = np.where(valid, vals, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(vals.reshape(B, -1), axis=1)


def _mean(X: np.ndarray) -> float:
    """Mean over the units of every fit of each unit's draw mean (padding left out)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # padded (all-NaN) rows of ragged fits
        return float(np.nanmean(np.nanmean(X, axis=2)))


def bootstrap_diff(a, b, *, paired_units: bool = True, paired_fits: bool = False, confidence: float = CONFIDENCE,
                   n_resamples: int = N_RESAMPLES, seed: int = 0) -> Diff:
    """Hierarchical bootstrap of mean(a) − mean(b) (module doc).

    a, b: (M,), (M, R), (S, M, R) or a list of per-fit arrays. paired_units: unit m of a and of b are
    the same (test sample, or concept of the same job): both need the same units per fit. paired_fits:
    fit s of a and of b come from the same job (same S)."""
    A, ca = as_fits(a)
    Bx, cb = as_fits(b)
    if paired_units and not (len(ca) == len(cb) or not paired_fits) or (paired_units and paired_fits and
                                                                          not np.array_equal(ca, cb)):
        raise ValueError(f"paired scores need the same units per fit: a has {ca.tolist()}, b has {cb.tolist()}")
    if paired_units and not paired_fits and len(set(ca.tolist()) | set(cb.tolist())) > 1:
        raise ValueError(f"paired scores need the same units: a has {sorted(set(ca.tolist()))}, b has "
                         f"{sorted(set(cb.tolist()))}")
    if paired_fits and A.shape[0] != Bx.shape[0]:
        raise ValueError(f"paired fits need the same jobs: a has {A.shape[0]}, b has {Bx.shape[0]}")
    mean = _mean(A) - _mean(Bx)
    n = (int(min(ca.min(), cb.min())), (A.shape[0], Bx.shape[0]), (A.shape[2], Bx.shape[2]))
    if min(ca.min(), cb.min()) < 2:
        return Diff(mean, float("nan"), float("nan"), float("nan"), *n)
    root = np.random.SeedSequence(seed)
    r_fits, r_units, r_draws = (np.random.default_rng(s) for s in root.spawn(3))
    reps = []
    cells = max(A.shape[0] * A.shape[1] * A.shape[2], Bx.shape[0] * Bx.shape[1] * Bx.shape[2])
    chunk = max(1, _CELLS // cells)
    for start in range(0, n_resamples, chunk):
        size = min(chunk, n_resamples - start)
        fa = r_fits.integers(0, A.shape[0], size=(size, A.shape[0]))
        fb = fa if paired_fits else r_fits.integers(0, Bx.shape[0], size=(size, Bx.shape[0]))
        ua = r_units.random((size, A.shape[0], A.shape[1]))
        ub = ua if paired_units else r_units.random((size, Bx.shape[0], Bx.shape[1]))
        if paired_units and ub.shape[1:] != (Bx.shape[0], Bx.shape[1]):
            ub = ua[:, : Bx.shape[0], : Bx.shape[1]]
        reps.append(_replicates(A, ca, fa, ua, r_draws) - _replicates(Bx, cb, fb, ub, r_draws))
    d = np.concatenate(reps)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(d, [alpha, 1 - alpha])
    p = min(1.0, 2 * min((np.sum(d <= 0) + 1) / (len(d) + 1), (np.sum(d >= 0) + 1) / (len(d) + 1)))
    if np.all(d == d[0]):  # a constant difference: nothing varies
        lo = hi = float(d[0])
        p = 0.0 if d[0] != 0 else 1.0
    return Diff(mean, float(lo), float(hi), float(p), *n)


def paired_ci(a, b, confidence: float = CONFIDENCE, n_resamples: int = N_RESAMPLES, seed: int = 0
              ) -> tuple[float, float, float]:
    """(mean of a − b, lower, upper): `bootstrap_diff` of one job's paired scores (b may have draws).
    Identical vectors give (0, 0, 0); fewer than 2 units give a NaN interval."""
    a_, b_ = _array(a), _array(b)
    if a_.ndim not in (1, 2) or b_.ndim not in (1, 2) or a_.shape[0] != b_.shape[0]:
        raise ValueError(f"paired_ci needs score arrays of one length, got {np.shape(a)} and {np.shape(b)}")
    d = bootstrap_diff(a_, b_, confidence=confidence, n_resamples=n_resamples, seed=seed)
    return d.mean, d.lo, d.hi


def paired_scores(prefix: str, a, b, seed: int = 0, n_resamples: int = JOB_RESAMPLES) -> dict[str, float]:
    """{prefix_diff, prefix_ci_lo, prefix_ci_hi, prefix_significant (0/1)} of a − b (b: (M,) or (M, R))."""
    d = bootstrap_diff(_array(a), _array(b), seed=seed, n_resamples=n_resamples)
    return {f"{prefix}_diff": d.mean, f"{prefix}_ci_lo": d.lo, f"{prefix}_ci_hi": d.hi,
            f"{prefix}_significant": float(d.significant)}


def holm(p_values) -> np.ndarray:
    """Holm-adjusted p-values (same order): p_(i) · (n − i + 1), made monotone, capped at 1. NaN stays NaN."""
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    if ok.size == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    n = len(order)
    running = 0.0
    for i, j in enumerate(order):
        running = max(running, min(1.0, p[j] * (n - i)))
        out[j] = running
    return out
