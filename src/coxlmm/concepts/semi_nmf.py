"""Semi-NMF, the paper's dictionary: Z ≈ V U with V >= 0 and atoms of norm at most 1.

    min_{U, V}  ½‖Z − V U‖²_F + α‖V‖₁   s.t.  V >= 0,  ‖u_k‖₂ <= 1
    Z (M, B) features, U (K, B) concepts, V (M, K) activations, α = `alpha` (1.0, the value of
    the reference code: scikit-learn's DictionaryLearning with positive_code=True) when
    `alpha_scale="absolute"` (the default); with `alpha_scale="relative"`, α = alpha × the median
    ‖z_m‖ of the training Z. The α used is `alpha_effective_`, saved with the dictionary, so
    `encode` uses the same one on new features.

The algorithm is scikit-learn's alternating minimisation, with the same SVD initialisation,
made fast:
  * V-step: the non-negative lasso with U fixed, solved exactly by block principal pivoting
    (`lasso.nonneg_quadratic`, on G = U Uᵀ and C = Z Uᵀ), warm-started from the previous
    support. scikit-learn's coordinate descent stalls on the ill-conditioned G of LLM features.
  * U-step: one block-coordinate sweep over the atoms, each the exact minimiser over u_k with
    the others fixed, projected on the unit ball (scikit-learn's `_update_dict`).
  * Extrapolation (Ang & Gillis, Neural Computation 2019): the next V-step is taken at
    Y = U + β (U − U_previous) and the U-step uses Ṽ = max(0, V + β (V − V_previous)); β grows
    while the objective falls and is cut, with a restart from the last accepted U, when it does
    not. About 4× fewer iterations than plain alternation, to the same minimum.
  * Coordinates: every atom stays in the row space of Z (the init and each update are
    combinations of rows of Z), so when M <= B the atoms are kept as U = X Z with X (K, M) and
    all the algebra runs on the Gram matrix Z Zᵀ (M, M): an iteration costs one (K, M)×(M, M)
    product instead of two (M, B)×(B, K) ones. When M > B, X = U directly (feature space).
    The metric image of the coordinates is carried along (see `_Space`), so norms and inner
    products of atoms come from K×r products.
The loop stops when the objective fell by less than `tol` (relative, per iteration) over the
last 10 iterations. A last V-step makes `V_train` equal to `encode(Z)`.
"""

from __future__ import annotations

from typing import Any

import torch

from coxlmm.concepts.base import (Dictionary, check_choice, check_number, effective_alpha,
                                  flip_signs, random_unit_rows, top_eigh)
from coxlmm.concepts.lasso import nonneg_lasso, nonneg_quadratic, regularised

WINDOW = 10  # iterations over which the relative decrease is measured for stopping
WARMUP = 30  # plain alternating steps before extrapolating: from the SVD init, extrapolating early
            # lands on a worse stationary point (DePALM-mini, α = 0: 0.0644 after 3 plain steps, 0.0633 after 30)


class _Space:
    """Coordinates for atoms: U = X D with D = Z (sample space, M <= B) or D = I (feature space).

    With H = D Dᵀ (the metric: Z Zᵀ, or I) and W the data in these coordinates (Z = W D:
    W = I, or W = Z), everything the solver needs is a small product:
        XM = X H              (K, r)   metric image of the atoms
        Z Uᵀ = W XMᵀ          (M, K)   the V-step's C
        U Uᵀ = X XMᵀ          (K, K)   the V-step's G
        P = Vᵀ W, PM = P H    (K, r)   the U-step's targets (P = Vᵀ Z in feature space)
        ⟨Vᵀ Z, U⟩ = ⟨P, XM⟩,  ‖u_k‖² = x_k · xm_k
    """

    def __init__(self, Z: torch.Tensor) -> None:
        M, B = Z.shape
        self.Z = Z
        self.sample = M <= B
        self.gram = Z @ Z.T if self.sample else Z.T @ Z  # the smaller Gram matrix
        self.H = self.gram if self.sample else None  # None = identity
        self.W = None if self.sample else Z  # None = identity
        self.z2 = float(self.gram.diagonal().sum())  # ‖Z‖²

    def metric(self, X: torch.Tensor) -> torch.Tensor:
        """X H (K, r); written (H Xᵀ)ᵀ, H being symmetric: twice as fast on CPU BLAS."""
        return X if self.H is None else (self.H @ X.T).T.contiguous()

    def data(self, XM: torch.Tensor) -> torch.Tensor:
        """W XMᵀ (M, K): Z Uᵀ for atoms with metric image XM."""
        return XM.T if self.W is None else self.W @ XM.T

    def targets(self, V: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """P = Vᵀ W and PM = P H (K, r)."""
        P = V.T if self.W is None else V.T @ self.W
        return P, self.metric(P)

    def atoms(self, X: torch.Tensor) -> torch.Tensor:
        """U (K, B) from coordinates X."""
        return X @ self.Z if self.sample else X

    def svd_init(self, K: int, gen: torch.Generator) -> torch.Tensor:
        """scikit-learn's initial dictionary S_k r_k (top-K singular triplets of Z, `svd_flip`
        signs) in coordinates; random unit atoms beyond the rank of Z."""
        evals, E = top_eigh(self.gram, K, tol=1e-8)  # an init: 1e-8 gives the same fit as 1e-12, sooner
        S = evals.clamp_min(0).sqrt()
        r = int((S > 1e-10 * S[0]).sum()) if len(S) and float(S[0]) > 0 else 0
        X = self.random_atoms(K, gen)
        if self.sample:  # E = left singular vectors L; S_k r_k = L_kᵀ Z
            X[:r] = (E[:, :r] * flip_signs(E[:, :r])).T
        else:  # E = right singular vectors; the signs are decided on L = Z E / S
            sign = flip_signs(self.Z @ E[:, :r])
            X[:r] = (E[:, :r] * sign).T * S[:r, None]
        return X

    def random_atoms(self, K: int, gen: torch.Generator) -> torch.Tensor:
        """K random unit atoms (in sample space: random combinations of the samples)."""
        X = random_unit_rows(K, self.gram.shape[0], gen).to(self.gram.device, self.gram.dtype)
        return X / _norms(X, self.metric(X)).clamp_min(1e-300)[:, None]


def _norms(X: torch.Tensor, XM: torch.Tensor) -> torch.Tensor:
    """‖u_k‖ (K,) from coordinates and their metric image."""
    return (X * XM).sum(1).clamp_min(0).sqrt()


class SemiNMF(Dictionary):
    """Semi-NMF dictionary (V >= 0, ‖u_k‖ <= 1, l1 penalty `alpha` on V)."""

    nonnegative = True
    _fitted_names = ("alpha_effective_",)

    def __init__(self, n_concepts: int, seed: int = 0, device: str = "cpu", name: str | None = None,
                 display_name: str | None = None, alpha: float = 1.0, alpha_scale: str = "absolute",
                 max_iter: int = 1000, tol: float = 1e-7, init: str = "svd",
                 extrapolate: bool = True) -> None:
        super().__init__(n_concepts, seed, device, name, display_name)
        self.alpha = float(check_number("semi_nmf", "alpha", alpha))
        self.alpha_scale = check_choice("semi_nmf", "alpha_scale", alpha_scale, ("absolute", "relative"))
        self.alpha_effective_: float | None = None  # the α of the last fit (alpha itself if absolute)
        self.max_iter = check_number("semi_nmf", "max_iter", max_iter, minimum=1, integer=True)
        self.tol = float(check_number("semi_nmf", "tol", tol))
        self.init = check_choice("semi_nmf", "init", init, ("svd", "random"))
        self.extrapolate = bool(extrapolate)
        self.objective_: list[float] = []  # objective after each outer iteration of the last fit

    def params(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "alpha_scale": self.alpha_scale, "max_iter": self.max_iter,
                "tol": self.tol, "init": self.init, "extrapolate": self.extrapolate}

    @property
    def n_iter_(self) -> int:
        return len(self.objective_)

    def _fit(self, Z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(self.seed)  # CPU: same draws on every device
        sp = _Space(Z)
        self.alpha_effective_ = alpha = effective_alpha(self.alpha, self.alpha_scale, Z)
        K = self.n_concepts
        X = sp.svd_init(K, gen) if self.init == "svd" else sp.random_atoms(K, gen)
        XM = sp.metric(X)  # accepted atoms (coordinates, metric image)
        Y, YM = X, XM  # atoms at which the next V-step is taken (extrapolated)
        V = V_acc = None  # exact codes at Y (warm start); accepted codes (extrapolated)
        beta, beta_max = 0.5, 1.0
        best: list[float] = []  # best objective so far, per iteration
        self.objective_ = []
        for it in range(self.max_iter):
            extrapolating = self.extrapolate and it >= WARMUP
            V = nonneg_quadratic(regularised(Y @ YM.T), sp.data(YM) - alpha, V)
            # The U-step sees the codes extrapolated too: Ṽ = max(0, V + β (V − V_accepted)).
            Vx = (V + beta * (V - V_acc)).clamp_min(0) if extrapolating and V_acc is not None else V
            A = Vx.T @ Vx
            P, PM = sp.targets(Vx)
            X_new, XM_new = _update_atoms(Y, YM, A, P, PM, same=sp.H is None)
            # The objective at (Ṽ, U_new), ½‖Z − ṼU‖² expanded: no (M, B) residual is formed.
            f = 0.5 * sp.z2 - float((P * XM_new).sum()) + 0.5 * float((A * (X_new @ XM_new.T)).sum())
            f += alpha * float(Vx.sum())
            self.objective_.append(f)
            dead = A.diagonal() <= 1e-12 * max(float(A.diagonal().max()), 1e-300)
            if bool(dead.any()):  # atoms no sample uses: re-seed them where the fit is worst
                _reseed(sp, X_new, XM_new, Vx, dead, gen)
            if not best or f < best[-1]:
                if extrapolating and not bool(dead.any()):
                    Y, YM = X_new + beta * (X_new - X), XM_new + beta * (XM_new - XM)
                    scale = _norms(Y, YM).clamp_min(1.0)[:, None]  # back into the unit ball
                    Y, YM = Y / scale, YM / scale
                    beta, beta_max = min(beta_max, 1.1 * beta), min(1.0, 1.02 * beta_max)
                else:
                    Y, YM = X_new, XM_new
                X, XM, V_acc = X_new, XM_new, Vx
                best.append(f)
            else:  # the extrapolated step did not pay: shrink β, restart from the accepted atoms
                beta_max, beta = beta, beta / 2
                Y, YM = X, XM
                best.append(best[-1])
            if len(best) > WINDOW and best[-1 - WINDOW] - best[-1] < self.tol * WINDOW * abs(best[-1]):
                break
        U = sp.atoms(X)
        U = U / U.norm(dim=1, keepdim=True).clamp_min(1.0)  # round-off of the coordinates
        return U, nonneg_lasso(Z, U, alpha, V)

    def _encode(self, Z: torch.Tensor) -> torch.Tensor:
        return nonneg_lasso(Z, self.U.to(Z.device, Z.dtype), self.alpha_effective_)


def _update_atoms(X: torch.Tensor, XM: torch.Tensor, A: torch.Tensor, P: torch.Tensor,
                  PM: torch.Tensor, same: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One block-coordinate sweep on min_U ½‖Z − V U‖² s.t. ‖u_k‖ <= 1, in coordinates.

    X, XM (K, r) atoms and their metric image; A = Vᵀ V (K, K); P, PM (K, r) targets (see
    `_Space`). The exact minimiser over u_k with the other atoms fixed is the projection on the
    unit ball of u_k + (Vᵀ Z − A U)_k / A_kk. Atoms no sample uses (A_kk = 0) stay as they are.
    `same`: the metric is the identity (XM is X). Returns new tensors.
    """
    X = X.clone()
    XM = X if same else XM.clone()
    d = A.diagonal()
    live = (d > 1e-12 * max(float(d.max()), 1e-300)).tolist()
    for k in range(len(X)):
        if not live[k]:
            continue
        x = X[k] + (P[k] - A[k] @ X) / A[k, k]
        if same:
            X[k] = x / x.norm().clamp_min(1.0)
        else:
            xm = XM[k] + (PM[k] - A[k] @ XM) / A[k, k]
            scale = (x @ xm).clamp_min(0).sqrt().clamp_min(1.0)
            X[k], XM[k] = x / scale, xm / scale
    return X, XM


def _reseed(sp: _Space, X: torch.Tensor, XM: torch.Tensor, V: torch.Tensor, dead: torch.Tensor,
            gen: torch.Generator) -> None:
    """Move the dead atoms (in place) to the directions of the worst-reconstructed samples,
    z_m − v_m U, so that the next V-step can use them (scikit-learn draws a random sample).
    Dead atoms have v_k = 0, so they take no part in these residuals."""
    ZU = sp.data(XM)  # Z Uᵀ (M, K)
    z2_rows = sp.gram.diagonal() if sp.sample else sp.Z.pow(2).sum(1)
    r2 = z2_rows - 2 * (V * ZU).sum(1) + ((V @ (X @ XM.T)) * V).sum(1)  # ‖z_m − v_m U‖²
    dead_atoms = dead.nonzero()[:, 0].tolist()
    worst = r2.topk(len(dead_atoms)).indices.tolist()  # len(dead_atoms) <= K <= M
    fresh = sp.random_atoms(len(dead_atoms), gen)
    for j, (k, m) in enumerate(zip(dead_atoms, worst)):
        if float(r2[m]) <= 1e-20 * sp.z2:  # Z is already reconstructed: a random atom
            x = fresh[j]
            xm = sp.metric(x[None])[0]
        elif sp.sample:  # coordinates of z_m − v_m U = (e_m − v_m X) Z
            x = -(V[m] @ X)
            x[m] += 1.0
            xm = sp.gram[m] - V[m] @ XM
        else:
            x = sp.Z[m] - V[m] @ X
            xm = x
        n = (x @ xm).clamp_min(1e-300).sqrt()
        X[k] = x / n
        if sp.H is not None:  # otherwise XM is X
            XM[k] = xm / n
