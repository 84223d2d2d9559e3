"""The fit cache (concepts/cache.py): the same (Z, method config, seed) is fitted once, and what comes back
from the cache is the dictionary that was fitted (U, V_train, encode)."""

from __future__ import annotations

import torch
from omegaconf import OmegaConf

from coxlmm.concepts import build_dictionary
from coxlmm.concepts.cache import FitCache
from coxlmm.concepts.factory import compose_method


def cache_for(root, name: str = "semi_nmf", enabled: bool = True, **params) -> FitCache:
    node = OmegaConf.to_container(compose_method(name, **params), resolve=True)
    return FitCache(root, node, lambda seed: build_dictionary(name, seed=seed, **params), enabled=enabled)


def test_a_fit_is_made_once_and_comes_back_whole(tmp_path, Z):
    first = cache_for(tmp_path, n_concepts=4)
    fitted = first.fit(Z, seed=0)
    again = cache_for(tmp_path, n_concepts=4)  # another job: a new cache object on the same store
    loaded = again.fit(Z, seed=0)
    assert (first.fitted, first.loaded, again.fitted, again.loaded) == (1, 0, 0, 1)
    assert torch.equal(loaded.U, fitted.U) and torch.equal(loaded.V_train, fitted.V_train)
    assert torch.equal(loaded.encode(Z[:7]), fitted.encode(Z[:7]))
    assert type(loaded) is type(fitted) and loaded.seed == 0


def test_another_z_seed_or_config_is_another_fit(tmp_path, Z):
    cache = cache_for(tmp_path, n_concepts=4)
    cache.fit(Z, seed=0)
    moved = Z.clone()
    moved[3, 5] += 1e-3  # one value of Z: another content
    cache.fit(moved, seed=0)
    cache.fit(Z[torch.randperm(len(Z), generator=torch.Generator().manual_seed(0))], seed=0)  # resampled rows
    cache.fit(Z, seed=1)
    assert (cache.fitted, cache.loaded) == (4, 0)
    other_k = cache_for(tmp_path, n_concepts=5)
    other_k.fit(Z, seed=0)
    pca = cache_for(tmp_path, name="pca", n_concepts=4)
    pca.fit(Z, seed=0)
    assert (other_k.fitted, pca.fitted) == (1, 1)
    assert len(list(tmp_path.glob("*.V.safetensors"))) == 6


def test_an_entry_without_its_dictionary_file_is_not_taken_and_a_disabled_cache_writes_nothing(tmp_path, Z):
    cache = cache_for(tmp_path / "on", n_concepts=4)
    cache.fit(Z, seed=0)
    (dictionary,) = [p for p in (tmp_path / "on").glob("*.safetensors") if not p.name.endswith(".V.safetensors")]
    dictionary.unlink()  # as if the job died between its two files
    cache.fit(Z, seed=0)
    assert (cache.fitted, cache.loaded) == (2, 0)
    off = cache_for(tmp_path / "off", enabled=False, n_concepts=4)
    off.fit(Z, seed=0)
    off.fit(Z, seed=0)
    assert off.fitted == 2 and not (tmp_path / "off").exists()
