"""Random-dictionary baseline: K random unit directions, encoded like Semi-NMF.

    U (K, B)  K directions drawn from the seed (isotropic Gaussian, normalised), independent of
              the data except for its dimension B
    V (M, K)  activation="lasso" (default): the non-negative lasso of Semi-NMF with U fixed,
              argmin_{V>=0} ½‖Z − V U‖² + α‖V‖₁; activation="relu": max(0, Z Uᵀ). α is
              `alpha` (alpha_scale="absolute") or alpha × the median ‖z_m‖ of the training Z
              ("relative"), recorded as `alpha_effective_` as for Semi-NMF.

It answers "how much of a metric does any dictionary get?": the evaluation compares the learnt
dictionaries against it.
"""

from __future__ import annotations

from typing import Any

import torch

from coxlmm.concepts.base import (COMPUTE_DTYPE, Dictionary, check_choice, check_number, effective_alpha,
                                  stream_blocks)
from coxlmm.concepts.lasso import nonneg_lasso
from coxlmm.directions import random_directions


class RandomDictionary(Dictionary):
    """K random unit directions; non-negative lasso (or ReLU'd projection) activations."""

    nonnegative = True
    _fitted_names = ("alpha_effective_",)

    def __init__(self, n_concepts: int, seed: int = 0, device: str = "cpu", name: str | None = None,
                 display_name: str | None = None, activation: str = "lasso", alpha: float = 1.0,
                 alpha_scale: str = "absolute") -> None:
        super().__init__(n_concepts, seed, device, name, display_name)
        self.activation = check_choice("random_dict", "activation", activation, ("lasso", "relu"))
        self.alpha = float(check_number("random_dict", "alpha", alpha))
        self.alpha_scale = check_choice("random_dict", "alpha_scale", alpha_scale, ("absolute", "relative"))
        self.alpha_effective_: float | None = None

    def params(self) -> dict[str, Any]:
        return {"activation": self.activation, "alpha": self.alpha, "alpha_scale": self.alpha_scale}

    def _fit(self, Z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.alpha_effective_ = effective_alpha(self.alpha, self.alpha_scale, Z)
        gen = torch.Generator().manual_seed(self.seed)
        U = random_directions(self.n_concepts, Z.shape[1], gen, COMPUTE_DTYPE).to(Z.device, Z.dtype)
        return U, self._activations(Z, U)

    def _fit_stream(self, rows, block_rows: int = 4096) -> torch.Tensor:
        if self.alpha_scale == "absolute":  # the data only gives B
            self.alpha_effective_ = self.alpha
        else:  # the median row norm: one float per row
            norms = torch.cat([z.norm(dim=1) for z in stream_blocks(rows, block_rows)])
            self.alpha_effective_ = self.alpha * float(norms.median())
        return random_directions(self.n_concepts, rows.dim, self.seed, COMPUTE_DTYPE)

    def _encode(self, Z: torch.Tensor) -> torch.Tensor:
        return self._activations(Z, self.U.to(Z.device, Z.dtype))

    def _activations(self, Z: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
        if self.activation == "relu":
            return (Z @ U.T).clamp_min(0)
        return nonneg_lasso(Z, U, self.alpha_effective_)
