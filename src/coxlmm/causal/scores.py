"""Causal results -> numbers (pure functions of arrays; no model, no I/O).

    steering_success   per (sample, direction): did the steered caption name the target with the
                       direction's value, on samples whose target lacked it (else NaN: not scored)
    fluency            mean log-probability per caption token (under the text-only LM: a correct
                       attribute change is not penalised for disagreeing with the image)
    ce_recovered       whole-caption cross-entropy recovered by a reconstruction spliced in at every
                       generated position, against an ablation baseline (SAEBench's loss recovered):
                       (CE_base − CE_recon) / (CE_base − CE_clean); 1 for an exact reconstruction, 0 for
                       the baseline itself
    kl                 KL(p_clean ‖ p_edited) of next-token distributions
    clustered_ci       mean and bootstrap CI of per-(sample, item) values, resampling test samples (each
                       sample's items stay together: a sample steered along 13 concepts is one unit)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from coxlmm.metrics.stats import CONFIDENCE


def steering_success(named: Sequence[dict[str, Any] | None], truth: Sequence[dict[str, Any]],
                     value: tuple[str, str]) -> np.ndarray:
    """(M,) 1.0 where the caption names the target with `value` = (factor, v), 0.0 where it does not, NaN
    where the target already had v (nothing to change) or its value is unknown. `named[m]`: the factors
    the steered caption states for the target object (None: it names no such object)."""
    f, v = value
    out = np.full(len(truth), np.nan)
    for m, (n, t) in enumerate(zip(named, truth)):
        if t.get(f) is None or t.get(f) == v:
            continue
        out[m] = float(n is not None and n.get(f) == v)
    return out


def fluency(logprobs: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """(R,) mean log-probability of the first lengths[r] tokens of row r of logprobs (R, T); NaN for an
    empty caption."""
    lp = np.asarray(logprobs, dtype=np.float64)
    n = np.asarray(lengths)
    keep = np.arange(lp.shape[1])[None, :] < n[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, (lp * keep).sum(1) / np.maximum(n, 1), np.nan)


def caption_ce(logprobs: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """(R,) cross-entropy per token of each caption (− its mean log-probability)."""
    return -fluency(logprobs, lengths)


def ce_recovered(clean: np.ndarray, recon: np.ndarray, base: np.ndarray) -> float:
    """(E CE_base − E CE_recon) / (E CE_base − E CE_clean) of per-sample CEs; NaN when the baseline does
    not raise the CE (the ratio is then undefined)."""
    c, r, b = (float(np.nanmean(x)) for x in (clean, recon, base))
    den = b - c
    return (b - r) / den if den > 0 else float("nan")


def kl(clean_logprobs: np.ndarray, edited_logprobs: np.ndarray) -> np.ndarray:
    """(n,) KL(p_clean ‖ p_edited) of rows of log-probabilities (n, vocab)."""
    lc = np.asarray(clean_logprobs, dtype=np.float64)
    le = np.asarray(edited_logprobs, dtype=np.float64)
    return (np.exp(lc) * (lc - le)).sum(-1)


def clustered_ci(values: np.ndarray, stat: Callable[[np.ndarray], float] | None = None,
                 n_resamples: int = 4000, seed: int = 0, confidence: float = CONFIDENCE
                 ) -> tuple[float, float, float]:
    """(estimate, lower, upper) of `stat` (default: the mean of the non-NaN entries) of values (M, ...),
    with a percentile bootstrap over the rows (test samples), each row's entries kept together."""
    x = np.asarray(values, dtype=np.float64)
    x = x.reshape(len(x), -1) if x.ndim > 1 else x[:, None]
    stat = stat or (lambda a: float(np.nanmean(a)) if np.isfinite(a).any() else float("nan"))
    est = stat(x)
    rows = np.flatnonzero(np.isfinite(x).any(1))
    if len(rows) < 2 or not np.isfinite(est):
        return est, float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    reps = np.array([stat(x[rng.choice(rows, size=len(rows))]) for _ in range(n_resamples)])
    alpha = (1 - confidence) / 2
    lo, hi = np.nanquantile(reps, [alpha, 1 - alpha])
    return est, float(lo), float(hi)


def paired_ratio_ci(clean: np.ndarray, recon: np.ndarray, base: np.ndarray, n_resamples: int = 4000, seed: int = 0
                    ) -> tuple[float, float, float]:
    """`ce_recovered` with a bootstrap CI over the test samples (the three CEs of a sample move together)."""
    stacked = np.stack([clean, recon, base], axis=1)  # (M, 3)
    return clustered_ci(stacked, lambda a: ce_recovered(a[:, 0], a[:, 1], a[:, 2]), n_resamples, seed)
