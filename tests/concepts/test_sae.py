"""The sparse autoencoders: training lowers the loss, decoder rows stay unit norm, sparsity is k,
AuxK reaches dead latents (and revives them where the old recipe left them dead), the Gram-form
loss equals the direct one, and the BatchTopK threshold is the exact streamed quantile."""

from __future__ import annotations

import pytest
import torch

from coxlmm.concepts import build_dictionary
from coxlmm.concepts.matryoshka_sae import MatryoshkaSAE, default_group_sizes
from coxlmm.concepts.sae import SAEModule, kth_largest
from coxlmm.concepts.topk_sae import TopKSAE
from coxlmm.metrics.planted import planted_features

SAES = ["topk_sae", "batchtopk_sae", "matryoshka_sae"]


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


@pytest.mark.parametrize("name", ["batchtopk_sae", "matryoshka_sae"])
def test_batchtopk_averages_k_on_the_training_features(name, planted):
    Z, _, _ = planted
    d = build_dictionary(name, n_concepts=8, k=2, max_epochs=20, batch_size=64).fit(Z)
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


@pytest.mark.parametrize("B", [16, 4])  # K = 8 < B: the Gram form; K >= B: the direct residual
@pytest.mark.parametrize("b_dead", [50.0, -50.0])
def test_auxk_gives_dead_latents_a_gradient(b_dead, B):
    """Latents 2..7 never fire: active but never among the top k (b_dead = 50), or negative on
    every sample (b_dead = −50, which the old recipe's ReLU'd AuxK could not reach); AuxK alone
    gives them a gradient."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, B, generator=g)
    grads = {}
    for aux_coef in (1.0, 0.0):
        m = SAEModule(TopKSAE(8, k=2, aux_coef=aux_coef), B, 64, torch.Generator().manual_seed(0),
                      total_steps=10)
        with torch.no_grad():
            m.b_enc[:2] = 100.0  # latents 0 and 1 always win the top 2
            m.b_enc[2:] = b_dead
        m.since_fired[2:] = 1e9  # and have not fired for ages: dead
        m.training_step((x, x.pow(2).sum(1)), 0).backward()
        grads[aux_coef] = m.W_enc.grad.abs().sum(1)
    assert (grads[1.0][2:] > 0).all()
    assert (grads[0.0][2:] == 0).all()


@pytest.mark.parametrize("name", ["topk_sae", "batchtopk_sae"])
def test_auxk_revives_latents_the_old_recipe_leaves_dead(name):
    """32 latents on 8 planted directions (k = 2): the recipe before issue 23 (AuxK on the ReLU'd
    activations, weight 1/32) ended with 17 of 32 TopK latents never firing on the training
    features; AuxK on the pre-activations at weight 1 revives them (1 dead)."""
    Z, _, _ = planted_features(M=600, B=32, T=8, p_fire=0.15, offset=3.0, seed=0)
    d = build_dictionary(name, n_concepts=32, k=2, max_epochs=40, batch_size=64).fit(Z)
    dead = int(((d.encode(Z) > 0).sum(0) == 0).sum())
    assert dead <= 4, f"{name}: {dead} of 32 latents never fire on the training features"


def test_kth_largest_is_exact_from_blocks():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(1000, 8, generator=g).pow(3) * (torch.rand(1000, 8, generator=g) < 0.5)
    a[5, 3] = a[7, 1] = 0.5  # ties
    sorted_pos = a[a > 0].sort(descending=True).values
    for n in (1, 17, 700, len(sorted_pos)):
        assert kth_largest(lambda: iter(a.split(64)), n) == float(sorted_pos[n - 1])
    assert kth_largest(lambda: iter(a.split(64)), len(sorted_pos) + 1) == 0.0


def test_width_below_k_is_refused():
    from coxlmm.errors import CoxlmmError

    for name in SAES:
        with pytest.raises(CoxlmmError, match="exceeds n_concepts=4 .the width."):
            build_dictionary(name, n_concepts=4, k=7)


def test_sae_codes_are_in_the_units_of_z(planted):
    """Scaling Z scales V and the bias, not U (training sees Z divided by its scale)."""
    Z, _, _ = planted
    a = build_dictionary("topk_sae", n_concepts=8, k=2, max_epochs=5).fit(Z)
    b = build_dictionary("topk_sae", n_concepts=8, k=2, max_epochs=5).fit(1000 * Z)
    torch.testing.assert_close(b.U, a.U, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(b.V_train, 1000 * a.V_train, atol=1e-1, rtol=1e-3)


@pytest.mark.parametrize("name", SAES)
def test_default_k_is_5_or_k_when_the_dictionary_is_smaller(name):
    from coxlmm.concepts.factory import compose_method

    assert compose_method(name).k == 5
    assert compose_method(name, n_concepts=3).k == 3  # debug=tiny's K = 3
    assert compose_method(name, n_concepts=3, k=2).k == 2


@pytest.mark.parametrize("cls, kw", [(TopKSAE, {}), (MatryoshkaSAE, {"group_sizes": [1, 2, 5]})])
def test_direct_errors_equal_the_gram_form(cls, kw):
    g = torch.Generator().manual_seed(1)
    x, b, U = (torch.randn(*s, generator=g, dtype=torch.float64) for s in ((7, 5), (5,), (8, 5)))
    c = torch.rand(7, 8, generator=g, dtype=torch.float64) * (torch.rand(7, 8, generator=g) < 0.5)
    sae = cls(8, k=2, **kw)
    r2, loss = sae.squared_errors((x - b).pow(2).sum(1), c, (x - b) @ U.T, U @ U.T)
    r2_d, loss_d, resid = sae.direct_errors(x - b, c, U)
    torch.testing.assert_close(r2_d, r2)
    torch.testing.assert_close(loss_d, loss)
    torch.testing.assert_close(resid, x - b - c @ U)
