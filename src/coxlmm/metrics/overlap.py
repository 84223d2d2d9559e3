"""Overlap of the concepts' grounded words (the paper's disentanglement measure; lower = better).

    Overlap(U) = (1/K) Σ_k Overlap(u_k),   Overlap(u_k) = 1/(K−1) Σ_{l≠k} |T_l ∩ T_k| / |T_k|

T_k is the set of words of concept k (duplicates count once). A concept with no words
contributes 0, as in the reference code; with fewer than two concepts the overlap is 0.
"""

from __future__ import annotations

import numpy as np

from coxlmm.metrics.base import EvalInput, Metric, MetricResult
from coxlmm.metrics.reconstruction import DICTIONARY_TABLE
from coxlmm.metrics.schema import Samples, Schema, Score, TableSpec

OVERLAP_TABLE = TableSpec("overlap", "Overlap of concept words (lower is more disentangled)", pivot=True,
                          token_mean=True, order=30)
SCHEMA = Schema(
    scores=[Score("overlap", "Overlap", (OVERLAP_TABLE.name, DICTIONARY_TABLE.name), better=-1, summary=True,
                  curve=True)],
    samples=[Samples("overlap_per_concept", "Overlap, concept", unit="concept", better=-1)],
    tables=[OVERLAP_TABLE, DICTIONARY_TABLE])


def overlap_per_concept(words: list[list[str]]) -> list[float]:
    """Overlap(u_k) for every concept: 1/(K−1) Σ_{l≠k} |T_l ∩ T_k| / |T_k| (0 without words or K < 2)."""
    T = [set(w) for w in words]
    K = len(T)
    if K < 2:
        return [0.0] * K
    return [sum(len(T[l] & Tk) for l in range(K) if l != k) / (len(Tk) * (K - 1)) if Tk else 0.0
            for k, Tk in enumerate(T)]


def overlap(words: list[list[str]]) -> float:
    """The paper's Overlap(U) of the word lists T_1..T_K."""
    per = overlap_per_concept(words)
    return sum(per) / len(per) if len(per) >= 2 else 0.0


class Overlap(Metric):
    """`overlap` of the concepts' words; per concept as a unit-"concept" array (method comparisons)."""

    name = "overlap"

    def __call__(self, inp: EvalInput) -> MetricResult:
        per = overlap_per_concept(inp.concepts.words)
        ids = [str(k) for k in range(len(per))]
        return MetricResult({"overlap": float(overlap(inp.concepts.words))}, schema=SCHEMA,
                            samples={"overlap_per_concept": (ids, np.asarray(per, dtype=np.float64))})
