"""Local interpretation of test samples: which concepts explain a sample's representation.

    z_x      (B,)    the test sample's hidden state (a row of Z_test, (M, B))
    v(x)     (K,)    argmin_{v>=0} ½‖z_x − vU‖² + λ‖v‖₁   (`dictionary.encode`, U fixed)
    ranking          concepts sorted by v(x), best first, scores v_k(x) / max_k v_k(x)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch

if TYPE_CHECKING:
    from coxlmm.concepts.base import Dictionary


class Ranking(NamedTuple):
    order: torch.Tensor  # (M, n) long: concept indices, most activated first
    scores: torch.Tensor  # (M, n) float: their activations divided by the top one (top = 1.0)


def rank_concepts(V: torch.Tensor, top: int | None = None) -> Ranking:
    """Rank the concepts of each row of V (M, K); keep the `top` first (all K when None).

    Scores are normalised to the row's top activation, so the first is 1.0. A row whose top
    activation is not positive (a sample no concept explains, V = 0) gets scores 0, not NaN.
    Ties keep the lower concept index first.
    """
    if V.ndim != 2:
        raise ValueError(f"V must be (M, K), got shape {tuple(V.shape)}")
    n = V.shape[1] if top is None else min(top, V.shape[1])
    values, order = torch.sort(V.detach().float(), dim=1, descending=True, stable=True)
    values, order = values[:, :n], order[:, :n]
    best = values[:, :1]
    scores = torch.where(best > 0, values / best.clamp_min(torch.finfo(values.dtype).tiny), torch.zeros_like(values))
    return Ranking(order=order, scores=scores)


@torch.no_grad()
def interpret(dictionary: "Dictionary", Z_test: torch.Tensor, top: int | None = None) -> tuple[torch.Tensor, Ranking]:
    """Encode test samples with U fixed and rank their concepts.

    Z_test (M, B) -> V_test (M, K), Ranking with (M, top) order and normalised scores.
    """
    V_test = dictionary.encode(Z_test)
    return V_test, rank_concepts(V_test, top)
