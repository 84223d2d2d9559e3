"""Every method in conf/method/ against the common interface, built through the one factory.

The list of methods is the list of files: a new conf/method/<name>.yaml is tested here without
touching this file. Methods are composed with Hydra (`coxlmm.concepts.factory.compose_method`,
which supplies the top-level `device` and `trainer.*` keys that method files interpolate).
"""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from coxlmm.concepts import Dictionary, load_dictionary, method_names, save_dictionary
from coxlmm.concepts.factory import compose_method
from coxlmm.concepts.lasso import lasso_objective

METHODS = method_names()
K = 4
# NMF refuses signed features unless asked to shift them (tested in test_dictionary_errors.py).
EXTRA = {"nmf": {"shift": "min"}}


def fast(name: str) -> dict:
    """Small overrides that keep any method quick on a tiny Z: K, and fewer epochs for methods
    trained by epochs (the SAEs), whatever their file is called."""
    keys = compose_method(name)
    kw = {"n_concepts": K, **EXTRA.get(name, {})}
    if "max_epochs" in keys:
        kw.update(max_epochs=30, batch_size=32)
    if "k" in keys:
        kw["k"] = 2
    return kw


def make(name: str, seed: int = 0, **kw) -> Dictionary:
    return instantiate(compose_method(name, **{**fast(name), **kw}))(seed=seed)


def test_the_methods_are_the_config_files():
    assert set(METHODS) >= {"semi_nmf", "nmf", "nmf_shifted", "kmeans", "pca", "simple", "random_dict",
                            "topk_sae", "matryoshka_sae"}


@pytest.mark.parametrize("name", METHODS)
def test_config_file_follows_the_factory_contract(name):
    cfg = compose_method(name)
    assert cfg._target_ and cfg._partial_ is True
    assert cfg.name == name, "`name` must be the file's stem"
    assert isinstance(cfg.display_name, str) and cfg.display_name
    assert isinstance(cfg.n_concepts, int) and "device" not in cfg  # given at instantiation, like the seed
    make = instantiate(cfg)
    assert callable(make) and not isinstance(make, Dictionary)
    a, b = make(seed=5), make(seed=6)
    assert isinstance(a, Dictionary) and a is not b and a.U is None
    assert (a.name, a.display_name, a.seed, b.seed) == (name, cfg.display_name, 5, 6)


@pytest.mark.parametrize("name", METHODS)
def test_method_builds_from_the_application_config(name):
    """The same file composed into the real experiment config (its `device` and `trainer`)."""
    from hydra import compose, initialize_config_dir

    from coxlmm.config import register_configs
    from coxlmm.paths import CONF_DIR

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"method={name}", "device=cpu"])
    d = instantiate(cfg.method)(seed=cfg.seed)
    assert isinstance(d, Dictionary) and d.name == name


@pytest.mark.parametrize("name", METHODS)
def test_shapes_and_dtypes(name, Z, Z_test):
    d = make(name).fit(Z)
    assert d.U.shape == (K, Z.shape[1]) and d.U.dtype == torch.float32 and d.U.device.type == "cpu"
    assert d.V_train.shape == (len(Z), K) and d.V_train.dtype == torch.float32
    V = d.encode(Z_test)
    assert V.shape == (len(Z_test), K) and V.dtype == torch.float32
    Z_hat = d.decode(V)
    assert Z_hat.shape == Z_test.shape and Z_hat.dtype == torch.float32
    assert torch.isfinite(d.U).all() and torch.isfinite(V).all()


@pytest.mark.parametrize("name", METHODS)
def test_nonnegative_when_promised(name, Z, Z_test):
    d = make(name).fit(Z)
    if not d.nonnegative:
        pytest.skip(f"{name} makes no non-negativity promise")
    assert (d.V_train >= 0).all()
    assert (d.encode(Z_test) >= 0).all()
    assert (d.encode(-Z_test) >= 0).all()  # even far from the training data


@pytest.mark.parametrize("name", METHODS)
def test_deterministic_for_a_seed(name, Z):
    a, b = make(name, seed=3).fit(Z), make(name, seed=3).fit(Z)
    assert torch.equal(a.U, b.U)
    assert torch.equal(a.V_train, b.V_train)


@pytest.mark.parametrize("name", ["kmeans", "random_dict", "topk_sae", "matryoshka_sae"])
def test_seed_changes_randomised_methods(name, Z):
    assert not torch.equal(make(name, seed=0).fit(Z).U, make(name, seed=1).fit(Z).U)


@pytest.mark.parametrize("name", METHODS)
def test_encode_decode_round_trip(name, Z, Z_test):
    d = make(name).fit(Z)
    # The training activations are the encoding of the training features.
    torch.testing.assert_close(d.V_train, d.encode(Z), atol=1e-4, rtol=1e-4)
    # Reconstructions beat the zero reconstruction; the factorisations by a wide margin.
    bound = 0.1 if name in ("semi_nmf", "nmf", "nmf_shifted", "pca", "topk_sae", "matryoshka_sae") else 1.0
    for X in (Z, Z_test):
        err = (X - d.decode(d.encode(X))).pow(2).sum() / X.pow(2).sum()
        assert err < bound, f"{name}: relative reconstruction error {err:.3f} >= {bound}"


@pytest.mark.parametrize("name", METHODS)
def test_saved_dictionary_loads_and_encodes_the_same(name, Z, Z_test, tmp_path):
    d = make(name).fit(Z)
    path = save_dictionary(d, tmp_path / "dictionary.safetensors")
    loaded = load_dictionary(path)
    assert type(loaded) is type(d) and loaded.config() == d.config()
    assert loaded.config()["_target_"] == type(d).__module__ + "." + type(d).__qualname__
    assert torch.equal(loaded.U, d.U)
    assert torch.equal(loaded.encode(Z_test), d.encode(Z_test))
    torch.testing.assert_close(loaded.decode(d.V_train), d.decode(d.V_train))


def test_load_dictionary_explains_a_file_without_target(tmp_path):
    import json

    from safetensors.torch import save_file

    from coxlmm.errors import CoxlmmError

    save_file({"U": torch.eye(2)}, str(tmp_path / "old.safetensors"), metadata={"config": json.dumps({"name": "pca"})})
    with pytest.raises(CoxlmmError, match="no `_target_`"):
        load_dictionary(tmp_path / "old.safetensors")
    with pytest.raises(CoxlmmError, match="no saved dictionary"):
        load_dictionary(tmp_path / "missing.safetensors")


@pytest.mark.parametrize("name", ["semi_nmf", "nmf_shifted", "pca", "random_dict", "topk_sae", "matryoshka_sae"])
def test_unit_norm_atoms(name, Z):
    norms = make(name).fit(Z).U.norm(dim=1)
    assert (norms <= 1 + 1e-5).all()
    if name != "semi_nmf":  # Semi-NMF only promises <= 1
        torch.testing.assert_close(norms, torch.ones(K))


def test_one_class_two_names(Z):
    """nmf and nmf_shifted are one class; the name and display name come from the file."""
    a, b = make("nmf"), make("nmf_shifted")
    assert type(a) is type(b) and (a.name, b.name) == ("nmf", "nmf_shifted")
    assert b.shift == "min" and a.display_name != b.display_name
    assert b.fit(Z).config()["name"] == "nmf_shifted"


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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", METHODS)
def test_cuda_fit_matches_cpu(name, Z, Z_test):
    cpu = make(name).fit(Z)
    gpu = instantiate(compose_method(name, device="cuda", trainer={"accelerator": "gpu"}, **fast(name)))(seed=0).fit(Z)
    assert gpu.U.device.type == "cpu" and gpu.encode(Z_test).device.type == "cpu"
    if name == "semi_nmf":  # non-convex: compare what is optimised, not the iterates
        f_cpu = lasso_objective(Z, cpu.V_train, cpu.U, 1.0)
        assert lasso_objective(Z, gpu.V_train, gpu.U, 1.0) <= f_cpu * (1 + 1e-6)
    elif name in ("topk_sae", "matryoshka_sae"):  # trained on the GPU: same recipe, other round-off
        err = lambda d: float((Z - d.decode(d.V_train)).pow(2).sum() / Z.pow(2).sum())
        assert err(gpu) <= 1.5 * err(cpu) + 1e-3
    else:
        torch.testing.assert_close(gpu.U, cpu.U, atol=1e-4, rtol=1e-4)
