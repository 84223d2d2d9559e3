"""Causal checks: the intervened forward equals a hand-written forward of the remaining blocks on the
edited state (tiny LLaVA and DePALM-mini); z replaced by itself recovers the prediction exactly;
α = 0 steering is plain generation token for token; the random controls match the concept steps'
norms; bad settings fail before any model runs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from coxlmm.errors import CoxlmmError
from coxlmm.metrics.causal import Causal, concept_parts, random_like_norms, ratio_ci
from tests.fixtures.tiny_models import load_card


def decoder(lmm):
    """The Llama-style text model (blocks, rotary embedding, final norm) of an adapter."""
    return lmm.lm.model if hasattr(lmm, "lm") else lmm._lm


def tail_forward(lmm, hidden: torch.Tensor, start: int) -> torch.Tensor:
    """Blocks start..n-1 and the final norm on hidden (1, S, H), causal attention, positions 0..S-1:
    the oracle, written with the model's own modules and nothing of coxlmm's hooks."""
    model = decoder(lmm)
    pos = torch.arange(hidden.shape[1], device=hidden.device)[None]
    rot = model.rotary_emb(hidden, pos)
    h = hidden
    for block in model.layers[start:]:
        out = block(h, attention_mask=None, position_ids=pos, position_embeddings=rot)
        h = out[0] if isinstance(out, tuple) else out
    return model.norm(h)


def check_oracle(lmm, image, prefix: list[int], t_id: int, layer: int) -> None:
    gen = torch.tensor([prefix + [t_id]])
    inputs = lmm.prepare([image])
    P = inputs["input_ids"].shape[1]
    p = P - 1 + len(prefix)  # the position that predicts t
    full = {}
    handle = lmm.hook_points()[layer].register_forward_hook(
        lambda m, a, o: full.__setitem__("h", (o[0] if isinstance(o, tuple) else o).detach().clone()))
    try:
        lmm.teacher_forced_states(inputs, gen, [layer])
    finally:
        handle.remove()
    h = full["h"]
    edited = h[0, p] + 3.0 * torch.randn(h.shape[-1], generator=torch.Generator().manual_seed(0))
    ours = lmm.target_logprobs([image], [prefix], layer, edited[None])[0]
    h_edit = h.clone()
    h_edit[0, p] = edited
    want = torch.log_softmax(tail_forward(lmm, h_edit, layer + 1)[0, p].float() @ lmm.W_U.float().T, -1)
    torch.testing.assert_close(ours, want.cpu(), atol=2e-4, rtol=1e-4)
    # the state replaced by itself: exactly the clean next-token distribution
    clean = lmm.target_logprobs([image], [prefix], layer, h[0, p][None])[0]
    unedited = torch.log_softmax(tail_forward(lmm, h, layer + 1)[0, p].float() @ lmm.W_U.float().T, -1)
    torch.testing.assert_close(clean, unedited.cpu(), atol=2e-4, rtol=1e-4)
    assert float((clean.exp() * (clean - ours)).sum()) > 1e-3  # the edit did change the prediction


@pytest.fixture(scope="module")
def llava(tiny_llava_path):
    from coxlmm.models.hf import HFVisionLM

    return HFVisionLM(name_or_path=str(tiny_llava_path)), load_card(tiny_llava_path)


@pytest.fixture(scope="module")
def depalm():
    from coxlmm.models.depalm_mini import load_depalm_mini

    return load_depalm_mini()


def test_intervened_forward_equals_the_hand_written_tail_on_the_tiny_llava(llava):
    from PIL import Image

    lmm, card = llava
    image = Image.new("RGB", (40, 40), (120, 30, 200))
    pos = card.caption_pieces.index(next(p for p in card.caption_pieces if "dog" in p))
    for layer in (0, 1):
        check_oracle(lmm, image, card.caption_ids[:pos], card.caption_ids[pos], layer)


@pytest.mark.timeout(600)
def test_intervened_forward_equals_the_hand_written_tail_on_depalm_mini(depalm):
    from coxlmm.data.shapes import ShapesWorld

    world = ShapesWorld("test", n_test=40)
    i = next(j for j, r in enumerate(world.records) if "circle" in r.attributes["shape"])
    inputs = depalm.prepare([world[i].image])
    out = depalm.generate({k: v for k, v in inputs.items()}, max_new_tokens=20)
    gen = out.sequences[0, : int(out.lengths[0])].tolist()
    from coxlmm.extraction.matching import find_target

    match = find_target(depalm.tokenizer, gen, "circle")
    assert match is not None
    for layer in (10, 28):
        check_oracle(depalm, world[i].image, gen[: match.position], gen[match.position], layer)


def test_alpha_zero_steering_is_plain_generation_token_for_token(llava, depalm):
    from PIL import Image

    lmm, _ = llava
    images = [Image.new("RGB", (40, 40), (40 * i, 90, 200 - 30 * i)) for i in range(4)]
    deltas = torch.zeros(4, lmm.hidden_size)
    deltas[1] = 50.0  # another row of the same batch is steered hard: rows must not leak into each other
    plain = lmm.generate({k: v for k, v in lmm.prepare(images).items()}, max_new_tokens=20)
    steered = lmm.steered_generate(images, deltas, 1, 20)
    for r in (0, 2, 3):
        n = int(plain.lengths[r])
        assert steered.sequences[r, :n].tolist() == plain.sequences[r, :n].tolist()
    from coxlmm.data.shapes import ShapesWorld

    world = ShapesWorld("test", n_test=4)
    ims = [world[i].image for i in range(3)]
    plain = depalm.generate(depalm.prepare(ims), max_new_tokens=24)
    d = torch.zeros(3, depalm.hidden_size)
    dog = depalm.tokenizer.encode(" dog", add_special_tokens=False)[0]
    d[0] = 4000.0 * torch.nn.functional.normalize(depalm.W_U[dog].detach().float(), dim=0)  # "say dog"
    steered = depalm.steered_generate(ims, d, 25, 24)
    for r in (1, 2):
        n = int(plain.lengths[r])
        assert steered.sequences[r, :n].tolist() == plain.sequences[r, :n].tolist()
    assert steered.sequences[0].tolist() != plain.sequences[0].tolist()  # the steered row did change


def test_prediction_recovered_is_one_when_the_reconstruction_is_exact():
    rng = np.random.default_rng(0)
    clean, mean = rng.normal(-0.5, 0.2, 40), rng.normal(-6.0, 1.0, 40)
    value, lo, hi = ratio_ci(clean, clean.copy(), mean)
    assert value == pytest.approx(1.0) and lo == pytest.approx(1.0) and hi == pytest.approx(1.0)
    value, _, _ = ratio_ci(clean, mean.copy(), mean)
    assert value == pytest.approx(0.0)


def test_prediction_recovered_is_undefined_when_the_mean_ablation_does_not_hurt():
    # The train mean of the states that predict t can predict t as well as they do (DePALM-mini, circle):
    # the denominator is then noise around 0, and a ratio of 1,000 would say nothing.
    rng = np.random.default_rng(0)
    clean = rng.normal(-0.001, 0.0005, 40)
    mean = clean + rng.normal(0.0, 0.0005, 40)
    recon = clean - 0.5
    assert all(math.isnan(x) for x in ratio_ci(clean, recon, mean))


def test_random_controls_have_the_norm_of_the_concept_steps_they_match():
    from coxlmm.concepts import build_dictionary

    g = torch.Generator().manual_seed(0)
    Z = torch.randn(60, 12, generator=g) + 3.0
    d = build_dictionary("semi_nmf", n_concepts=4).fit(Z)
    parts = concept_parts(d, d.V_train)
    torch.testing.assert_close(parts.sum(1), d.decode(d.V_train), atol=1e-4, rtol=1e-4)  # linear: Σ_k v_k u_k
    torch.testing.assert_close(parts, d.V_train[..., None] * d.U[None], atol=1e-5, rtol=1e-5)
    R = random_like_norms(parts.norm(dim=-1), 12, seed=3)
    torch.testing.assert_close(R.norm(dim=-1), parts.norm(dim=-1), atol=1e-5, rtol=1e-5)
    cos = torch.nn.functional.cosine_similarity(R, parts, dim=-1)
    assert float(cos.abs().mean()) < 0.5  # random, not the concept


@pytest.mark.parametrize("kwargs, message", [
    ({"alphas": [0, "two", 4]}, "must be a non-empty list of numbers"),
    ({"alphas": []}, "must be a non-empty list of numbers"),
    ({"positions": "prompt"}, "positions='prompt' is invalid"),
    ({"n_samples": 0}, "n_samples=0 is invalid"),
])
def test_bad_causal_settings_fail_at_once(kwargs, message):
    with pytest.raises(CoxlmmError, match=message):
        Causal(**kwargs)
