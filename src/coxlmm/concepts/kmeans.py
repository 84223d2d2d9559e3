"""k-means baseline: concepts are cluster centroids, activations decay with distance.

    U (K, B)  the K centroids of Z (M, B). NOT normalised: a centroid keeps the scale of the
              features (the reference code grounds the raw centroids).
    V (M, K)  v_mk = 1 / (1 + ‖z_m − u_k‖), as in the reference code: in (0, 1], larger = closer.

Initialisation: greedy k-means++ (as scikit-learn) drawn from the seed; then Lloyd iterations
until no centroid moves by more than `tol` × the mean sample norm. An empty cluster is re-seeded
with the sample farthest from its centroid. `decode` returns, for each row of V, the centroid of its most active concept
(the k-means reconstruction); V U would mean nothing for these activations.
"""

from __future__ import annotations

import math
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


def kmeans_plus_plus(Z: torch.Tensor, K: int, gen: torch.Generator) -> torch.Tensor:
    """K initial centroids (K, B) by greedy k-means++ (Arthur & Vassilvitskii 2007, as
    scikit-learn): each new centre is the best of 2 + ⌊ln K⌋ candidates drawn with probability
    proportional to the squared distance to the nearest centre so far. Drawn from `gen`."""
    M = Z.shape[0]
    trials = 2 + int(math.log(K))
    first = int(torch.randint(M, (1,), generator=gen))
    centres = [first]
    d2 = squared_distances(Z, Z[first : first + 1])[:, 0]
    for _ in range(1, K):
        total = float(d2.sum())
        if total <= 0:  # every sample sits on a centre: take any unused sample
            probs = torch.ones(M, dtype=torch.float64)
            probs[centres] = 0
        else:
            probs = (d2 / total).to("cpu", torch.float64)
        cand = torch.multinomial(probs, trials, replacement=True, generator=gen).to(Z.device)
        d2_cand = torch.minimum(d2[None], squared_distances(Z, Z[cand]).T)  # (trials, M)
        best = int(d2_cand.sum(1).argmin())
        centres.append(int(cand[best]))
        d2 = d2_cand[best]
    return Z[centres].clone()


def lloyd(Z: torch.Tensor, U: torch.Tensor, max_iter: int, tol: float
          ) -> tuple[torch.Tensor, int]:
    """Lloyd iterations from the centroids U (K, B) on Z (M, B): (final centroids, iterations).

    Stops when no centroid moves by more than `tol` × the mean sample norm. An empty cluster is
    re-seeded with the samples worst served by their centroid."""
    K = len(U)
    scale = float(Z.norm(dim=1).mean()) or 1.0
    for it in range(max_iter):
        d2 = squared_distances(Z, U)
        labels = d2.argmin(1)
        counts = torch.bincount(labels, minlength=K).to(Z.dtype)
        sums = torch.zeros_like(U).index_add_(0, labels, Z)
        U_new = sums / counts.clamp_min(1)[:, None]
        empty = counts == 0
        if bool(empty.any()):
            worst = d2.gather(1, labels[:, None])[:, 0].topk(int(empty.sum())).indices
            U_new[empty] = Z[worst]
        shift = float((U_new - U).norm(dim=1).max())
        U = U_new
        if shift <= tol * scale and not bool(empty.any()):
            break
    return U, it + 1


def inertia(Z: torch.Tensor, U: torch.Tensor) -> float:
    """The k-means objective Σ_m min_k ‖z_m − u_k‖² (scikit-learn's `inertia_`)."""
    return float(squared_distances(Z, U).min(1).values.sum())


class KMeans(Dictionary):
    """k-means: U = centroids (not unit norm), V = 1 / (1 + distance)."""

    nonnegative = True

    def __init__(self, n_concepts: int, seed: int = 0, device: str = "cpu", name: str | None = None,
                 display_name: str | None = None, max_iter: int = 300, tol: float = 1e-6) -> None:
        super().__init__(n_concepts, seed, device, name, display_name)
        self.max_iter = check_number("kmeans", "max_iter", max_iter, minimum=1, integer=True)
        self.tol = float(check_number("kmeans", "tol", tol))
        self.n_iter_ = 0

    def params(self) -> dict[str, Any]:
        return {"max_iter": self.max_iter, "tol": self.tol}

    def _fit(self, Z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(self.seed)
        U, self.n_iter_ = lloyd(Z, kmeans_plus_plus(Z, self.n_concepts, gen), self.max_iter, self.tol)
        return U, inverse_distance(Z, U)

    def _encode(self, Z: torch.Tensor) -> torch.Tensor:
        return inverse_distance(Z, self.U.to(Z.device, Z.dtype))

    def _decode(self, V: torch.Tensor) -> torch.Tensor:
        return nearest_concept_decode(V, self.U)
