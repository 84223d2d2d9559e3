"""NMF baseline: Z ≈ V U with V >= 0 and U >= 0, for non-negative features.

    min_{U, V >= 0} ½‖Z − V U‖²_F,  Z (M, B) >= 0, U (K, B), V (M, K)

Hidden states of language models are signed, so plain NMF does not apply to them. By default
(`shift="none"`) negative features are refused with an explanation. Opting in:
  * shift="min":  subtract each dimension's minimum over the training rows, Z' = Z − min_m z_m,
                  so Z' >= 0; `decode` adds it back. Test rows below that minimum are clipped at 0.
  * shift="relu": Z' = max(Z, 0): negative parts are dropped (and not reconstructed).

Solver: HALS (hierarchical alternating least squares; Cichocki & Phan 2009): exact column-wise
updates of V and rows of U through the K×K products Uᵀ-Gram and Vᵀ V, from a random
non-negative start drawn from the seed; stops when the relative decrease of the objective over
10 iterations falls below 10 × `tol`. Afterwards the atoms are scaled to unit norm (V scaled
inversely, V U unchanged) and `V_train` is the exact non-negative least-squares encoding, the same
as `encode(Z)`.

Streamed (`fit_stream`): online alternation with running sufficient statistics, one pass over
the blocks per iteration: each block's V_b is its exact NNLS code with U fixed, A += V_bᵀ V_b and
P += V_bᵀ X_b accumulate, and one HALS sweep of U uses (A, P); memory is one block plus K × B.
(`shift: min` first takes one pass for the minimum.) Same objective, its own path from a random
U drawn from the seed.
"""

from __future__ import annotations

from typing import Any

import torch

from coxlmm.concepts.base import Dictionary, check_choice, check_number, stream_blocks
from coxlmm.concepts.lasso import gram, nonneg_quadratic
from coxlmm.errors import CoxlmmError

WINDOW = 10


class NMF(Dictionary):
    """Non-negative matrix factorisation (Z >= 0 required, or an opt-in `shift`)."""

    nonnegative = True
    _state_names = ("U", "offset")

    def __init__(self, n_concepts: int, seed: int = 0, device: str = "cpu", name: str | None = None,
                 display_name: str | None = None, shift: str = "none", max_iter: int = 500,
                 tol: float = 1e-6) -> None:
        super().__init__(n_concepts, seed, device, name, display_name)
        self.shift = check_choice("nmf", "shift", shift, ("none", "min", "relu"))
        self.max_iter = check_number("nmf", "max_iter", max_iter, minimum=1, integer=True)
        self.tol = float(check_number("nmf", "tol", tol))
        self.offset: torch.Tensor | None = None  # (B,) subtracted before factorising; 0 unless "min"
        self.n_iter_ = 0

    def params(self) -> dict[str, Any]:
        return {"shift": self.shift, "max_iter": self.max_iter, "tol": self.tol}

    def _nonnegative_features(self, Z: torch.Tensor) -> torch.Tensor:
        """Z' >= 0 from Z according to `shift` (uses the fitted offset)."""
        if self.shift == "relu":
            return Z.clamp_min(0)
        if self.shift == "min":
            return (Z - self.offset.to(Z.device, Z.dtype)).clamp_min(0)
        n_neg = int((Z < 0).sum())
        if n_neg:
            raise CoxlmmError(
                f"nmf needs non-negative features, but Z has {n_neg} negative entries "
                f"(of {Z.numel()}; minimum {float(Z.min()):.4g}). Hidden states of language "
                "models are signed. Use `method=semi_nmf` (the paper's method, V >= 0 with signed "
                "atoms), or opt in to a transform: `method.shift=min` (subtract each dimension's "
                "training minimum) or `method.shift=relu` (drop negative parts)."
            )
        return Z

    def _fit(self, Z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.offset = Z.min(0).values if self.shift == "min" else torch.zeros_like(Z[0])
        X = self._nonnegative_features(Z)
        M, B = X.shape
        K = self.n_concepts
        gen = torch.Generator().manual_seed(self.seed)
        scale = (float(X.mean()) / K) ** 0.5  # scikit-learn's "random" init scale
        V = (scale * torch.rand(M, K, generator=gen, dtype=X.dtype)).to(X.device)
        U = (scale * torch.rand(K, B, generator=gen, dtype=X.dtype)).to(X.device)
        V, U, self.n_iter_ = hals(X, V, U, self.max_iter, self.tol)
        norms = U.norm(dim=1)
        alive = norms > 0
        U[alive] = U[alive] / norms[alive, None]  # unit atoms; V U unchanged up to the rescale
        self.offset = self.offset.to("cpu", torch.float32)
        return U, self._nnls(X, U)

    def _fit_stream(self, rows, block_rows: int = 4096) -> torch.Tensor:
        B, K = rows.dim, self.n_concepts
        if self.shift == "min":
            self.offset = torch.stack([z.min(0).values for z in stream_blocks(rows, block_rows)]).min(0).values
        else:
            self.offset = torch.zeros(B, dtype=torch.float64)
        n, x_sum, x2 = 0, 0.0, 0.0
        for z in stream_blocks(rows, block_rows):
            X = self._nonnegative_features(z)
            n, x_sum, x2 = n + X.numel(), x_sum + float(X.sum()), x2 + float(X.pow(2).sum())
        gen = torch.Generator().manual_seed(self.seed)
        U = ((x_sum / n) / K) ** 0.5 * torch.rand(K, B, generator=gen, dtype=torch.float64)
        best: list[float] = []
        for it in range(self.max_iter):
            A, P = torch.zeros(K, K, dtype=torch.float64), torch.zeros(K, B, dtype=torch.float64)
            G = gram(U)
            for z in stream_blocks(rows, block_rows):
                X = self._nonnegative_features(z)
                V = nonneg_quadratic(G, X @ U.T)
                A += V.T @ V
                P += V.T @ X
            U = _hals_rows(U, A, P)
            f = 0.5 * (x2 - 2 * float((P * U).sum()) + float((A * (U @ U.T)).sum()))
            best.append(min(f, best[-1]) if best else f)
            if len(best) > WINDOW and best[-1 - WINDOW] - best[-1] < self.tol * WINDOW * abs(best[-1]):
                break
        self.n_iter_ = it + 1
        norms = U.norm(dim=1)
        alive = norms > 0
        U[alive] = U[alive] / norms[alive, None]
        self.offset = self.offset.to("cpu", torch.float32)
        return U

    def _encode(self, Z: torch.Tensor) -> torch.Tensor:
        return self._nnls(self._nonnegative_features(Z), self.U.to(Z.device, Z.dtype))

    def _decode(self, V: torch.Tensor) -> torch.Tensor:
        return V @ self.U.to(V.dtype) + self.offset.to(V.dtype)

    @staticmethod
    def _nnls(X: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
        """argmin_{V >= 0} ½‖X − V U‖² (exact), (M, K)."""
        return nonneg_quadratic(gram(U), X @ U.T)


def hals(X: torch.Tensor, V: torch.Tensor, U: torch.Tensor, max_iter: int, tol: float
         ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """HALS on min_{V, U >= 0} ½‖X − V U‖² from (V (M, K), U (K, B)): (V, U, iterations).

    Each iteration sweeps the rows of U, then the columns of V (exact minimisers, one at a time);
    stops when the objective fell by less than 10 × `tol` (relative) over the last 10 iterations."""
    x2 = float(X.pow(2).sum())
    best: list[float] = []
    for it in range(max_iter):
        A, P = V.T @ V, V.T @ X
        U = _hals_rows(U, A, P)
        G, C = U @ U.T, X @ U.T
        V = _hals_rows(V.T, G, C.T).T
        f = 0.5 * (x2 - 2 * float((C * V).sum()) + float((G * (V.T @ V)).sum()))
        best.append(min(f, best[-1]) if best else f)
        if len(best) > WINDOW and best[-1 - WINDOW] - best[-1] < tol * WINDOW * abs(best[-1]):
            break
    return V, U, it + 1


def _hals_rows(W: torch.Tensor, A: torch.Tensor, P: torch.Tensor) -> torch.Tensor:
    """One HALS sweep on min_{W >= 0} ½ tr(Wᵀ A W) − tr(Pᵀ W) over the rows of W (K, N).

    Row k: w_k = max(0, w_k + (P_k − A_k W) / A_kk), the exact minimiser with the others fixed.
    A row whose A_kk is 0 (an unused component) is left as it is.
    """
    W = W.clone()
    d = A.diagonal()
    live = (d > 1e-12 * max(float(d.max()), 1e-300)).tolist()
    for k in range(len(W)):
        if live[k]:
            W[k] = (W[k] + (P[k] - A[k] @ W) / A[k, k]).clamp_min(0)
    return W
