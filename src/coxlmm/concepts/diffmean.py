"""DiffMean: the supervised reference dictionary, one direction per labelled factor value.

    u_f = normalise( mean{z_m : y_mf} − mean{z_m : not y_mf} )      U (F, B), unit rows
    V   = ReLU(Z Uᵀ)                                                (M, F) >= 0
    Z (M, B) features, Y (M, F) bool: sample m has factor value f (e.g. "the target is red")

The difference of class means is the simplest direction that separates a concept from the rest
(AxBench finds it beats SAEs at concept detection). It uses the labels, which the unsupervised
methods never see, so it is the reference row of the recovery table, not a competitor, and the
causal checks' steering control. It needs labels, so it has no `conf/method` file: build it
with `DiffMean(labels=[...]).fit(Z, Y)`. K = F is set by the fit; `labels` name the rows of U.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from coxlmm.concepts.base import COMPUTE_DTYPE, Dictionary, check_features
from coxlmm.errors import CoxlmmError


def diff_mean(Z: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """U (F, B): per column f of Y (M, F) bool, the mean of the rows of Z (M, B) with y_f minus
    the mean of the others, normalised to unit length (a zero difference stays zero)."""
    Y = torch.as_tensor(Y).to(torch.bool)
    if Y.ndim != 2 or Y.shape[0] != Z.shape[0]:
        raise CoxlmmError(
            f"DiffMean needs labels Y of shape (M={Z.shape[0]}, F), one column per factor value; "
            f"got {tuple(Y.shape)}."
        )
    n_in = Y.sum(0)
    bad = ((n_in == 0) | (n_in == len(Y))).nonzero()[:, 0].tolist()
    if bad:
        raise CoxlmmError(
            f"DiffMean: label column(s) {bad} hold {'only' if n_in[bad[0]] else 'no'} positive "
            "samples; a difference of means needs samples with and without each value. Drop those "
            "values or add samples."
        )
    Yd = Y.to(Z.dtype)
    mean_in = (Yd.T @ Z) / n_in.to(Z.dtype)[:, None]
    mean_out = ((1 - Yd).T @ Z) / (len(Y) - n_in).to(Z.dtype)[:, None]
    D = mean_in - mean_out
    return D / D.norm(dim=1, keepdim=True).clamp_min(1e-300)


class DiffMean(Dictionary):
    """Supervised reference: U = unit differences of class means, V = ReLU(Z Uᵀ)."""

    nonnegative = True

    def __init__(self, n_concepts: int | None = None, seed: int = 0, device: str = "cpu",
                 name: str | None = "diffmean", display_name: str | None = "DiffMean",
                 labels: Sequence[str] | None = None) -> None:
        super().__init__(n_concepts if n_concepts is not None else 1, seed, device, name, display_name)
        self._k_given = n_concepts is not None
        self.labels = None if labels is None else [str(l) for l in labels]

    def params(self) -> dict[str, Any]:
        return {"labels": self.labels}

    def fit(self, Z: torch.Tensor, Y: torch.Tensor | None = None) -> "DiffMean":  # type: ignore[override]
        """U from features Z (M, B) and labels Y (M, F) bool; K becomes F."""
        if Y is None:
            raise CoxlmmError("DiffMean is supervised: call fit(Z, Y) with labels Y (M, F) bool.")
        Z = check_features(Z)
        F = torch.as_tensor(Y).shape[-1]
        if self.labels is not None and len(self.labels) != F:
            raise CoxlmmError(f"DiffMean: {len(self.labels)} labels for {F} label columns of Y.")
        if self._k_given and self.n_concepts != F:
            raise CoxlmmError(f"DiffMean: n_concepts={self.n_concepts} but Y has {F} columns.")
        self.n_concepts = F
        U = diff_mean(Z.to(COMPUTE_DTYPE), torch.as_tensor(Y))
        self.U = U.to(torch.float32).contiguous()
        self.V_train = self.encode(Z)
        return self

    def _fit(self, Z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise CoxlmmError("DiffMean is supervised: call fit(Z, Y) with labels Y (M, F) bool.")

    def _encode(self, Z: torch.Tensor) -> torch.Tensor:
        return (Z @ self.U.to(Z.device, Z.dtype).T).clamp_min(0)
