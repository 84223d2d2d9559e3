"""Core metrics: overlap, reconstruction, sparsity, stability."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra.utils import instantiate

from coxlmm.concepts import build_dictionary
from coxlmm.errors import CoxlmmError
from coxlmm.metrics.base import EvalInput, Services, Split
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


def context(method: str, Z: torch.Tensor, K: int = 3, words=None, Z_test=None, seed: int = 0, refit=None):
    d = build_dictionary(method, n_concepts=K, seed=seed).fit(Z)
    test = Split(Z_test, d.encode(Z_test), [], None) if Z_test is not None else None
    refit = refit or (lambda Z_, s: build_dictionary(method, n_concepts=K, seed=s).fit(Z_))
    return EvalInput(train=Split(Z, d.V_train, [], None), test=test, dictionary=d,
                     concepts=SimpleNamespace(words=words if words is not None else [[]] * K),
                     services=Services(lens=None, ground=None, refit=refit), token="t", layer=0, seed=seed)


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
    out = Overlap()(ctx).scores
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
    out = Reconstruction()(ctx).scores
    assert set(out) == {"recon_rel_error_train", "recon_rel_error_test",
                        "explained_variance", "explained_variance_test"}
    assert all(type(v) is float for v in out.values())
    assert 0 <= out["recon_rel_error_train"] < 0.05 and out["explained_variance"] > 0.95
    expected = relative_error(ctx.train.Z, ctx.train.V @ ctx.dictionary.U)
    assert out["recon_rel_error_train"] == pytest.approx(expected)


def test_reconstruction_without_test_split_and_pca_mean():
    ctx = context("pca", blobs(), K=2)
    out = Reconstruction()(ctx).scores
    assert "recon_rel_error_test" not in out
    # PCA with K = 2 reconstructs three clusters exactly up to noise (the mean is added back).
    assert out["explained_variance"] > 0.99


# --- sparsity ----------------------------------------------------------------------------------

def test_sparsity_by_hand():
    V = torch.tensor([[1.0, 0.0, 0.0], [2.0, 3.0, 0.0]])
    assert sparsity_l0(V) == pytest.approx(1.5)
    assert dead_concepts(V) == 1
    assert sparsity_l0(V, atol=1.5) == pytest.approx(1.0) and dead_concepts(V, atol=1.5) == 1
    out = Sparsity()(SimpleNamespace(train=Split(V, V, [], None), test=Split(V[:1], V[:1], [], None)))
    assert out.scores == {"sparsity_l0": 1.5, "dead_concepts": 1.0, "sparsity_l0_test": 1.0}


def test_sparsity_on_semi_nmf_codes():
    ctx = context("semi_nmf", blobs(), K=3)
    out = Sparsity()(ctx).scores
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
    res = Stability()(context("kmeans", blobs(), K=3))
    assert res.scores["stability"] == pytest.approx(1.0, abs=1e-3)
    matches = res.artifacts["stability_matches"]
    assert sorted(m["matched"] for m in matches) == [0, 1, 2] and all(m["matched_cos"] > 0.99 for m in matches)


def test_stability_refits_with_the_next_seed():
    seeds = []

    def refit(Z, s):
        seeds.append(s)
        return build_dictionary("random_dict", n_concepts=3, seed=s).fit(Z)

    out = Stability()(context("random_dict", blobs(), K=3, seed=7, refit=refit)).scores
    assert seeds == [8]
    assert 0.0 <= out["stability"] < 0.99  # random directions of two seeds differ


def test_stability_on_a_subset_and_bad_input():
    ctx = context("semi_nmf", blobs(), K=3)
    assert Stability(fraction=0.5)(ctx).scores["stability"] > 0.9
    with pytest.raises(CoxlmmError, match="fraction=0"):
        Stability(fraction=0)


# --- config ------------------------------------------------------------------------------------

def test_core_config_lists_working_metrics():
    from hydra import compose, initialize_config_dir

    from coxlmm.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["metrics=core"]).metrics  # the set, from conf/metric/ files
    metrics = {name: instantiate(node) for name, node in cfg.items()}
    assert set(metrics) == {"overlap", "recon", "sparsity", "stability"}
    Z = blobs(90)
    ctx = context("semi_nmf", Z[:60], K=3, words=[["a"], ["a", "b"], ["c"]], Z_test=Z[60:])
    results = {}
    for metric in metrics.values():
        results.update(metric(ctx).scores)
    assert {"overlap", "recon_rel_error_train", "recon_rel_error_test", "explained_variance",
            "sparsity_l0", "sparsity_l0_test", "dead_concepts", "stability"} <= set(results)
    assert all(type(v) is float for v in results.values())
