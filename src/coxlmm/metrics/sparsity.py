"""Sparsity of the training activations V (M, K).

    sparsity_l0    mean number of non-zero activations per sample (|v| > `atol`)
    dead_concepts  number of concepts active on no training sample

Only the Semi-NMF, NMF and random-dictionary lasso codes have exact zeros; k-means and Simple
activations are all positive (sparsity_l0 = K) and PCA's are signed.
"""

from __future__ import annotations

import torch

from coxlmm.metrics.base import EvalContext


def sparsity_l0(V: torch.Tensor, atol: float = 0.0) -> float:
    """Mean over rows of #{k : |v_mk| > atol}."""
    return float((V.abs() > atol).sum(1).double().mean()) if len(V) else 0.0


def dead_concepts(V: torch.Tensor, atol: float = 0.0) -> int:
    """#{k : |v_mk| <= atol for every row m}."""
    return int((~(V.abs() > atol).any(0)).sum())


class Sparsity:
    """sparsity_l0 and dead_concepts of ctx.V_train."""

    name = "sparsity"

    def __init__(self, atol: float = 0.0) -> None:
        self.atol = float(atol)

    def __call__(self, ctx: EvalContext) -> dict[str, float]:
        return {
            "sparsity_l0": sparsity_l0(ctx.V_train, self.atol),
            "dead_concepts": float(dead_concepts(ctx.V_train, self.atol)),
        }
