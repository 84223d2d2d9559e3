"""The paper's "Simple" baseline: the K samples of largest norm are the concepts.

    U (K, B)  the K rows of Z (M, B) with the largest ‖z_m‖ (ties broken by row order), as they
              are: not normalised.
    V (M, K)  1 / (1 + ‖z_m − u_k‖), as for k-means (reference code).

Deterministic: the seed is accepted for the common interface and unused. `decode` returns the
concept with the largest activation for each row, as for k-means. Streamed, the K largest rows
seen so far are kept while the blocks pass (the same rows as in memory).
"""

from __future__ import annotations

from typing import Any

import torch

from coxlmm.concepts.base import COMPUTE_DTYPE, Dictionary, stream_blocks
from coxlmm.concepts.kmeans import inverse_distance, nearest_concept_decode


class Simple(Dictionary):
    """U = the K largest-norm rows of Z; V = 1 / (1 + distance)."""

    nonnegative = True

    def params(self) -> dict[str, Any]:
        return {}

    def _fit(self, Z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        norms = Z.norm(dim=1)
        # A stable sort on -norm keeps the earlier row first among equal norms.
        order = torch.sort(-norms, stable=True).indices[: self.n_concepts]
        U = Z[order].clone()
        return U, inverse_distance(Z, U)

    def _fit_stream(self, rows, block_rows: int = 4096) -> torch.Tensor:
        kept = None  # the K largest rows so far, in row order among equal norms
        for z in stream_blocks(rows, block_rows, COMPUTE_DTYPE):
            cand = z if kept is None else torch.cat([kept, z])
            kept = cand[torch.sort(-cand.norm(dim=1), stable=True).indices[: self.n_concepts]].clone()
        return kept

    def _encode(self, Z: torch.Tensor) -> torch.Tensor:
        return inverse_distance(Z, self.U.to(Z.device, Z.dtype))

    def _decode(self, V: torch.Tensor) -> torch.Tensor:
        return nearest_concept_decode(V, self.U)
