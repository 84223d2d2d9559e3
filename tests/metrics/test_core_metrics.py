"""Core metrics: overlap, reconstruction, sparsity, stability."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from coxlmm.concepts import build_dictionary
from coxlmm.errors import CoxlmmError
from coxlmm.metrics.base import EvalContext
from coxlmm.metrics.overlap import Overlap, overlap
from coxlmm.metrics.reconstruction import Reconstruction, explained_variance, relative_error
from coxlmm.metrics.sparsity import Sparsity, dead_concepts, sparsity_l0
from coxlmm.metrics.stability import Stability, matched_cosine

CONF = Path(__file__).resolve().parents[2] / "conf"


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny problems: a second torch thread only waits on a shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def blobs(M: int = 60, seed: int = 0) -> torch.Tensor:
    """Three well-separated clusters in R^6."""
    g = torch.Generator().manual_seed(seed)
    centres = 10 * torch.eye(6)[:3]
    return centres[torch.arange(M) % 3] + 0.1 * torch.randn(M, 6, generator=g)


def context(method: str, Z: torch.Tensor, K: int = 3, words=None, Z_test=None, seed: int = 0):
    d = build_dictionary(method, n_concepts=K, seed=seed).fit(Z)
    return EvalContext(
        dictionary=d,
        concepts=SimpleNamespace(words=words if words is not None else [[]] * K),
        Z_train=Z,
        V_train=d.V_train,
        Z_test=Z_test,
        V_test=d.encode(Z_test) if Z_test is not None else None,
        make_dictionary=lambda s: build_dictionary(method, n_concepts=K, seed=s),
        seed=seed,
    )


# --- overlap -----------------------------------------------------------------------------------

def test_overlap_hand_computed():
    # T1 = {a, b}, T2 = {b, c, d}, T3 = {} (no words: contributes 0), K = 3:
    #   Overlap(u1) = 1/2 (|T2 ∩ T1| / |T1| + |T3 ∩ T1| / |T1|) = 1/2 (1/2 + 0) = 1/4
    #   Overlap(u2) = 1/2 (|T1 ∩ T2| / |T2| + 0) = 1/2 · 1/3 = 1/6
    #   Overlap(u3) = 0
    #   Overlap(U)  = (1/4 + 1/6 + 0) / 3 = 5/36
    assert overlap([["a", "b"], ["b", "c", "d"], []]) == pytest.approx(5 / 36)


def test_overlap_extremes_and_duplicates():
    assert overlap([["x", "y"], ["x", "y"], ["y", "x"]]) == pytest.approx(1.0)
    assert overlap([["a"], ["b"], ["c"]]) == 0.0
    assert overlap([["a", "a", "b"], ["a"]]) == pytest.approx((1 / 2 + 1) / 2)  # sets, not lists
    assert overlap([["a"]]) == 0.0 and overlap([]) == 0.0


def test_overlap_metric_reads_the_concepts():
    ctx = context("pca", blobs(), words=[["a", "b"], ["b", "c", "d"], []])
    out = Overlap()(ctx)
    assert out == {"overlap": pytest.approx(5 / 36)} and type(out["overlap"]) is float


# --- reconstruction ----------------------------------------------------------------------------

def test_relative_error_and_explained_variance_by_hand():
    Z = torch.tensor([[1.0, 0.0], [3.0, 0.0]])
    Z_hat = torch.tensor([[1.0, 0.0], [2.0, 0.0]])
    assert relative_error(Z, Z_hat) == pytest.approx(1 / 10)  # ‖Z − Ẑ‖² = 1, ‖Z‖² = 10
    assert explained_variance(Z, Z_hat) == pytest.approx(1 - 1 / 2)  # ‖Z − mean‖² = 2
    assert relative_error(Z, Z) == 0.0 and explained_variance(Z, Z) == 1.0


def test_reconstruction_metric_train_and_test():
    Z = blobs(90)
    ctx = context("semi_nmf", Z[:60], K=3, Z_test=Z[60:])
    out = Reconstruction()(ctx)
    assert set(out) == {"recon_rel_error_train", "recon_rel_error_test",
                        "explained_variance", "explained_variance_test"}
    assert all(type(v) is float for v in out.values())
    assert 0 <= out["recon_rel_error_train"] < 0.05 and out["explained_variance"] > 0.95
    expected = relative_error(ctx.Z_train, ctx.V_train @ ctx.dictionary.U)
    assert out["recon_rel_error_train"] == pytest.approx(expected)


def test_reconstruction_without_test_split_and_pca_mean():
    ctx = context("pca", blobs(), K=2)
    out = Reconstruction()(ctx)
    assert "recon_rel_error_test" not in out
    # PCA with K = 2 reconstructs three clusters exactly up to noise (the mean is added back).
    assert out["explained_variance"] > 0.99


# --- sparsity ----------------------------------------------------------------------------------

def test_sparsity_by_hand():
    V = torch.tensor([[1.0, 0.0, 0.0], [2.0, 3.0, 0.0]])
    assert sparsity_l0(V) == pytest.approx(1.5)
    assert dead_concepts(V) == 1
    assert sparsity_l0(V, atol=1.5) == pytest.approx(1.0) and dead_concepts(V, atol=1.5) == 1
    out = Sparsity()(SimpleNamespace(V_train=V))
    assert out == {"sparsity_l0": 1.5, "dead_concepts": 1.0}


def test_sparsity_on_semi_nmf_codes():
    ctx = context("semi_nmf", blobs(), K=3)
    out = Sparsity()(ctx)
    assert 1.0 <= out["sparsity_l0"] <= 3.0 and out["dead_concepts"] == 0.0


# --- stability ---------------------------------------------------------------------------------

def test_matched_cosine_ignores_order_and_sign():
    g = torch.Generator().manual_seed(0)
    U = torch.randn(4, 10, generator=g)
    assert matched_cosine(U, -2 * U[[2, 0, 3, 1]]) == pytest.approx(1.0)
    E = torch.eye(4)
    assert matched_cosine(E[:2], E[2:]) == pytest.approx(0.0)
    assert matched_cosine(torch.zeros(2, 4), E[:2]) == 0.0


def test_stability_of_kmeans_on_separated_clusters():
    out = Stability()(context("kmeans", blobs(), K=3))
    assert out["stability"] == pytest.approx(1.0, abs=1e-3)


def test_stability_refits_with_the_next_seed():
    seeds = []
    ctx = context("random_dict", blobs(), K=3, seed=7)
    make = ctx.make_dictionary
    ctx.make_dictionary = lambda s: (seeds.append(s), make(s))[1]
    out = Stability()(ctx)
    assert seeds == [8]
    assert 0.0 <= out["stability"] < 0.99  # random directions of two seeds differ


def test_stability_on_a_subset_and_bad_input():
    ctx = context("semi_nmf", blobs(), K=3)
    assert Stability(fraction=0.5)(ctx)["stability"] > 0.9
    with pytest.raises(CoxlmmError, match="fraction=0"):
        Stability(fraction=0)
    ctx.make_dictionary = None
    with pytest.raises(CoxlmmError, match="needs ctx.make_dictionary"):
        Stability()(ctx)


# --- config ------------------------------------------------------------------------------------

def test_core_config_lists_working_metrics():
    cfg = OmegaConf.load(CONF / "metrics" / "core.yaml")
    metrics = {name: instantiate(node) for name, node in cfg.items()}
    assert set(metrics) == {"overlap", "recon", "sparsity", "stability"}
    Z = blobs(90)
    ctx = context("semi_nmf", Z[:60], K=3, words=[["a"], ["a", "b"], ["c"]], Z_test=Z[60:])
    results = {}
    for metric in metrics.values():
        results.update(metric(ctx))
    assert {"overlap", "recon_rel_error_train", "recon_rel_error_test", "explained_variance",
            "sparsity_l0", "dead_concepts", "stability"} <= set(results)
    assert all(type(v) is float for v in results.values())
