"""The sparse autoencoders: training lowers the loss, decoder rows stay unit norm, sparsity is k,
AuxK reaches dead latents, and the Gram-form loss equals the direct one."""

from __future__ import annotations

import pytest
import torch

from coxlmm.concepts import build_dictionary
from coxlmm.concepts.matryoshka_sae import MatryoshkaSAE, default_group_sizes
from coxlmm.concepts.sae import SAEModule
from coxlmm.concepts.topk_sae import TopKSAE
from coxlmm.metrics.planted import planted_features

SAES = ["topk_sae", "matryoshka_sae"]


@pytest.fixture(scope="module")
def planted():
    Z, A, D = planted_features(M=600, B=32, T=8, p_fire=0.15, offset=3.0, seed=0)
    return Z, A, D


@pytest.mark.parametrize("name", SAES)
def test_training_lowers_the_loss_and_keeps_decoder_rows_unit_norm(name, planted):
    Z, _, _ = planted
    d = build_dictionary(name, n_concepts=8, k=2, max_epochs=40, batch_size=64).fit(Z)
    losses = torch.tensor(d.losses_)
    assert len(losses) == 40 * 10  # 600 rows / 64 per batch = 10 steps per epoch
    first, last = losses[:10].mean(), losses[-10:].mean()  # the first and the last epoch
    # Matryoshka's loss averages its prefixes (the first is one latent of 8), so it falls less.
    factor = 0.5 if name == "topk_sae" else 0.95
    assert last < factor * first, f"{name}: loss {first:.3f} (first epoch) -> {last:.3f} (last)"
    torch.testing.assert_close(d.U.norm(dim=1), torch.ones(8), atol=1e-5, rtol=0)
    fvu = float((Z - d.decode(d.V_train)).pow(2).sum() / (Z - Z.mean(0)).pow(2).sum())
    assert fvu < 0.1, f"{name}: FVU {fvu:.3f} of the full model on planted features"


def test_topk_keeps_at_most_k_per_sample(planted):
    Z, _, _ = planted
    d = build_dictionary("topk_sae", n_concepts=8, k=3, max_epochs=10).fit(Z)
    assert int((d.encode(Z) > 0).sum(1).max()) <= 3


def test_matryoshka_averages_k_on_the_training_features(planted):
    Z, _, _ = planted
    d = build_dictionary("matryoshka_sae", n_concepts=8, k=2, max_epochs=20, batch_size=64).fit(Z)
    l0 = (d.encode(Z) > 0).sum(1).float()
    assert abs(float(l0.mean()) - 2.0) < 0.01
    assert float(l0.max()) > 2  # BatchTopK: a sample may use more than k


def test_default_matryoshka_groups_double():
    assert default_group_sizes(20) == [2, 3, 5, 10]
    assert default_group_sizes(4) == [1, 1, 2]
    assert sum(default_group_sizes(37)) == 37


@pytest.mark.parametrize("cls, kw", [(TopKSAE, {}), (MatryoshkaSAE, {"group_sizes": [1, 2, 5]})])
def test_gram_form_loss_equals_the_direct_loss(cls, kw):
    g = torch.Generator().manual_seed(0)
    x, b, U = (torch.randn(*s, generator=g, dtype=torch.float64) for s in ((7, 11), (11,), (8, 11)))
    c = torch.rand(7, 8, generator=g, dtype=torch.float64) * (torch.rand(7, 8, generator=g) < 0.5)
    sae = cls(8, k=2, **kw)
    r2, loss = sae.squared_errors((x - b).pow(2).sum(1), c, (x - b) @ U.T, U @ U.T)
    torch.testing.assert_close(r2, (x - b - c @ U).pow(2).sum(1))
    ends = [8] if cls is TopKSAE else [1, 3, 8]
    direct = sum((x - b - c[:, :e] @ U[:e]).pow(2).sum(1).mean() for e in ends) / len(ends)
    torch.testing.assert_close(loss, direct)


def test_auxk_gives_dead_latents_a_gradient():
    """Latents 2..7 are active (a > 0) but never among the top k: only AuxK reaches them."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(64, 16, generator=g)
    x = X[:32]
    grads = {}
    for aux_coef in (1 / 32, 0.0):
        m = SAEModule(TopKSAE(8, k=2, aux_coef=aux_coef), X, torch.Generator().manual_seed(0), total_steps=10)
        with torch.no_grad():
            m.b_enc[:2] = 100.0  # latents 0 and 1 always win the top 2
            m.b_enc[2:] = 50.0   # the others are active, never selected
        m.since_fired[2:] = 1e9  # and have not fired for ages: dead
        m.training_step((x, x.pow(2).sum(1)), 0).backward()
        grads[aux_coef] = m.W_enc.grad.abs().sum(1)
    assert (grads[1 / 32][2:] > 0).all()
    assert (grads[0.0][2:] == 0).all()


def test_sae_codes_are_in_the_units_of_z(planted):
    """Scaling Z scales V and the bias, not U (training sees Z divided by its scale)."""
    Z, _, _ = planted
    a = build_dictionary("topk_sae", n_concepts=8, k=2, max_epochs=5).fit(Z)
    b = build_dictionary("topk_sae", n_concepts=8, k=2, max_epochs=5).fit(1000 * Z)
    torch.testing.assert_close(b.U, a.U, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(b.V_train, 1000 * a.V_train, atol=1e-1, rtol=1e-3)


@pytest.mark.parametrize("name", ["topk_sae", "matryoshka_sae"])
def test_default_k_is_5_or_k_when_the_dictionary_is_smaller(name):
    from coxlmm.concepts.factory import compose_method

    assert compose_method(name).k == 5
    assert compose_method(name, n_concepts=3).k == 3  # debug=tiny's K = 3
    assert compose_method(name, n_concepts=3, k=2).k == 2
