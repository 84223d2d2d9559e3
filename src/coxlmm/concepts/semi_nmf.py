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

At scale (`batch_size` set, or `fit_stream` from a feature-store entry): online Semi-NMF with
running sufficient statistics (Mairal, Bach, Ponce & Sapiro 2010, "Online learning for matrix
factorization and sparse coding"), the same objective, memory bounded by the batch. The rows are
read in blocks of `batch_size`, in a seeded random order, for at most `passes` passes. For each
block Z_b (n, B): C = Z_b Uᵀ − α, the V-step (below), the pass's sums A_pass += V_bᵀ V_b (K, K)
and P_pass += V_bᵀ Z_b (K, B), and one sweep of the same atom update on A = A_pass + w A_last,
P = P_pass + w P_last, with the last pass's sums weighted by the fraction w of rows this pass has
not yet seen (so no stale code outlives a pass): 2 K (K + B) numbers, whatever M. The objective of
a pass (each block's at the atoms it was coded with) stops the loop when it falls by less than
`tol` (relative). The SVD initialisation comes from the streamed Gram Zᵀ Z (B, B). The V-step per
block (`v_solver`):
  * `exact`: block principal pivoting (`lasso.nonneg_quadratic`), exact, started from the support
    of the FISTA steps below; its cost grows with the size of each row's support (|F|³), cheap
    for small K or sparse codes;
  * `fista`: `fista_iter` steps of accelerated projected gradient (Beck & Teboulle 2009) on the
    same problem, step 1/λ_max(G), from the ReLU'd least-squares-diagonal start
    max(0, C) / diag(G); each step one (n, K) × (K, K) product, so its cost is linear in K²;
  * `auto` (default): `exact` when K <= `exact_max_k` (64), `fista` above.
The big products (Z_b Uᵀ, V_bᵀ Z_b) run in float32, the statistics accumulate in float64.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from coxlmm.concepts.base import (COMPUTE_DTYPE, Dictionary, check_choice, check_number, effective_alpha,
                                  flip_signs, stream_blocks, top_eigh)
from coxlmm.concepts.base import resolve_device
from coxlmm.directions import random_directions
from coxlmm.errors import CoxlmmError
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
        """X H (K, r). Written X H, not (H Xᵀ)ᵀ: with torch's MKL on this project's CPU machines (AMD EPYC, 1
        thread), the (20, 2000) x (2000, 2000) product takes 8.6–12 ms against 20–26 ms, and 1.4–2.2x less
        at M = 500–4000 (bench/semi_nmf_vs_sklearn.py: it is a third of an iteration)."""
        return X if self.H is None else X @ self.H

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
        X = random_directions(K, self.gram.shape[0], gen, COMPUTE_DTYPE).to(self.gram.device, self.gram.dtype)
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
                 extrapolate: bool = True, batch_size: int | None = None, v_solver: str = "auto",
                 exact_max_k: int = 64, fista_iter: int = 20, passes: int = 10) -> None:
        super().__init__(n_concepts, seed, device, name, display_name)
        self.alpha = float(check_number("semi_nmf", "alpha", alpha))
        self.alpha_scale = check_choice("semi_nmf", "alpha_scale", alpha_scale, ("absolute", "relative"))
        self.alpha_effective_: float | None = None  # the α of the last fit (alpha itself if absolute)
        self.max_iter = check_number("semi_nmf", "max_iter", max_iter, minimum=1, integer=True)
        self.tol = float(check_number("semi_nmf", "tol", tol))
        self.init = check_choice("semi_nmf", "init", init, ("svd", "random"))
        self.extrapolate = bool(extrapolate)
        self.batch_size = None if batch_size is None else check_number(
            "semi_nmf", "batch_size", batch_size, minimum=1, integer=True)
        self.v_solver = check_choice("semi_nmf", "v_solver", v_solver, ("auto", "exact", "fista"))
        self.exact_max_k = check_number("semi_nmf", "exact_max_k", exact_max_k, minimum=0, integer=True)
        self.fista_iter = check_number("semi_nmf", "fista_iter", fista_iter, minimum=1, integer=True)
        self.passes = check_number("semi_nmf", "passes", passes, minimum=1, integer=True)
        self.objective_: list[float] = []  # objective after each outer iteration of the last fit

    def params(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "alpha_scale": self.alpha_scale, "max_iter": self.max_iter,
                "tol": self.tol, "init": self.init, "extrapolate": self.extrapolate,
                "batch_size": self.batch_size, "v_solver": self.v_solver,
                "exact_max_k": self.exact_max_k, "fista_iter": self.fista_iter, "passes": self.passes}

    @property
    def v_step(self) -> str:
        """The V-step of the batched solver: `exact` or `fista` (`auto` decided by K)."""
        if self.v_solver != "auto":
            return self.v_solver
        return "exact" if self.n_concepts <= self.exact_max_k else "fista"

    @property
    def n_iter_(self) -> int:
        return len(self.objective_)

    def _fit(self, Z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.batch_size is not None:
            from coxlmm.extraction.reader import TensorRows

            U = self._fit_stream(TensorRows(Z), self.batch_size)
            return U, self._codes(Z, U)
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
        return self._codes(Z, self.U.to(Z.device, Z.dtype))

    def _codes(self, Z: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
        """V (M, K) for Z with atoms U: the exact lasso, or the batched solver's V-step by batch."""
        if self.batch_size is None:
            return nonneg_lasso(Z, U, self.alpha_effective_)
        G = regularised(U @ U.T)
        return torch.cat([self._v_step(G, z @ U.T - self.alpha_effective_) for z in Z.split(self.batch_size)])

    # --- the batched solver (module doc: "At scale") -------------------------------------------
    def _v_step(self, G: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
        V = fista_nonneg(G, C, self.fista_iter)
        # exact: block principal pivoting from FISTA's support (from C > 0 it starts with about K/2
        # coordinates per row and costs |F|³); usually one or two pivots from there.
        return nonneg_quadratic(G, C, V) if self.v_step == "exact" else V

    def _fit_stream(self, rows, block_rows: int = 4096) -> torch.Tensor:
        from coxlmm.extraction.reader import check_batch_size

        batch = check_batch_size(self.batch_size or block_rows, rows.n_rows, "semi_nmf: batch_size")
        dev = resolve_device(self.device)
        f64, f32 = torch.float64, torch.float32
        B, K = rows.dim, self.n_concepts
        gen = torch.Generator().manual_seed(self.seed)
        # One pass: the Gram matrix Zᵀ Z (B, B), ‖Z‖², and what relative α needs (the row norms).
        gram = torch.zeros(B, B, dtype=f64, device=dev)
        norms = []
        for z in stream_blocks(rows, batch, f32, dev):
            gram += (z.T @ z).to(f64)
            norms.append(z.norm(dim=1).cpu())
        self.alpha_effective_ = alpha = (self.alpha if self.alpha_scale == "absolute"
                                         else self.alpha * float(torch.cat(norms).median()))
        del norms
        if self.init == "svd":
            evals, E = top_eigh(gram, K, tol=1e-8)
            S = evals.clamp_min(0).sqrt()
            r = int((S > 1e-10 * S[0]).sum()) if len(S) and float(S[0]) > 0 else 0
            U = random_directions(K, B, gen, COMPUTE_DTYPE).to(dev)
            # scikit-learn's signs: the largest |entry| of each column of L = Z E (streamed).
            best = torch.full((r,), -1.0, dtype=f64, device=dev)
            sign = torch.ones(r, dtype=f64, device=dev)
            for z in stream_blocks(rows, batch, f64, dev):
                L = z @ E[:, :r]
                m, i = L.abs().max(0)
                better = m > best
                best = torch.where(better, m, best)
                sign = torch.where(better, torch.sign(L.gather(0, i[None])[0]), sign)
            sign[sign == 0] = 1
            U[:r] = (E[:, :r] * sign).T * S[:r, None]
        else:
            U = random_directions(K, B, gen, COMPUTE_DTYPE).to(dev)
        del gram
        U = U / U.norm(dim=1, keepdim=True).clamp_min(1.0)
        M, n_blocks = rows.n_rows, math.ceil(rows.n_rows / batch)
        A_last = P_last = None  # the last pass's statistics
        self.objective_ = []
        for epoch in range(self.passes):
            rows.check()
            f = 0.0  # the pass's objective, each block's at the atoms it was coded with
            A_pass = torch.zeros(K, K, dtype=f64, device=dev)
            P_pass = torch.zeros(K, B, dtype=f64, device=dev)
            seen = 0
            for b in torch.randperm(n_blocks, generator=gen).tolist():
                z = rows.read(b * batch, min((b + 1) * batch, M)).to(dev, f32)
                if not bool(torch.isfinite(z).all()):
                    raise CoxlmmError(f"Z contains non-finite values (NaN or inf) in rows {b * batch}.."
                                      f"{b * batch + len(z) - 1}; dictionaries need finite features.")
                G = regularised(U @ U.T)
                ZU = (z @ U.to(f32).T).to(f64)
                V = self._v_step(G, ZU - alpha)
                f += 0.5 * float(z.double().pow(2).sum()) - float((V * ZU).sum()) \
                    + 0.5 * float(((V @ G) * V).sum()) + alpha * float(V.sum())
                # Running statistics (Mairal et al. 2010): this pass's blocks so far, plus the last
                # pass's in proportion to the rows this pass has not yet seen, so that at the end of
                # a pass A and P hold this pass's codes only (no stale codes survive a pass).
                A_pass += V.T @ V
                P_pass += (V.to(f32).T @ z).to(f64)
                seen += len(z)
                if A_last is None:
                    A, P = A_pass, P_pass
                else:
                    A, P = A_pass + (1 - seen / M) * A_last, P_pass + (1 - seen / M) * P_last
                U = _update_atoms(U, U, A, P, P, same=True)[0]
                dead = A.diagonal() <= 1e-12 * max(float(A.diagonal().max()), 1e-300)
                if bool(dead.any()):  # atoms no sample used yet: the worst-coded rows of this block
                    r2 = z.double().pow(2).sum(1) - 2 * (V * ZU).sum(1) + ((V @ G) * V).sum(1)
                    worst = r2.topk(min(int(dead.sum()), len(z))).indices
                    fresh = z[worst].double() - V[worst] @ U
                    idx = dead.nonzero()[:, 0][: len(worst)]
                    U[idx] = fresh / fresh.norm(dim=1, keepdim=True).clamp_min(1e-300)
            A_last, P_last = A_pass, P_pass
            self.objective_.append(f)
            if epoch and self.objective_[-2] - f < self.tol * abs(f):
                break
        return U / U.norm(dim=1, keepdim=True).clamp_min(1.0)


def fista_nonneg(G: torch.Tensor, C: torch.Tensor, n_iter: int) -> torch.Tensor:
    """Approximately argmin_{V >= 0} Σ_m ½ v_mᵀ G v_m − c_mᵀ v_m: `n_iter` accelerated projected-
    gradient steps (FISTA, step 1/λ_max(G)), from max(0, C) / diag(G), in float32. G (K, K),
    C (M, K) -> V (M, K) in C's dtype."""
    L = float(torch.linalg.eigvalsh(G)[-1])
    dtype = C.dtype
    G, C = G.float(), C.float()  # an approximate step: float32 halves the cost of the (M, K) x (K, K) products
    V = (C / G.diagonal()).clamp_min(0)
    Y, t = V, 1.0
    for _ in range(n_iter):
        V_next = (Y - (Y @ G - C) / L).clamp_min(0)
        t_next = (1 + (1 + 4 * t * t) ** 0.5) / 2
        Y = V_next + ((t - 1) / t_next) * (V_next - V)
        V, t = V_next, t_next
    return V.to(dtype)


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
