"""What a causal check edits, from tensors only (pure).

Notation: z (H,) a state at layer L; Z_train (M, H); U (K, H) the dictionary; ũ_k = u_k / ‖u_k‖ its
unit directions; c_k(z) = decode(v) − decode(v with v_k = 0), concept k's part of z's reconstruction.

**Steps in units of the state.** Every steering and control step moves a state by α · n along a unit
direction d: n is the norm of the sample's own state at the target position (`step_unit="sample"`)
or the median ‖z‖ of the training states (`"median"`), α a fraction such as 0.1. The same α and n
serve every method and every control, so a method whose codes live on another scale (k-means'
1/(1 + distance), a random dictionary's) is stepped as far as Semi-NMF. (`step_unit="code"` keeps
the old view, α · s_k with s_k a percentile of the concept's training codes, as an option only.)

**Controls from the data** (each method against its own, never pooled across methods):

    concept     ũ_k, the concept's direction
    isotropic   a uniform random unit direction (leaves the data: the classic control)
    concept_other  ũ_j of another concept j ≠ k of the same dictionary (uniform)
    covariance  a random direction shaped like the data: Σ^{1/2} g normalised, Σ the training
                covariance, g ~ N(0, I) (drawn as Z_cᵀ g' / √(M − 1) with g' ~ N(0, I_M))
    diffmean    the DiffMean direction of the value matched to k (mean of the training states with the
                value minus the mean of the others; supervised, a reference)
    none        the unsteered caption (α = 0)

**Target-position edits** (the state that predicts t; outcome: what the model predicts next): clean,
the reconstruction decode(encode(z)), the train mean, zero; the ablation of each sample's top-1
concept z − c_k(z); and its controls: z − ‖c_k(z)‖ · d for d isotropic, another concept, covariance.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from coxlmm.directions import random_directions

CONTROLS = ("isotropic", "concept_other", "covariance", "diffmean")
STEP_UNITS = ("sample", "median", "code")


def unit_rows(U: torch.Tensor) -> torch.Tensor:
    """(K, H) -> each row divided by its norm (zero rows stay zero)."""
    U = U.float()
    return U / U.norm(dim=1, keepdim=True).clamp_min(1e-12)


def covariance_draws(Z: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """(n, H) draws of N(0, Σ), Σ the covariance of the rows of Z (M, H): Z_cᵀ g / √(M − 1), g ~ N(0, I_M).
    Exact in distribution for any M ≥ 2, and never forms the H × H covariance."""
    Zc = Z.double() - Z.double().mean(0)
    g = torch.randn(n, Zc.shape[0], generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (g @ Zc / (Zc.shape[0] - 1) ** 0.5).float()


def covariance_directions(Z: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """(n, H) unit directions shaped like the data's covariance."""
    return unit_rows(covariance_draws(Z, n, seed))


def other_concepts(k: int, K: int, n: int, seed: int) -> list[int]:
    """n concepts j ≠ k, uniform (k itself when K = 1)."""
    if K == 1:
        return [k] * n
    g = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, K - 1, (n,), generator=g)
    return [int(j) + int(j >= k) for j in picks]


def step_scale(unit: str, Z_test: torch.Tensor, Z_train: torch.Tensor) -> torch.Tensor:
    """(M,) the norm each test sample's steps are a fraction of ("sample": its own ‖z‖; "median": the
    median ‖z‖ of the training states, the same for all; "code": 1, the step is in code units)."""
    if unit == "sample":
        return Z_test.float().norm(dim=1)
    if unit == "median":
        return Z_train.float().norm(dim=1).median().expand(len(Z_test)).clone()
    return torch.ones(len(Z_test))


@dataclass
class Direction:
    """One steering direction: kind (module doc), the concept it belongs to, the value it should make
    the caption name, and α (a fraction of the step unit; the code-unit view multiplies by s_k)."""

    kind: str
    concept: int | None = None
    value: tuple[str, str] | None = None
    alpha: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "concept": self.concept, "value": list(self.value) if self.value else None,
                "alpha": self.alpha}


@dataclass
class SteerPlan:
    """Steering: for sample m and direction d, add alphas[d] · scale[m] · units[d] at layer L at every
    position that predicts a generated token (or every position: `positions="all"`)."""

    indices: list[int]  # dataset indices of the steered test samples
    directions: list[Direction]  # D; row 0 is "none" (α = 0: the unsteered caption)
    units: torch.Tensor  # (D, H) unit directions (zero for "none")
    alphas: torch.Tensor  # (D,) fractions of the step unit (times s_k in code units)
    scale: torch.Tensor  # (M,) the step unit of each sample
    max_new_tokens: int
    positions: str = "generated"

    def deltas(self, m: int) -> torch.Tensor:
        """(D, H) the vectors added for sample m (row m of `indices`)."""
        return self.alphas[:, None] * self.scale[m] * self.units


@dataclass
class TargetPlan:
    """Edits of the state that predicts t: states (M, V, H), variant v of sample m; rows follow `indices`."""

    indices: list[int]
    variants: list[str]  # V names: clean, recon, mean, zero, ablate, ablate:<control>
    states: torch.Tensor  # (M, V, H)
    watched: torch.Tensor  # (W,) token ids whose log-probabilities are kept (each sample's t)


@dataclass
class CaptionPlan:
    """Whole-caption cross-entropy of each test sample's own greedy caption, with the state at every
    position that predicts a caption token replaced (clean, the dictionary's reconstruction, zero, the
    train mean). `dictionary` is what `recon` applies; `mean` the train mean (H,)."""

    indices: list[int]
    dictionary: Any
    mean: torch.Tensor
    variants: tuple[str, ...] = ("clean", "recon", "zero", "mean")
    fingerprint: dict[str, Any] = field(default_factory=dict)  # what identifies the dictionary (cache key)

    def transform(self, variant: str):
        """(n, H) -> (n, H) of a variant, or None for the clean forward."""
        if variant == "clean":
            return None
        if variant == "zero":
            return torch.zeros_like
        if variant == "mean":
            return lambda h: self.mean.to(h.device, h.dtype).expand_as(h)
        d = self.dictionary
        return lambda h: d.decode(d.encode(h.float().cpu())).to(h.device, h.dtype)


def concept_parts(dictionary, V: torch.Tensor) -> torch.Tensor:
    """(M, K) codes -> (M, K, H) c_k = decode(V) − decode(V with column k zeroed)."""
    full = dictionary.decode(V)
    parts = []
    for k in range(V.shape[1]):
        Vk = V.clone()
        Vk[:, k] = 0
        parts.append(full - dictionary.decode(Vk))
    return torch.stack(parts, dim=1)


def target_plan(z: torch.Tensor, V: torch.Tensor, dictionary, Z_train: torch.Tensor, indices: list[int],
                t_ids: list[int], seed: int) -> TargetPlan:
    """The target-position edits of every sample (module doc): z (M, H), its codes V (M, K)."""
    M, H = z.shape
    K = V.shape[1]
    parts = concept_parts(dictionary, V)  # (M, K, H)
    top1 = V.argmax(1)
    own = parts[torch.arange(M), top1]  # (M, H): c_k1(z)
    norm = own.norm(dim=1, keepdim=True)
    U = unit_rows(dictionary.U)
    other = U[torch.tensor([other_concepts(int(k), K, 1, seed + m)[0] for m, k in enumerate(top1)])]
    controls = {"isotropic": random_directions(M, H, seed), "concept_other": other,
                "covariance": covariance_directions(Z_train, M, seed + 1)}
    mean = Z_train.float().mean(0)
    variants = {"clean": z, "recon": dictionary.decode(V), "mean": mean.expand(M, H), "zero": torch.zeros_like(z),
                "ablate": z - own}
    variants |= {f"ablate:{name}": z - norm * d for name, d in controls.items()}
    return TargetPlan(indices, list(variants), torch.stack([v.float() for v in variants.values()], 1),
                      torch.tensor(sorted(set(t_ids))))


def steer_plan(U: torch.Tensor, steered: dict[int, tuple[str, str] | None], alphas: list[float],
               controls: list[str], Z_train: torch.Tensor, diffmean: dict[int, torch.Tensor], scale: torch.Tensor,
               indices: list[int], max_new_tokens: int, positions: str, seed: int,
               code_scale: torch.Tensor | None = None) -> SteerPlan:
    """Directions for each steered concept k (-> its matched value or None) at each α, with its controls
    (module doc); row 0 the unsteered caption. `code_scale` (K,): the code-unit view's s_k."""
    K, H = U.shape
    Ut = unit_rows(U)
    iso = random_directions(len(steered) * len(alphas) + 1, H, seed)
    cov = covariance_directions(Z_train, len(steered) * len(alphas) + 1, seed + 1)
    dirs, units, alpha = [Direction("none")], [torch.zeros(H)], [0.0]
    i = 0
    for k, value in steered.items():
        others = other_concepts(k, K, len(alphas), seed + 7 * k)
        for a_i, a in enumerate(alphas):
            a_eff = a * float(code_scale[k]) if code_scale is not None else a
            candidates = {"concept": Ut[k], "isotropic": iso[i], "concept_other": Ut[others[a_i]],
                          "covariance": cov[i]}
            if k in diffmean:
                candidates["diffmean"] = unit_rows(diffmean[k][None])[0]
            i += 1
            for kind in ["concept", *controls]:
                if kind in candidates:
                    dirs.append(Direction(kind, k, value, float(a)))
                    units.append(candidates[kind])
                    alpha.append(a_eff)
    return SteerPlan(indices, dirs, torch.stack(units), torch.tensor(alpha, dtype=torch.float32), scale.float(),
                     max_new_tokens, positions)
