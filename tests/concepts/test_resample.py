"""`fit.resample`: each seed fits on its own bootstrap resample of the training rows, so the seeds of a
sweep are replicates of the fit for every method, the deterministic ones (Semi-NMF's SVD start) included."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir

from coxlmm.config import register_configs
from coxlmm.paths import CONF_DIR
from coxlmm.pipeline import bootstrap_rows, fitter


def run_cfg(tmp_path, resample: bool):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=["method=semi_nmf", "method.n_concepts=4", f"fit.resample={resample}",
                                            f"paths.cache_dir={tmp_path}", "dictionary_cache=false"])


@pytest.fixture(scope="module")
def Z():
    g = torch.Generator().manual_seed(0)
    U = torch.randn(6, 16, generator=g)
    return torch.rand(300, 6, generator=g) @ U + 0.05 * torch.randn(300, 16, generator=g)


def test_resampled_seeds_give_different_semi_nmf_dictionaries(tmp_path, Z):
    fit = fitter(run_cfg(tmp_path, resample=True))
    U0, U1 = fit(Z, 0).U, fit(Z, 1).U
    assert not torch.allclose(U0, U1, atol=1e-4)
    assert torch.equal(fit(Z, 0).U, U0)  # the same seed: the same resample and the same fit


def test_without_resample_semi_nmf_is_the_same_for_every_seed(tmp_path, Z):
    fit = fitter(run_cfg(tmp_path, resample=False))
    assert torch.allclose(fit(Z, 0).U, fit(Z, 1).U, atol=1e-6)  # the SVD start: the seed changes nothing


def test_bootstrap_rows_are_seeded_draws_with_replacement():
    a, b = bootstrap_rows(1000, 0), bootstrap_rows(1000, 1)
    assert torch.equal(a, bootstrap_rows(1000, 0)) and not torch.equal(a, b)
    assert a.min() >= 0 and a.max() < 1000 and len(set(a.tolist())) < 1000  # some rows drawn twice
