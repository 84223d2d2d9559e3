"""Overlap of the concepts' grounded words (the paper's disentanglement measure; lower = better).

    Overlap(U) = (1/K) Σ_k Overlap(u_k),   Overlap(u_k) = 1/(K−1) Σ_{l≠k} |T_l ∩ T_k| / |T_k|

T_k is the set of words of concept k (duplicates count once). A concept with no words
contributes 0, as in the reference code; with fewer than two concepts the overlap is 0.
"""

from __future__ import annotations

from coxlmm.metrics.base import EvalInput, MetricResult


def overlap(words: list[list[str]]) -> float:
    """The paper's Overlap(U) of the word lists T_1..T_K."""
    T = [set(w) for w in words]
    K = len(T)
    if K < 2:
        return 0.0
    per_concept = [
        sum(len(T[l] & Tk) for l in range(K) if l != k) / (len(Tk) * (K - 1)) if Tk else 0.0
        for k, Tk in enumerate(T)
    ]
    return sum(per_concept) / K


class Overlap:
    """`overlap` of ctx.concepts.words."""

    name = "overlap"
    needs = frozenset()

    def __call__(self, inp: EvalInput) -> MetricResult:
        return MetricResult({"overlap": float(overlap(inp.concepts.words))})
