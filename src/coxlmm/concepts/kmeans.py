"""k-means baseline: concepts are cluster centroids, activations decay with distance.

    U (K, B)  the K centroids of Z (M, B). NOT normalised: a centroid keeps the scale of the
              features (the reference code grounds the raw centroids).
    V (M, K)  v_mk = 1 / (1 + ‖z_m − u_k‖), as in the reference code: in (0, 1], larger = closer.

The clustering is scikit-learn's `KMeans` (greedy k-means++ from the seed, one initialisation,
Lloyd; `tol` is scikit-learn's: the centres' move relative to the features' variance): a
hand-written torch version reached the same inertia 4-6x slower (bench/peers.py), so it was
dropped. Encoding is torch on `device`. `decode` returns, for each row of V, the centroid of its
most active concept (the k-means reconstruction); V U would mean nothing for these activations.
"""

from __future__ import annotations

from typing import Any

import torch

from coxlmm.concepts.base import Dictionary, check_number


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

    def _encode(self, Z: torch.Tensor) -> torch.Tensor:
        return inverse_distance(Z, self.U.to(Z.device, Z.dtype))

    def _decode(self, V: torch.Tensor) -> torch.Tensor:
        return nearest_concept_decode(V, self.U)
