"""Every registered dictionary method against the common interface."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from coxlmm.concepts import Dictionary, available_methods, build_dictionary
from coxlmm.concepts.lasso import lasso_objective

METHODS = available_methods()
K = 4
# NMF refuses signed features unless asked to shift them; every other method takes them as they are.
EXTRA = {"nmf": {"shift": "min"}}
CONF = Path(__file__).resolve().parents[2] / "conf"


def make(method: str, seed: int = 0, **kw) -> Dictionary:
    return build_dictionary(method, n_concepts=K, seed=seed, **{**EXTRA.get(method, {}), **kw})


def test_all_methods_registered():
    assert set(METHODS) >= {"semi_nmf", "nmf", "kmeans", "pca", "simple", "random_dict"}


@pytest.mark.parametrize("method", METHODS)
def test_shapes_and_dtypes(method, Z, Z_test):
    d = make(method).fit(Z)
    assert d.name == method
    assert d.U.shape == (K, Z.shape[1]) and d.U.dtype == torch.float32 and d.U.device.type == "cpu"
    assert d.V_train.shape == (len(Z), K) and d.V_train.dtype == torch.float32
    V = d.encode(Z_test)
    assert V.shape == (len(Z_test), K) and V.dtype == torch.float32
    Z_hat = d.decode(V)
    assert Z_hat.shape == Z_test.shape and Z_hat.dtype == torch.float32
    assert torch.isfinite(d.U).all() and torch.isfinite(V).all()


@pytest.mark.parametrize("method", METHODS)
def test_nonnegative_when_promised(method, Z, Z_test):
    d = make(method).fit(Z)
    if not d.nonnegative:
        pytest.skip(f"{method} makes no non-negativity promise")
    assert (d.V_train >= 0).all()
    assert (d.encode(Z_test) >= 0).all()
    assert (d.encode(-Z_test) >= 0).all()  # even far from the training data


@pytest.mark.parametrize("method", METHODS)
def test_deterministic_for_a_seed(method, Z):
    a, b = make(method, seed=3).fit(Z), make(method, seed=3).fit(Z)
    assert torch.equal(a.U, b.U)
    assert torch.equal(a.V_train, b.V_train)


@pytest.mark.parametrize("method", ["kmeans", "random_dict"])
def test_seed_changes_randomised_methods(method, Z):
    assert not torch.equal(make(method, seed=0).fit(Z).U, make(method, seed=1).fit(Z).U)


@pytest.mark.parametrize("method", METHODS)
def test_encode_decode_round_trip(method, Z, Z_test):
    d = make(method).fit(Z)
    # The training activations are the encoding of the training features.
    torch.testing.assert_close(d.V_train, d.encode(Z), atol=1e-4, rtol=1e-4)
    # Reconstructions beat the zero reconstruction; the factorisations by a wide margin.
    bound = 0.1 if method in ("semi_nmf", "nmf", "pca") else 1.0
    for X in (Z, Z_test):
        err = (X - d.decode(d.encode(X))).pow(2).sum() / X.pow(2).sum()
        assert err < bound, f"{method}: relative reconstruction error {err:.3f} >= {bound}"


@pytest.mark.parametrize("method", METHODS)
def test_state_round_trip(method, Z, Z_test, tmp_path):
    d = make(method).fit(Z)
    save_file(d.state_tensors(), tmp_path / "dictionary.safetensors")
    (tmp_path / "dictionary.json").write_text(json.dumps(d.config()))
    tensors = load_file(tmp_path / "dictionary.safetensors")
    config = json.loads((tmp_path / "dictionary.json").read_text())
    for loaded in (Dictionary.from_state(tensors, config), type(d).from_state(tensors, config)):
        assert type(loaded) is type(d) and loaded.config() == d.config()
        assert torch.equal(loaded.U, d.U)
        torch.testing.assert_close(loaded.encode(Z_test), d.encode(Z_test))
        torch.testing.assert_close(loaded.decode(d.V_train), d.decode(d.V_train))


@pytest.mark.parametrize("method", ["semi_nmf", "nmf", "pca", "random_dict"])
def test_unit_norm_atoms(method, Z):
    norms = make(method).fit(Z).U.norm(dim=1)
    assert (norms <= 1 + 1e-5).all()
    if method != "semi_nmf":  # Semi-NMF only promises <= 1
        torch.testing.assert_close(norms, torch.ones(K))


def test_pca_directions_are_orthonormal_and_decode_adds_the_mean(Z):
    d = make("pca").fit(Z)
    torch.testing.assert_close(d.U @ d.U.T, torch.eye(K), atol=1e-5, rtol=0)
    torch.testing.assert_close(d.decode(torch.zeros(2, K)), d.mean.expand(2, -1))


def test_simple_takes_the_largest_norm_rows(Z):
    d = make("simple").fit(Z)
    top = Z.norm(dim=1).topk(K).indices
    assert torch.equal(d.U, Z[top])


def test_kmeans_activations_are_inverse_distances(Z):
    d = make("kmeans").fit(Z)
    expected = 1 / (1 + torch.cdist(Z.double(), d.U.double()))
    torch.testing.assert_close(d.V_train.double(), expected, atol=1e-5, rtol=1e-5)


def test_random_dict_relu_activation(Z):
    d = make("random_dict", activation="relu").fit(Z)
    torch.testing.assert_close(d.V_train, (Z @ d.U.T).clamp_min(0), atol=1e-4, rtol=1e-4)


def test_lasso_encoding_of_random_dict_is_optimal(Z):
    """Nudging the lasso codes in any coordinate never lowers the objective."""
    d = make("random_dict").fit(Z)
    V = d.V_train.double()
    f = lasso_objective(Z, V, d.U, 1.0)
    for k in range(K):
        for step in (1e-3, -1e-3):
            W = V.clone()
            W[:, k] = (W[:, k] + step).clamp_min(0)
            assert lasso_objective(Z, W, d.U, 1.0) >= f - 1e-6


@pytest.mark.parametrize("method", METHODS)
def test_hydra_config_builds_the_method(method, Z):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(CONF / "method" / f"{method}.yaml")
    cfg.n_concepts = K
    cfg.device = "cpu"  # `${device}` in the file refers to the main config's top-level key
    if method in EXTRA:
        cfg.update(EXTRA[method])
    d = instantiate(cfg, seed=5)
    assert isinstance(d, Dictionary) and d.name == method and d.seed == 5
    assert d.fit(Z).U.shape == (K, Z.shape[1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", METHODS)
def test_cuda_fit_matches_cpu(method, Z, Z_test):
    cpu, gpu = make(method).fit(Z), make(method, device="cuda").fit(Z)
    assert gpu.U.device.type == "cpu" and gpu.encode(Z_test).device.type == "cpu"
    if method == "semi_nmf":  # non-convex: compare what is optimised, not the iterates
        f_cpu = lasso_objective(Z, cpu.V_train, cpu.U, 1.0)
        assert lasso_objective(Z, gpu.V_train, gpu.U, 1.0) <= f_cpu * (1 + 1e-6)
    else:
        torch.testing.assert_close(gpu.U, cpu.U, atol=1e-4, rtol=1e-4)
