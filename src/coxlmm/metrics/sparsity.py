"""Sparsity of the training activations V (M, K).

    sparsity_l0       mean number of non-zero activations per training sample (|v| > `atol`)
    sparsity_l0_test  the same on the test samples (the L0 that Table 1's top-1 concepts come from)
    dead_concepts     number of concepts active on no training sample

Only the Semi-NMF, NMF and random-dictionary lasso codes have exact zeros; k-means and Simple
activations are all positive (sparsity_l0 = K) and PCA's are signed.
"""

from __future__ import annotations

import torch

from coxlmm.metrics.base import EvalInput, Metric, MetricResult
from coxlmm.metrics.reconstruction import DICTIONARY_TABLE
from coxlmm.metrics.schema import Schema, Score

SCHEMA = Schema(
    scores=[Score("sparsity_l0", "L0 (train)", ("dictionary",)),
            Score("sparsity_l0_test", "L0 (test)", ("dictionary", "table1"), summary=True, curve=True),
            Score("dead_concepts", "Dead concepts", ("dictionary",), better=-1)],
    tables=[DICTIONARY_TABLE])


def sparsity_l0(V: torch.Tensor, atol: float = 0.0) -> float:
    """Mean over rows of #{k : |v_mk| > atol}."""
    return float((V.abs() > atol).sum(1).double().mean()) if len(V) else 0.0


def dead_concepts(V: torch.Tensor, atol: float = 0.0) -> int:
    """#{k : |v_mk| <= atol for every row m}."""
    return int((~(V.abs() > atol).any(0)).sum())


class Sparsity(Metric):
    """sparsity_l0 (train, test) and dead_concepts."""

    name = "sparsity"

    def __init__(self, atol: float = 0.0) -> None:
        self.atol = float(atol)

    def __call__(self, inp: EvalInput) -> MetricResult:
        out = {"sparsity_l0": sparsity_l0(inp.train.V, self.atol),
               "dead_concepts": float(dead_concepts(inp.train.V, self.atol))}
        if inp.test is not None and len(inp.test):
            out["sparsity_l0_test"] = sparsity_l0(inp.test.V, self.atol)
        return MetricResult(out, schema=SCHEMA)
