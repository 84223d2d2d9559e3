"""The `Dictionary` interface shared by every concept-extraction method.

Notation (the paper's, row-major, one row per sample):
    Z (M, B)  features of M samples, B = hidden size of the language model
    U (K, B)  the dictionary, one concept u_k per row
    V (M, K)  concept activations, Z ≈ V U

A method is one module with a `Dictionary` subclass and one `conf/method/<name>.yaml` whose
`_target_` names the class (`_partial_: true`: the pipeline adds the seed). The subclass
implements `_fit` (returns U and the training activations), `_encode` and `params`, lists the
tensors that define it in `_state_names` and the scalars its fit learns in `_fitted_names` (both
saved by `concepts.io.save_dictionary`). A dictionary's `name` and `display_name` come from its
config file, so one class can serve several configs (nmf and nmf_shifted). Computation runs in
`compute_dtype` (float64 for the factorisations: the matrices are small — K×K Gram matrices and
a few skinny products with Z — so float64 costs little and keeps the objective exact) on
`device`; results come back as float32 on the CPU.
"""

from __future__ import annotations

import abc
import math
from typing import Any, ClassVar

import torch

from coxlmm.errors import CoxlmmError

COMPUTE_DTYPE = torch.float64


def check_n_concepts(n_concepts: Any) -> int:
    """K must be a positive integer."""
    if isinstance(n_concepts, bool) or not isinstance(n_concepts, int) or n_concepts < 1:
        raise CoxlmmError(
            f"n_concepts must be a positive integer (the number K of concepts), got {n_concepts!r}. "
            "Set e.g. `method.n_concepts=20`."
        )
    return n_concepts


def resolve_device(device: str) -> torch.device:
    """`device` as a torch.device; CoxlmmError when it does not exist on this machine."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise CoxlmmError(
            f"device={device!r} is not a torch device. Use 'cpu', 'cuda' or 'cuda:N'."
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CoxlmmError(
            f"device={device!r} was requested but CUDA is not available on this machine. "
            "Use `device=cpu`."
        )
    if dev.type not in ("cpu", "cuda"):
        raise CoxlmmError(
            f"device={device!r} is not supported: dictionaries compute in float64, which needs "
            "'cpu' or 'cuda'."
        )
    return dev


def check_features(Z: Any, n_concepts: int | None = None, *, what: str = "Z") -> torch.Tensor:
    """Validate a feature matrix and return it as a CPU tensor of shape (M, B), float64 if it
    came as float64, float32 otherwise.

    Raises CoxlmmError when Z is not 2-D, is empty, holds NaN/inf, or (when `n_concepts` is
    given) has fewer rows than the K concepts asked for.
    """
    if not isinstance(Z, torch.Tensor):
        try:
            Z = torch.as_tensor(Z)
        except (TypeError, ValueError, RuntimeError):
            raise CoxlmmError(
                f"{what} must be a 2-D array of features (M samples × B dimensions), "
                f"got an object of type {type(Z).__name__}."
            ) from None
    if Z.ndim != 2:
        raise CoxlmmError(
            f"{what} must be a 2-D tensor of features (M samples × B dimensions), got shape "
            f"{tuple(Z.shape)}."
        )
    M, B = Z.shape
    if M == 0 or B == 0:
        raise CoxlmmError(
            f"{what} is empty (shape {tuple(Z.shape)}): no samples were selected, or the "
            "features have no dimensions. Check the token and data split."
        )
    if Z.is_complex():
        raise CoxlmmError(f"{what} must hold real numbers, got dtype {Z.dtype}.")
    Z = Z.detach().to("cpu", torch.float64 if Z.dtype == torch.float64 else torch.float32)
    bad_rows = (~torch.isfinite(Z)).any(dim=1)
    n_bad = int(bad_rows.sum())
    if n_bad:
        first = int(bad_rows.nonzero()[0, 0])
        raise CoxlmmError(
            f"{what} contains non-finite values (NaN or inf) in {n_bad} of its {M} rows "
            f"(first bad row: {first}). Dictionaries need finite features; drop or recompute "
            "those samples (non-finite hidden states usually mean a float16 overflow in the model)."
        )
    if n_concepts is not None and n_concepts > M:
        raise CoxlmmError(
            f"n_concepts={n_concepts} is larger than the number of samples M={M}: a dictionary "
            f"of K concepts needs at least K samples. Use n_concepts <= {M}, or select more "
            "samples (more images, or a more frequent token)."
        )
    return Z


class Dictionary(abc.ABC):
    """A concept dictionary: `fit(Z)` learns U (K, B); `encode(Z)` gives activations V (M, K)."""

    nonnegative: ClassVar[bool]  # True when every activation V is promised >= 0
    compute_dtype: ClassVar[torch.dtype] = COMPUTE_DTYPE  # dtype of Z inside _fit / _encode
    _state_names: ClassVar[tuple[str, ...]] = ("U",)  # tensors that define a fitted dictionary
    _fitted_names: ClassVar[tuple[str, ...]] = ()  # JSON scalars learnt by fit (e.g. alpha_effective_)

    def __init__(self, n_concepts: int, seed: int = 0, device: str = "cpu", name: str | None = None,
                 display_name: str | None = None) -> None:
        self.n_concepts = check_n_concepts(n_concepts)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise CoxlmmError(f"seed must be an integer, got {seed!r}.")
        self.seed = seed
        self.device = str(device)
        # The config file's stem and table label; a class built by hand is named after itself.
        self.name = str(name) if name else type(self).__name__.lower()
        self.display_name = str(display_name) if display_name else self.name
        self.U: torch.Tensor | None = None  # (K, B) float32 CPU, set by fit / io.load_dictionary
        self.V_train: torch.Tensor | None = None  # (M, K) activations of the fitted Z

    # --- to implement -------------------------------------------------------------------------
    @abc.abstractmethod
    def _fit(self, Z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Z (M, B) in compute_dtype on device -> (U (K, B), V_train (M, K)); may set extra state."""

    @abc.abstractmethod
    def _encode(self, Z: torch.Tensor) -> torch.Tensor:
        """Z (M, B) in compute_dtype on device -> V (M, K)."""

    @abc.abstractmethod
    def params(self) -> dict[str, Any]:
        """Method parameters (besides K, seed, device, names), JSON-serialisable: the keyword
        arguments that rebuild the same unfitted dictionary."""

    def _decode(self, V: torch.Tensor) -> torch.Tensor:
        """V (M, K) float64 CPU -> Z_hat (M, B). Default: V U."""
        return V @ self.U.to(COMPUTE_DTYPE)

    # --- public API ---------------------------------------------------------------------------
    def fit(self, Z: torch.Tensor) -> "Dictionary":
        """Learn U from Z (M, B); sets `U` (K, B) and `V_train` (M, K). Returns self."""
        Z = check_features(Z, self.n_concepts)
        dev = resolve_device(self.device)
        U, V = self._fit(Z.to(dev, self.compute_dtype))
        self.U = U.detach().to("cpu", torch.float32).contiguous()
        self.V_train = V.detach().to("cpu", torch.float32).contiguous()
        return self

    def fit_stream(self, rows, block_rows: int | None = None) -> "Dictionary":
        """Learn U from a `Rows` source (`coxlmm.extraction.reader`: a feature-store entry's
        shards, `ShardRows(store, layer)`, or a tensor) read in blocks, never holding Z whole:
        peak memory is bounded by a block (`block_rows` rows, default min(4096, M), or the
        method's own `batch_size` / `shuffle_rows`), not by M. Sets `U`; `V_train` stays None (encode what you need).
        Deterministic for a seed: an interrupted streamed fit rerun gives the same dictionary."""
        from coxlmm.extraction.reader import check_batch_size, rows_of

        rows = rows_of(rows)
        block_rows = check_batch_size(min(4096, rows.n_rows) if block_rows is None else block_rows,
                                      rows.n_rows, "block_rows")
        if self.n_concepts > rows.n_rows:
            raise CoxlmmError(
                f"n_concepts={self.n_concepts} is larger than the number of samples M={rows.n_rows}: "
                f"a dictionary of K concepts needs at least K samples. Use n_concepts <= {rows.n_rows}."
            )
        U = self._fit_stream(rows, block_rows)
        rows.check()
        self.U = U.detach().to("cpu", torch.float32).contiguous()
        self.V_train = None
        return self

    def _fit_stream(self, rows, block_rows: int = 4096) -> torch.Tensor:
        """U (K, B) learnt from a `Rows` source in blocks (see `fit_stream`)."""
        raise CoxlmmError(f"method {self.name!r} cannot fit from a stream of batches; use fit(Z).")

    def encode(self, Z: torch.Tensor) -> torch.Tensor:
        """Activations V (M, K) float32 CPU of features Z (M, B) with U fixed."""
        U = self._fitted_U()
        Z = check_features(Z)
        if Z.shape[1] != U.shape[1]:
            raise CoxlmmError(
                f"Z has {Z.shape[1]} dimensions per row but the dictionary was fit on features "
                f"with B={U.shape[1]}: encode features from the same model and layer."
            )
        V = self._encode(Z.to(resolve_device(self.device), self.compute_dtype))
        return V.detach().to("cpu", torch.float32)

    def decode(self, V: torch.Tensor) -> torch.Tensor:
        """Reconstruction Z_hat (M, B) float32 CPU from activations V (M, K)."""
        U = self._fitted_U()
        V = torch.as_tensor(V)
        if V.ndim != 2 or V.shape[1] != U.shape[0]:
            raise CoxlmmError(
                f"V must have shape (M, K={U.shape[0]}) to decode, got {tuple(V.shape)}."
            )
        return self._decode(V.detach().to("cpu", COMPUTE_DTYPE)).to(torch.float32)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The tensors that define the fitted dictionary (for safetensors): U, plus e.g. mean."""
        self._fitted_U()
        return {n: getattr(self, n).detach().to("cpu", torch.float32).contiguous()
                for n in self._state_names}

    def config(self) -> dict[str, Any]:
        """`_target_`, names, K, seed, device, method params and what the fit learnt besides
        tensors (`fitted`); JSON-serialisable. `concepts.io.load_dictionary` rebuilds from it."""
        cls = type(self)
        return {
            "_target_": f"{cls.__module__}.{cls.__qualname__}",
            "name": self.name,
            "display_name": self.display_name,
            "n_concepts": self.n_concepts,
            "seed": self.seed,
            "device": self.device,
            "params": self.params(),
            "fitted": {n: getattr(self, n, None) for n in self._fitted_names},
        }

    def restore(self, tensors: dict[str, torch.Tensor], fitted: dict[str, Any]) -> "Dictionary":
        """Set the state of a fitted dictionary (inverse of `state_tensors` and `config()["fitted"]`).
        `V_train` is not restored: encode the training features again if needed."""
        missing = [n for n in self._state_names if n not in tensors]
        missing += [n for n in self._fitted_names if fitted.get(n) is None]
        if missing:
            raise CoxlmmError(
                f"the saved {self.name!r} dictionary lacks {missing}; a {type(self).__name__} needs "
                f"tensors {list(self._state_names)} and fitted values {list(self._fitted_names)}. "
                "It was probably written by an older coxlmm: fit it again."
            )
        for n in self._state_names:
            setattr(self, n, tensors[n].detach().to("cpu", torch.float32).clone())
        for n in self._fitted_names:
            setattr(self, n, fitted[n])
        if self.U.ndim != 2 or self.U.shape[0] != self.n_concepts:
            raise CoxlmmError(
                f"saved U has shape {tuple(self.U.shape)}, expected (K={self.n_concepts}, B)."
            )
        return self

    def _fitted_U(self) -> torch.Tensor:
        if self.U is None:
            raise CoxlmmError(f"this {self.name!r} dictionary is not fitted yet: call fit(Z) first.")
        return self.U

    def __repr__(self) -> str:
        state = "fitted" if self.U is not None else "unfitted"
        return (f"{type(self).__name__}(name={self.name!r}, n_concepts={self.n_concepts}, "
                f"seed={self.seed}, {state})")


def stream_blocks(rows, size: int, dtype: torch.dtype = COMPUTE_DTYPE, device: Any = "cpu"):
    """One pass over a `Rows` source: blocks (≤ size, B) in `dtype` on `device`, each checked
    finite; the source is checked unchanged first (a feature-store entry rewritten mid-fit)."""
    rows.check()
    seen = 0
    for z in rows.blocks(size):
        bad = (~torch.isfinite(z)).any(dim=1)
        if bool(bad.any()):
            raise CoxlmmError(
                f"Z contains non-finite values (NaN or inf) in row {seen + int(bad.nonzero()[0, 0])}. "
                "Dictionaries need finite features; drop or recompute those samples."
            )
        seen += len(z)
        yield z.to(device, dtype)


def top_eigh(S: torch.Tensor, k: int, max_iter: int = 100, tol: float = 1e-12
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest eigenpairs of a symmetric positive semi-definite S (n, n): (values (k,)
    descending, vectors (n, k)).

    Block power iteration with Rayleigh–Ritz on 2k vectors from a fixed start (deterministic,
    independent of any seed), stopped when every residual ‖S v − λ v‖ is below tol · λ_max: for
    20 pairs of a 2000 × 2000 Gram matrix about 5× faster than a full eigen-decomposition, and as
    accurate. Its speed depends on the gap between λ_k and λ_2k; when that gap is too small to
    converge in `max_iter` steps (or S is small), the full `torch.linalg.eigh` answers instead.
    """
    n = S.shape[0]
    k = min(k, n)
    p = min(2 * k, n)
    if n > 4 * p:
        gen = torch.Generator().manual_seed(0)
        Q = torch.linalg.qr(S @ torch.randn(n, p, generator=gen, dtype=S.dtype).to(S.device))[0]
        for it in range(1, max_iter + 1):
            SQ = S @ Q
            if it % 5 == 0:  # Rayleigh–Ritz: the best k pairs in span(Q), and their residuals
                w, E = torch.linalg.eigh(Q.T @ SQ)
                w, E = w.flip(0)[:k], E.flip(1)[:, :k]
                v = Q @ E
                residual = (SQ @ E - v * w).norm(dim=0)
                if float(residual.max()) <= tol * max(float(w[0]), 1e-300):
                    return w, v
            Q = torch.linalg.qr(SQ)[0]
    w, v = torch.linalg.eigh(S)
    return w.flip(0)[:k], v.flip(1)[:, :k]


def flip_signs(L: torch.Tensor) -> torch.Tensor:
    """±1 per column of L (M, r) making the entry of largest magnitude positive (scikit-learn's
    `svd_flip` convention; ties go to the first such entry, as numpy's argmax), so signs do not
    depend on the LAPACK build."""
    sign = torch.sign(L.gather(0, L.abs().argmax(0, keepdim=True))).squeeze(0)
    sign[sign == 0] = 1
    return sign


def svd_top(Z: torch.Tensor, K: int, signs: str = "left"
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top singular triplets of Z (M, B): (L (M, r), S (r,), R (r, B)) with Z ≈ L diag(S) R.

    r <= K: components whose singular value is zero (to 1e-10 relative; beyond the rank of Z)
    are dropped, so R always has orthonormal rows. Computed from the top eigenpairs of the
    smaller Gram matrix (Z Zᵀ or Zᵀ Z) in float64: several times faster than a full SVD and
    accurate for the leading components, which is all initialisation and PCA need. Signs:
    `signs="left"` makes the largest entry of each column of L positive (scikit-learn's
    `svd_flip(u_based_decision=True)`, used by DictionaryLearning's init); `signs="right"` that
    of each row of R (`u_based_decision=False`, scikit-learn's PCA since 1.5).
    """
    Z = Z.to(COMPUTE_DTYPE)
    M, B = Z.shape
    rows_side = M <= B
    evals, evecs = top_eigh(Z @ Z.T if rows_side else Z.T @ Z, K)
    S = evals.clamp_min(0).sqrt()
    r = int((S > 1e-10 * S[0]).sum()) if len(S) and float(S[0]) > 0 else 0
    S, evecs = S[:r], evecs[:, :r]
    if rows_side:
        L, R = evecs, (Z.T @ evecs / S).T
    else:
        L, R = Z @ evecs / S, evecs.T
    sign = flip_signs(L) if signs == "left" else flip_signs(R.T)
    return L * sign, S, R * sign[:, None]


def effective_alpha(alpha: float, alpha_scale: str, Z: torch.Tensor) -> float:
    """The l1 weight actually used: `alpha` itself (`alpha_scale="absolute"`, the reference's λ),
    or alpha × the median row norm ‖z_m‖ of the training Z (`"relative"`), so that one value
    means the same sparsity on features of any scale (‖z‖ ≈ 637 on DePALM-mini, ≈ 0.3 elsewhere)."""
    if alpha_scale == "absolute":
        return float(alpha)
    return float(alpha) * float(Z.norm(dim=1).median())


def check_number(method: str, param: str, value: Any, *, minimum: float = 0.0,
                 integer: bool = False, strict: bool = False) -> Any:
    """A method parameter that must be a finite number >= minimum (> minimum when strict)."""
    kind = int if integer else (int, float)
    ok = isinstance(value, kind) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > minimum if strict else value >= minimum)
    if not ok:
        what = "an integer" if integer else "a number"
        bound = f"> {minimum}" if strict else f">= {minimum}"
        raise CoxlmmError(
            f"{method}: parameter {param}={value!r} is invalid; it must be {what} {bound}."
        )
    return value


def check_choice(method: str, param: str, value: Any, choices: tuple[str, ...]) -> str:
    """A method parameter that must be one of `choices`."""
    if value not in choices:
        raise CoxlmmError(
            f"{method}: parameter {param}={value!r} is invalid; accepted values: "
            f"{', '.join(choices)}."
        )
    return value
