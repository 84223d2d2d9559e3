"""k-means baseline: concepts are cluster centroids, activations decay with distance.

    U (K, B)  the K centroids of Z (M, B). NOT normalised: a centroid keeps the scale of the
              features (the reference code grounds the raw centroids).
    V (M, K)  v_mk = 1 / (1 + ‖z_m − u_k‖), as in the reference code: in (0, 1], larger = closer.

The clustering is scikit-learn's `KMeans` (greedy k-means++ from the seed, one initialisation,
Lloyd; `tol` is scikit-learn's: the centres' move relative to the features' variance): a
hand-written torch version reached the same inertia 4-6x slower (bench/peers.py), so it was
dropped. Encoding is torch on `device`. `decode` returns, for each row of V, the centroid of its
most active concept (the k-means reconstruction); V U would mean nothing for these activations.
Streamed (`fit_stream`), the clustering is scikit-learn's incremental form, `MiniBatchKMeans`
(`partial_fit` on each block, `STREAM_PASSES` passes, seeded): memory is one block, and the
centroids are close to, not equal to, Lloyd's.
"""

from __future__ import annotations

from typing import Any

import torch

from coxlmm.concepts.base import Dictionary, check_number, stream_blocks
from coxlmm.errors import CoxlmmError

STREAM_PASSES = 5  # passes of MiniBatchKMeans.partial_fit over the blocks of a streamed fit


def squared_distances(Z: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    """‖z_m − u_k‖² (M, K) for Z (M, B), U (K, B), clamped at 0 against round-off."""
    return (Z.pow(2).sum(1, keepdim=True) - 2 * Z @ U.T + U.pow(2).sum(1)).clamp_min(0)


def inverse_distance(Z: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    """The reference code's activations 1 / (1 + ‖z_m − u_k‖), (M, K)."""
    return 1.0 / (1.0 + squared_distances(Z, U).sqrt())


def nearest_concept_decode(V: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    """Z_hat (M, B): each row is the concept with the largest activation."""
    return U.to(V.dtype)[V.argmax(dim=1)]


def inertia(Z: torch.Tensor, U: torch.Tensor) -> float:
    """The k-means objective Σ_m min_k ‖z_m − u_k‖² (scikit-learn's `inertia_`)."""
    return float(squared_distances(Z, U).min(1).values.sum())


class KMeans(Dictionary):
    """k-means: U = centroids (not unit norm), V = 1 / (1 + distance)."""

    nonnegative = True

    def __init__(self, n_concepts: int, seed: int = 0, device: str = "cpu", name: str | None = None,
                 display_name: str | None = None, max_iter: int = 300, tol: float = 1e-4) -> None:
        super().__init__(n_concepts, seed, device, name, display_name)
        self.max_iter = check_number("kmeans", "max_iter", max_iter, minimum=1, integer=True)
        self.tol = float(check_number("kmeans", "tol", tol))
        self.n_iter_ = 0

    def params(self) -> dict[str, Any]:
        return {"max_iter": self.max_iter, "tol": self.tol}

    def _fit(self, Z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from sklearn.cluster import KMeans as SkKMeans

        km = SkKMeans(n_clusters=self.n_concepts, n_init=1, random_state=self.seed,
                      max_iter=self.max_iter, tol=self.tol, algorithm="lloyd")
        km.fit(Z.detach().cpu().double().numpy())
        self.n_iter_ = int(km.n_iter_)
        U = torch.from_numpy(km.cluster_centers_).to(Z.device, Z.dtype)
        return U, inverse_distance(Z, U)

    def _fit_stream(self, rows, block_rows: int = 4096) -> torch.Tensor:
        from sklearn.cluster import MiniBatchKMeans

        if block_rows < self.n_concepts:
            raise CoxlmmError(f"kmeans: a streamed fit reads blocks of block_rows={block_rows} rows, fewer than "
                              f"n_concepts={self.n_concepts} clusters; use block_rows >= {self.n_concepts}.")
        km = MiniBatchKMeans(n_clusters=self.n_concepts, random_state=self.seed, n_init=1,
                             batch_size=block_rows)
        for _ in range(STREAM_PASSES):
            pending = None  # a short last block joins the next one, so every partial_fit sees >= K rows
            for z in stream_blocks(rows, block_rows):
                z = z if pending is None else torch.cat([pending, z])
                if len(z) < self.n_concepts:
                    pending = z
                    continue
                km.partial_fit(z.numpy())
                pending = None
        self.n_iter_ = STREAM_PASSES
        return torch.from_numpy(km.cluster_centers_).double()

    def _encode(self, Z: torch.Tensor) -> torch.Tensor:
        return inverse_distance(Z, self.U.to(Z.device, Z.dtype))

    def _decode(self, V: torch.Tensor) -> torch.Tensor:
        return nearest_concept_decode(V, self.U)
