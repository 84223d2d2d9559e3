"""Semi-NMF against scikit-learn (the reference code's solver), and its exact lasso."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from scipy.optimize import nnls

from coxlmm.concepts.lasso import lasso_objective, nonneg_lasso, nonneg_quadratic
from coxlmm.concepts.semi_nmf import SemiNMF


def sklearn_semi_nmf(Z: torch.Tensor, K: int) -> tuple[float, np.ndarray, np.ndarray]:
    """The paper's code: DictionaryLearning(positive_code=True, cd, lasso_cd, max_iter=5000)."""
    from sklearn.decomposition import DictionaryLearning
    from threadpoolctl import threadpool_limits

    ref = DictionaryLearning(n_components=K, alpha=1.0, positive_code=True, fit_algorithm="cd",
                             transform_algorithm="lasso_cd", max_iter=5000, tol=1e-8,
                             random_state=0)
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore")  # its inner lasso warns about convergence
        V = ref.fit_transform(Z.double().numpy())
    U = ref.components_
    return lasso_objective(Z, torch.from_numpy(V), torch.from_numpy(U), 1.0), V, U


def check_reaches_sklearn(Z: torch.Tensor, K: int) -> float:
    f_ref, _, _ = sklearn_semi_nmf(Z, K)
    d = SemiNMF(K).fit(Z)
    f = lasso_objective(Z, d.V_train, d.U, 1.0)
    print(f"semi_nmf objective {f:.6f} vs sklearn {f_ref:.6f} (ratio {f / f_ref:.8f})")
    assert f <= 1.001 * f_ref
    return f / f_ref


def test_reaches_sklearn_objective_small(make_features):
    check_reaches_sklearn(make_features(60, 16, n_directions=5), K=3)


def test_reaches_sklearn_objective_200x64(make_features):
    check_reaches_sklearn(make_features(200, 64, n_directions=8, seed=1), K=5)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 2, 3])
def test_reaches_sklearn_objective_200x64_more_seeds(seed, make_features):
    check_reaches_sklearn(make_features(200, 64, n_directions=8, seed=seed), K=5)


def test_constraints_and_monotone_objective(Z):
    d = SemiNMF(5).fit(Z)
    assert (d.U.norm(dim=1) <= 1 + 1e-6).all()
    assert (d.V_train >= 0).all()
    f = lasso_objective(Z, d.V_train, d.U, 1.0)
    # The final V-step can only improve on the last iterate, which beats the first.
    assert f <= min(d.objective_) * (1 + 1e-7) < d.objective_[0]  # 1e-7: U, V are stored in float32


def test_larger_alpha_gives_sparser_codes(Z):
    l0 = [float((SemiNMF(5, alpha=a).fit(Z).V_train > 0).sum()) for a in (0.1, 10.0)]
    assert l0[1] < l0[0]


def test_random_init_depends_on_seed(Z):
    a = SemiNMF(4, init="random", seed=0).fit(Z).U
    b = SemiNMF(4, init="random", seed=1).fit(Z).U
    assert not torch.equal(a, b)


def test_more_concepts_than_dimensions(make_features):
    """K > B: the Gram matrix U Uᵀ is singular; the solver must still return a valid answer."""
    Z = make_features(30, 4, n_directions=3)
    d = SemiNMF(6).fit(Z)
    assert torch.isfinite(d.U).all() and (d.V_train >= 0).all()
    assert lasso_objective(Z, d.V_train, d.U, 1.0) < 0.5 * float(Z.double().pow(2).sum())


def test_nonneg_quadratic_matches_scipy_nnls():
    g = torch.Generator().manual_seed(0)
    K = 7
    U = torch.randn(K, 12, generator=g, dtype=torch.float64) + 2.0  # correlated atoms
    U /= U.norm(dim=1, keepdim=True)
    Z = torch.rand(50, K, generator=g, dtype=torch.float64) @ U + 0.2 * torch.randn(50, 12, generator=g, dtype=torch.float64)
    V = nonneg_lasso(Z, U, 0.3)
    # Reference: min ½‖z − vU‖² + 0.3 Σv over v >= 0 is NNLS on the system with z shifted
    # by the l1 term: ½ vᵀGv − (c − α)ᵀv = ½‖L ᵀv − L⁻¹(c − α)‖² + const, G = L Lᵀ.
    G = (U @ U.T).numpy()
    L = np.linalg.cholesky(G)
    C = (Z @ U.T).numpy() - 0.3
    ref = np.stack([nnls(L.T, np.linalg.solve(L, c))[0] for c in C])
    np.testing.assert_allclose(V.numpy(), ref, atol=1e-8)


def test_nonneg_quadratic_kkt_and_warm_start():
    g = torch.Generator().manual_seed(1)
    A = torch.randn(6, 6, generator=g, dtype=torch.float64)
    G = A @ A.T + 0.1 * torch.eye(6, dtype=torch.float64)
    C = torch.randn(40, 6, generator=g, dtype=torch.float64)
    V = nonneg_quadratic(G, C)
    grad = V @ G - C
    assert (V >= 0).all()
    assert (grad[V > 0].abs() < 1e-9).all() and (grad[V == 0] > -1e-9).all()
    warm = nonneg_quadratic(G, C, V0=torch.rand(40, 6, generator=g, dtype=torch.float64))
    torch.testing.assert_close(warm, V)


def test_cuda_request_without_cuda_is_explained(Z):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    from coxlmm.errors import CoxlmmError

    with pytest.raises(CoxlmmError, match="CUDA is not available"):
        SemiNMF(3, device="cuda").fit(Z)


# --- alpha_scale (issue 9, item 9) -------------------------------------------------------------

def test_absolute_alpha_is_the_given_value(Z):
    assert SemiNMF(3, alpha=2.5).fit(Z).alpha_effective_ == 2.5


@pytest.mark.parametrize("method", ["semi_nmf", "random_dict"])
def test_relative_alpha_scales_with_the_features(method, Z, Z_test, tmp_path):
    from coxlmm.concepts import build_dictionary, load_dictionary, save_dictionary

    d = build_dictionary(method, n_concepts=3, alpha=0.05, alpha_scale="relative").fit(Z)
    expected = 0.05 * float(Z.double().norm(dim=1).median())
    assert d.alpha_effective_ == pytest.approx(expected, rel=1e-6)
    assert d.config()["fitted"]["alpha_effective_"] == d.alpha_effective_
    loaded = load_dictionary(save_dictionary(d, tmp_path / "d.safetensors"))
    assert loaded.alpha_effective_ == d.alpha_effective_
    assert torch.equal(loaded.encode(Z_test), d.encode(Z_test))


def test_relative_alpha_makes_semi_nmf_scale_equivariant(Z):
    """On 1000 × Z the same relative alpha gives the same atoms and 1000 × the codes; an absolute
    alpha would mean a 1000 times weaker penalty."""
    a = SemiNMF(3, alpha=0.05, alpha_scale="relative").fit(Z)
    b = SemiNMF(3, alpha=0.05, alpha_scale="relative").fit(1000 * Z)
    assert b.alpha_effective_ == pytest.approx(1000 * a.alpha_effective_, rel=1e-5)
    torch.testing.assert_close(b.U, a.U, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(b.V_train, 1000 * a.V_train, atol=1.0, rtol=1e-3)
    assert (a.V_train > 0).sum() < a.V_train.numel()  # the penalty does something on Z
