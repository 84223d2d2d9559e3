"""Exact non-negative lasso with a fixed dictionary, batched over samples.

For U (K, B) fixed, each row v of V solves

    min_{v >= 0}  ½‖z − v U‖² + α Σ_k v_k   =   min_{v >= 0}  ½ vᵀ G v − (c − α)ᵀ v + const,

with G = U Uᵀ (K, K) and c = z Uᵀ. Only G and C = Z Uᵀ (M, K) enter, so once C is formed the
cost is independent of B. The quadratic programme is solved exactly (up to float64 round-off) by
block principal pivoting (Kim & Park, "Fast nonnegative matrix factorization", SISC 2011), run on
all rows at once: every row keeps its own passive set F (the coordinates allowed to be > 0); an
iteration solves G_FF x_F = c_F for every row (one batched (K, K) Cholesky solve) and swaps the
coordinates that violate the KKT conditions. Started from the previous support, as in the
alternating Semi-NMF loop, it typically finishes in two or three iterations, the later ones on
a few rows. Exactness matters: coordinate descent on an ill-conditioned G (atoms sharing the
large common direction of LLM hidden states) stalls, which is where scikit-learn's lasso spends
its time.
"""

from __future__ import annotations

import torch


def nonneg_quadratic(G: torch.Tensor, C: torch.Tensor, V0: torch.Tensor | None = None,
                     max_iter: int | None = None) -> torch.Tensor:
    """argmin_{V >= 0} Σ_m ½ v_mᵀ G v_m − c_mᵀ v_m, row by row.

    G (K, K) symmetric positive definite; C (M, K); V0 (M, K) optional warm start (its support
    seeds the passive sets; without it, the coordinates with c_k > 0). Returns V (M, K), same
    dtype and device as C.
    """
    M, K = C.shape
    max_iter = max_iter if max_iter is not None else 10 * K + 50
    # A relative tolerance on the KKT checks, so round-off never counts as a violation.
    tol = 1e-11 * max(float(C.abs().max()) if M else 0.0, float(G.diagonal().max()), 1e-300)
    F = (V0 > 0) if V0 is not None else (C > 0)
    x, bad = _solve_passive(G, C, F, tol)
    V = x.clamp_min(0)
    rows = bad.any(1).nonzero()[:, 0]  # rows that violate the KKT conditions, still to solve
    if len(rows) == 0:
        return V
    F, C, bad = F[rows], C[rows], bad[rows]
    best = torch.full((len(rows),), K + 1, dtype=torch.long, device=C.device)  # fewest violations
    backup = torch.full_like(best, 3)  # full exchanges allowed while not improving
    for _ in range(max_iter):
        # Full exchange while the number of violations keeps falling (and for 3 more tries after
        # it stops falling); then exchange only the last violating index, which guarantees
        # termination (Murty's rule).
        n_bad = bad.sum(1)
        improved = n_bad < best
        best = torch.where(improved, n_bad, best)
        backup = torch.where(improved, torch.full_like(backup, 3), backup - 1)
        single = backup < 0
        if bool(single.any()):
            last = K - 1 - bad.flip(1).long().argmax(1)
            only_last = torch.nn.functional.one_hot(last, K).bool()
            bad = torch.where(single[:, None], only_last, bad)
        F = F ^ bad
        x, bad = _solve_passive(G, C, F, tol)
        done = ~bad.any(1)
        V[rows[done]] = x[done].clamp_min(0)
        if bool(done.all()):
            return V
        keep = ~done
        rows, F, C, bad, best, backup = (t[keep] for t in (rows, F, C, bad, best, backup))
    V[rows] = x[keep].clamp_min(0)  # not reached in practice: the last iterate, made feasible
    return V


def _solve_passive(G: torch.Tensor, C: torch.Tensor, F: torch.Tensor, tol: float
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row m: x_F = G_FF⁻¹ c_F, x_E = 0 (E = not F), and the KKT violations.

    Every row gets the (K, K) matrix holding G_FF on its passive block and the identity
    elsewhere, and one batched Cholesky solve handles them all. (Grouping rows by passive set
    does not pay: on LLM features nearly every row has its own.) A coordinate violates the KKT
    conditions when it is passive and x < 0, or not passive and the gradient (G x − c) < 0.
    """
    Fd = F.to(G.dtype)
    Gm = G.expand(len(F), -1, -1).mul(Fd[:, :, None]).mul_(Fd[:, None, :])
    Gm.diagonal(dim1=1, dim2=2).add_(1.0 - Fd)
    rhs = (C * Fd)[:, :, None]
    L, info = torch.linalg.cholesky_ex(Gm)
    if bool((info != 0).any()):  # G numerically singular on some block
        x = torch.linalg.lstsq(Gm, rhs).solution[:, :, 0]
    else:
        x = torch.linalg.solve_triangular(
            L.mT, torch.linalg.solve_triangular(L, rhs, upper=False), upper=True)[:, :, 0]
    x = x * Fd
    grad = x @ G - C
    bad = torch.where(F, x < -tol, grad < -tol)
    return x, bad


def nonneg_lasso(Z: torch.Tensor, U: torch.Tensor, alpha: float,
                 V0: torch.Tensor | None = None) -> torch.Tensor:
    """argmin_{V >= 0} ½‖Z − V U‖²_F + α‖V‖₁ for Z (M, B), U (K, B) -> V (M, K)."""
    return nonneg_quadratic(gram(U), Z @ U.T - alpha, V0)


def gram(U: torch.Tensor) -> torch.Tensor:
    """G = U Uᵀ (K, K), made safe for Cholesky (see `regularised`)."""
    return regularised(U @ U.T)


def regularised(G: torch.Tensor) -> torch.Tensor:
    """G symmetrised, plus a ridge of 1e-12 · mean diagonal, so it stays positive definite when
    atoms are (numerically) dependent, e.g. K > B or duplicated atoms."""
    G = (G + G.T) / 2
    ridge = 1e-12 * float(G.diagonal().mean()) + 1e-300
    return G + ridge * torch.eye(len(G), dtype=G.dtype, device=G.device)


def lasso_objective(Z: torch.Tensor, V: torch.Tensor, U: torch.Tensor, alpha: float) -> float:
    """½‖Z − V U‖²_F + α‖V‖₁ in float64, from the full residual (exact, O(M B K))."""
    Z, V, U = (t.to(torch.float64) for t in (Z, V, U))
    return float(0.5 * (Z - V @ U).pow(2).sum() + alpha * V.abs().sum())
