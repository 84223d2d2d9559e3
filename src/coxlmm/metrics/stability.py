"""Stability: do two seeds give the same concepts?

A second dictionary is fit with seed + 1 (`services.refit`) on the training features; the
rows of the two U are matched one-to-one by the Hungarian algorithm on |cos| (signs are
arbitrary for PCA), and the metric is the mean |cos| of the matched pairs: 1 = same concepts.

Methods whose fit does not depend on the seed (PCA, Simple, and Semi-NMF with its default SVD
initialisation, as in the reference code) score 1 by construction. `fraction` < 1 refits on a
random subset of the training rows (drawn from seed + 1) instead, which measures stability to the
data as well.

Artefact `stability_matches`: per concept, its matched concept in the refit and their |cos|.
"""

from __future__ import annotations

import torch

from coxlmm.errors import CoxlmmError
from coxlmm.metrics.assignment import linear_sum_assignment
from coxlmm.metrics.base import EvalInput, Metric, MetricResult
from coxlmm.metrics.reconstruction import DICTIONARY_TABLE
from coxlmm.metrics.schema import ConceptColumn, Schema, Score

SCHEMA = Schema(scores=[Score("stability", "Stability", ("dictionary",), better=1)],
                concepts=[ConceptColumn("stability_cos", "stability |cos|", better=1, sortable=True)],
                tables=[DICTIONARY_TABLE])


def matches(U1: torch.Tensor, U2: torch.Tensor) -> list[tuple[int, int, float]]:
    """The best one-to-one matching of the rows of U1 (K, B) and U2 (K', B) on |cos|: (k, k', |cos|)
    for min(K, K') pairs, by k. A zero row has cosine 0 with everything."""
    def unit(U: torch.Tensor) -> torch.Tensor:
        U = U.to(torch.float64)
        n = U.norm(dim=1, keepdim=True)
        return torch.where(n > 0, U / n.clamp_min(1e-300), torch.zeros_like(U))

    cos = (unit(U1) @ unit(U2).T).abs().numpy()
    rows, cols = linear_sum_assignment(cos, maximize=True)
    return sorted((int(r), int(c), float(cos[r, c])) for r, c in zip(rows, cols))


def matched_cosine(U1: torch.Tensor, U2: torch.Tensor) -> float:
    """Mean |cos| of the matched pairs of `matches`."""
    m = matches(U1, U2)
    return sum(c for _, _, c in m) / len(m)


class Stability(Metric):
    """`stability`: mean matched |cos| between the dictionaries of seeds s and s + 1."""

    name = "stability"

    def __init__(self, fraction: float = 1.0) -> None:
        if not 0 < fraction <= 1:
            raise CoxlmmError(
                f"stability: fraction={fraction!r} must be in (0, 1] (the share of training "
                "rows the second dictionary is fit on)."
            )
        self.fraction = float(fraction)

    def __call__(self, inp: EvalInput) -> MetricResult:
        Z = inp.train.Z
        if self.fraction < 1:
            gen = torch.Generator().manual_seed(inp.seed + 1)
            n = max(inp.dictionary.n_concepts, round(self.fraction * len(Z)))
            Z = Z[torch.randperm(len(Z), generator=gen)[:n]]
        other = inp.services.refit(Z, inp.seed + 1)
        pairs = matches(inp.dictionary.U, other.U)
        per_concept: list[float | None] = [None] * inp.dictionary.n_concepts
        for k, _, c in pairs:
            per_concept[k] = c
        return MetricResult({"stability": sum(c for _, _, c in pairs) / len(pairs)},
                            {"stability_matches": [{"concept": k, "matched": j, "matched_cos": round(c, 6)}
                                                   for k, j, c in pairs]},
                            schema=SCHEMA, concepts={"stability_cos": per_concept})
