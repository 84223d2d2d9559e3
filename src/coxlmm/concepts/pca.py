"""PCA baseline: concepts are the top-K principal directions, activations signed projections.

    mean (B,) the mean of Z (M, B) over the training rows
    U (K, B)  the top-K right singular vectors of Z − mean: orthonormal rows, unit norm
    V (M, K)  (Z − mean) Uᵀ, signed (PCA makes no non-negativity promise)
    Z_hat     V U + mean

Deterministic: the seed only completes the basis when K exceeds the rank of the centred Z.
Signs follow scikit-learn's PCA (>= 1.5, the reference pins 1.5.2): the entry of largest
magnitude of each u_k is positive (`svd_flip(u_based_decision=False)`), so the same components
give the same top concepts and words as `sklearn.decomposition.PCA(K).components_`.

Streamed (`fit_stream`): one pass accumulates the mean and the centred scatter matrix (B, B) in
float64, and U comes from its top-K eigenvectors with the same signs: the same components as the
in-memory fit, to round-off, with memory bounded by a block and B².
"""

from __future__ import annotations

from typing import Any

import torch

from coxlmm.concepts.base import COMPUTE_DTYPE, Dictionary, flip_signs, stream_blocks, svd_top, top_eigh
from coxlmm.directions import random_directions
from coxlmm.errors import CoxlmmError


class PCA(Dictionary):
    """PCA: U = principal directions (unit norm), V = signed projections of the centred Z."""

    nonnegative = False
    _state_names = ("U", "mean")

    def __init__(self, n_concepts: int, seed: int = 0, device: str = "cpu", name: str | None = None,
                 display_name: str | None = None) -> None:
        super().__init__(n_concepts, seed, device, name, display_name)
        self.mean: torch.Tensor | None = None  # (B,)

    def params(self) -> dict[str, Any]:
        return {}

    def _fit(self, Z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        K, B = self.n_concepts, Z.shape[1]
        if K > B:
            raise CoxlmmError(
                f"pca: n_concepts={K} exceeds the feature dimension B={B}; PCA has at most B "
                f"orthogonal directions. Use n_concepts <= {B}."
            )
        mean = Z.mean(0)
        Zc = Z - mean
        _, _, U = svd_top(Zc, K, signs="right")
        if len(U) < K:  # beyond the rank of Zc: any orthonormal completion is as good
            U = _complete_orthonormal(U, K, torch.Generator().manual_seed(self.seed))
        self.mean = mean.to("cpu", torch.float32)
        return U, Zc @ U.T

    def _fit_stream(self, rows, block_rows: int = 4096) -> torch.Tensor:
        K, B = self.n_concepts, rows.dim
        if K > B:
            raise CoxlmmError(f"pca: n_concepts={K} exceeds the feature dimension B={B}; use n_concepts <= {B}.")
        n, z0, total, scatter = 0, None, None, None
        for z in stream_blocks(rows, block_rows, COMPUTE_DTYPE):
            if z0 is None:  # shifted by the first row, so a large common offset cancels no digits
                z0 = z[0].clone()
                total, scatter = torch.zeros_like(z0), torch.zeros(B, B, dtype=COMPUTE_DTYPE)
            d = z - z0
            total += d.sum(0)
            scatter += d.T @ d
            n += len(z)
        m = total / n
        scatter -= n * torch.outer(m, m)  # Σ (z − z̄)ᵀ (z − z̄)
        evals, E = top_eigh(scatter, K)
        r = int((evals > 1e-20 * max(float(evals[0]), 1e-300)).sum())
        U = (E[:, :r] * flip_signs(E[:, :r])).T
        if len(U) < K:
            U = _complete_orthonormal(U, K, torch.Generator().manual_seed(self.seed))
        self.mean = (z0 + m).to(torch.float32)
        return U

    def _encode(self, Z: torch.Tensor) -> torch.Tensor:
        U = self.U.to(Z.device, Z.dtype)
        return (Z - self.mean.to(Z.device, Z.dtype)) @ U.T

    def _decode(self, V: torch.Tensor) -> torch.Tensor:
        return V @ self.U.to(COMPUTE_DTYPE) + self.mean.to(COMPUTE_DTYPE)


def _complete_orthonormal(R: torch.Tensor, K: int, gen: torch.Generator) -> torch.Tensor:
    """(K, B) orthonormal rows: R (r, B) followed by random directions orthogonal to it."""
    extra = random_directions(K - len(R), R.shape[1], gen, COMPUTE_DTYPE).to(R.device, R.dtype)
    Q, _ = torch.linalg.qr(torch.cat([R, extra]).T)  # keeps span(R) in the first r columns
    Q = Q.T
    Q[: len(R)] = R  # exactly R, not R up to signs
    return Q
