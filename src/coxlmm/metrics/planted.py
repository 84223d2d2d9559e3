"""Recovery of planted features: a generator with known concepts and SynthSAEBench's metrics.

    Z = A D + ε      Z (M, B) features, D (T, B) planted unit directions, A (M, T) >= 0 sparse
                     codes (each feature fires with probability p, magnitude |N(1, σ_a)|), ε noise

A learnt dictionary U (L, B) with codes V (M, L) is scored against (D, A) as in SynthSAEBench
(Chanin et al. 2026, SAELens `sae_lens.synthetic`):

    mcc         mean |cos(u_j, d_i)| over the optimal one-to-one matching of latents to planted
                features (Hungarian, `metrics.assignment`), over min(L, T) pairs: 1 when
                every planted direction is found
    uniqueness  #distinct i*(j) / L, with i*(j) = argmax_i |cos(u_j, d_i)|: 1 when no two latents
                chase the same planted feature
    precision, recall, f1
                per latent j (that fires at least once), of its firing (v_j > 0) as a detector of
                its best-matching feature i*(j) being active (a_i > 0): precision = P(a_i > 0 |
                v_j > 0), recall = P(v_j > 0 | a_i > 0); averaged over those latents. A method whose
                activations are never 0 (k-means, Simple: 1 / (1 + distance)) fires always: its
                precision is the base rate, its recall 1.
    dead        latents that never fire on these features

Pure functions of tensors; the benchmark that runs every method on them is `bench/planted.py`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from coxlmm.directions import random_directions
from coxlmm.metrics.assignment import linear_sum_assignment


def planted_features(M: int = 2000, B: int = 64, T: int = 16, p_fire: float = 0.15,
                     magnitude_std: float = 0.5, noise: float = 0.05, offset: float = 0.0,
                     seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(Z (M, B), A (M, T), D (T, B)) float32: Z = A D + offset · o + noise · ε.

    D: T random unit directions (Gaussian, normalised); A: each entry active with probability
    `p_fire`, magnitude |N(1, magnitude_std)|; o: a random unit direction shared by all samples
    (the common direction of LLM hidden states); ε: isotropic Gaussian with E‖ε‖² = 1 per row,
    so `noise` is the noise norm relative to a unit feature. Seeded."""
    g = torch.Generator().manual_seed(seed)
    D = random_directions(T, B, g)
    active = torch.rand(M, T, generator=g) < p_fire
    A = active * (1 + magnitude_std * torch.randn(M, T, generator=g)).abs()
    o = torch.randn(B, generator=g)
    Z = A @ D + offset * o / o.norm() + noise * torch.randn(M, B, generator=g) / B ** 0.5
    return Z, A, D


def abs_cosines(U: torch.Tensor, D: torch.Tensor) -> np.ndarray:
    """|cos(u_j, d_i)| (L, T) for U (L, B), D (T, B); a zero row has cosine 0."""
    U = U.double() / U.double().norm(dim=1, keepdim=True).clamp_min(1e-300)
    D = D.double() / D.double().norm(dim=1, keepdim=True).clamp_min(1e-300)
    return (U @ D.T).abs().numpy()


def mcc(U: torch.Tensor, D: torch.Tensor) -> float:
    """Mean |cos| of the optimal one-to-one matching between rows of U and of D (Hungarian)."""
    S = abs_cosines(U, D)
    rows, cols = linear_sum_assignment(S, maximize=True)
    return float(S[rows, cols].mean())


def uniqueness(U: torch.Tensor, D: torch.Tensor) -> float:
    """Fraction of distinct best-matching planted features among the L latents."""
    best = abs_cosines(U, D).argmax(1)
    return float(len(np.unique(best)) / len(best))


@dataclass
class FiringScores:
    precision: float
    recall: float
    f1: float
    dead: int  # latents that never fire


def firing_scores(V: torch.Tensor, A: torch.Tensor, U: torch.Tensor, D: torch.Tensor) -> FiringScores:
    """Per-latent precision / recall / F1 of firing (v_j > 0) against its best-matching planted
    feature's activity (a_i > 0), averaged over latents that fire; V (M, L), A (M, T)."""
    best = torch.as_tensor(abs_cosines(U, D).argmax(1))
    fires = V > 0  # (M, L)
    truth = (A > 0)[:, best]  # (M, L): the matched feature of each latent
    n_fire, n_true = fires.sum(0).double(), truth.sum(0).double()
    hit = (fires & truth).sum(0).double()
    live = n_fire > 0
    if not bool(live.any()):
        return FiringScores(0.0, 0.0, 0.0, int(len(live)))
    precision = hit[live] / n_fire[live]
    recall = hit[live] / n_true[live].clamp_min(1)
    f1 = 2 * precision * recall / (precision + recall).clamp_min(1e-300)
    return FiringScores(float(precision.mean()), float(recall.mean()), float(f1.mean()),
                        int((~live).sum()))


def planted_scores(U: torch.Tensor, V: torch.Tensor, D: torch.Tensor, A: torch.Tensor) -> dict[str, float]:
    """All of the above as one flat dict: mcc, uniqueness, precision, recall, f1, dead."""
    return {"mcc": mcc(U, D), "uniqueness": uniqueness(U, D), **asdict(firing_scores(V, A, U, D))}
