"""Causal checks v2: the model-side edits against hand-written oracles (tiny LLaVA and DePALM-mini), the
plans (steps in units of ‖z‖ for every method, controls from the data), the scoring functions on
hand-computed cases, and one plan per metric."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from coxlmm.causal import plan as P
from coxlmm.causal import scores as S
from coxlmm.causal.metric import Causal
from coxlmm.causal.stages import CaptionCE, Steering, TargetEdits
from coxlmm.errors import CoxlmmError
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


def states_at(lmm, inputs, gen, layer) -> torch.Tensor:
    full = {}
    handle = lmm.hook_points()[layer].register_forward_hook(
        lambda m, a, o: full.__setitem__("h", (o[0] if isinstance(o, tuple) else o).detach().clone()))
    try:
        lmm.teacher_forced_states(inputs, gen, [layer])
    finally:
        handle.remove()
    return full["h"]


def check_oracle(lmm, image, prefix: list[int], t_id: int, layer: int) -> None:
    gen = torch.tensor([prefix + [t_id]])
    inputs = lmm.prepare([image])
    P_ = inputs["input_ids"].shape[1]
    p = P_ - 1 + len(prefix)  # the position that predicts t
    h = states_at(lmm, inputs, gen, layer)
    edited = h[0, p] + 3.0 * torch.randn(h.shape[-1], generator=torch.Generator().manual_seed(0))
    ours = lmm.target_logprobs([image], [prefix], layer, edited[None])[0]
    h_edit = h.clone()
    h_edit[0, p] = edited
    want = torch.log_softmax(tail_forward(lmm, h_edit, layer + 1)[0, p].float() @ lmm.W_U.float().T, -1)
    torch.testing.assert_close(ours, want.cpu(), atol=2e-4, rtol=1e-4)
    clean = lmm.target_logprobs([image], [prefix], layer, h[0, p][None])[0]
    unedited = torch.log_softmax(tail_forward(lmm, h, layer + 1)[0, p].float() @ lmm.W_U.float().T, -1)
    torch.testing.assert_close(clean, unedited.cpu(), atol=2e-4, rtol=1e-4)
    assert float((clean.exp() * (clean - ours)).sum()) > 1e-3  # the edit did change the prediction
    # The whole-caption splice: a transform applied at every caption position equals the oracle's tail
    # over the transformed span, and the identity transform is the clean forward.
    scale = lambda x: 0.5 * x  # noqa: E731
    spliced = lmm.caption_logprobs([image], gen, layer, scale)[0]
    h_all = h.clone()
    h_all[0, P_ - 1: P_ - 1 + gen.shape[1]] *= 0.5
    lp = torch.log_softmax(tail_forward(lmm, h_all, layer + 1)[0, P_ - 1: P_ - 1 + gen.shape[1]].float()
                           @ lmm.W_U.float().T, -1)
    torch.testing.assert_close(spliced, lp.gather(-1, gen[0, :, None].to(lp.device))[:, 0].cpu(), atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(lmm.caption_logprobs([image], gen, layer, lambda x: x),
                               lmm.caption_logprobs([image], gen), atol=1e-5, rtol=1e-5)


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
    from coxlmm.extraction.matching import find_target

    world = ShapesWorld("test", n_test=40)
    i = next(j for j, r in enumerate(world.records) if "circle" in r.attributes["shape"])
    out = depalm.generate(depalm.prepare([world[i].image]), max_new_tokens=20)
    gen = out.sequences[0, : int(out.lengths[0])].tolist()
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


def test_text_only_fluency_does_not_see_the_image(depalm):
    """The text-only log-probabilities of a caption are the LM's on the caption alone: the same for any
    image, unlike the caption's log-probabilities given its image."""
    from coxlmm.data.shapes import ShapesWorld

    world = ShapesWorld("test", n_test=4)
    out = depalm.generate(depalm.prepare([world[0].image]), max_new_tokens=16)
    gen = out.sequences[:1, : int(out.lengths[0])]
    text = depalm.text_logprobs(gen)
    ids = torch.cat([torch.tensor([[depalm.tokenizer.bos_token_id]]), gen], 1) \
        if depalm.tokenizer.bos_token_id is not None else gen
    ref = torch.log_softmax(depalm.lm(input_ids=ids).logits.float(), -1)
    start = 1 if depalm.tokenizer.bos_token_id is not None else 0
    want = ref[0, start - 1 if start else 0: ids.shape[1] - 1].gather(-1, ids[0, start:, None])[:, 0]
    torch.testing.assert_close(text[0, -len(want):], want, atol=1e-4, rtol=1e-4)
    with_image = [depalm.caption_logprobs([world[i].image], gen)[0] for i in (0, 1)]
    assert not torch.allclose(with_image[0], with_image[1])  # given the image, the caption's fit changes


# --- plans (pure) ---------------------------------------------------------------------------------------
class Codes:
    """A linear dictionary whose codes are `scale` times smaller than the projection: U (K, H) with unit
    rows, encode = scale · relu(Z Uᵀ), decode(V) = V U / scale."""

    def __init__(self, U, scale):
        self.U, self.scale, self.n_concepts, self.name = U, scale, len(U), "codes"

    def encode(self, Z):
        return self.scale * torch.relu(Z.float() @ self.U.T)

    def decode(self, V):
        return V @ self.U / self.scale


def test_steps_are_the_same_fraction_of_the_state_norm_for_every_method():
    """Two dictionaries with codes on scales 1 and 1e-4 get the same step sizes along their directions: α ·
    ‖z‖, whatever their codes (the code-unit view would step the small one 10,000 times less)."""
    g = torch.Generator().manual_seed(0)
    Z_train, z = torch.randn(200, 16, generator=g) * 5, torch.randn(6, 16, generator=g) * 5
    U = P.unit_rows(torch.randn(4, 16, generator=g))
    scale = P.step_scale("sample", z, Z_train)
    steps = {}
    for c in (1.0, 1e-4):
        d = Codes(U, c)
        plan = P.steer_plan(d.U, {0: None, 2: None}, [0.1, 0.2], ["isotropic", "covariance"], Z_train, {}, scale,
                            list(range(6)), 8, "generated", seed=0)
        steps[c] = torch.stack([plan.deltas(m).norm(dim=1) for m in range(6)])
        for m in range(6):
            for row, info in zip(plan.deltas(m), plan.directions):
                assert float(row.norm()) == pytest.approx(info.alpha * float(z[m].norm()), rel=1e-5)
    torch.testing.assert_close(steps[1.0], steps[1e-4])
    code = P.steer_plan(U, {0: None}, [0.1], [], Z_train, {}, torch.ones(6), list(range(6)), 8, "generated", 0,
                        code_scale=torch.full((4,), 1e-4))
    assert float(code.deltas(0)[1].norm()) == pytest.approx(1e-5)  # the old view, as an option


def test_the_covariance_control_has_the_training_covariance():
    """Draws from a planted Gaussian's states have its covariance (not the identity)."""
    g = torch.Generator().manual_seed(0)
    A = torch.randn(6, 6, generator=g)
    Sigma = A @ A.T + 0.1 * torch.eye(6)
    Z = torch.randn(4000, 6, generator=g) @ torch.linalg.cholesky(Sigma).T + 7.0
    draws = P.covariance_draws(Z, 20000, seed=1).double()
    torch.testing.assert_close(draws.T @ draws / len(draws), Sigma.double(), atol=0.15 * float(Sigma.diag().max()),
                               rtol=0.1)
    units = P.covariance_directions(Z, 5, seed=2)
    torch.testing.assert_close(units.norm(dim=1), torch.ones(5))


def test_controls_and_target_edits_have_their_norms():
    from coxlmm.concepts import build_dictionary

    g = torch.Generator().manual_seed(0)
    Z = torch.randn(60, 12, generator=g) + 3.0
    d = build_dictionary("semi_nmf", n_concepts=4).fit(Z)
    parts = P.concept_parts(d, d.V_train)
    torch.testing.assert_close(parts, d.V_train[..., None] * d.U[None], atol=1e-5, rtol=1e-5)
    z, V = Z[:5], d.encode(Z[:5])
    plan = P.target_plan(z, V, d, Z, list(range(5)), [1] * 5, seed=0)
    col = {v: i for i, v in enumerate(plan.variants)}
    removed = (plan.states[:, col["clean"]] - plan.states[:, col["ablate"]]).norm(dim=1)
    for c in ("isotropic", "concept_other", "covariance"):
        torch.testing.assert_close((plan.states[:, col["clean"]] - plan.states[:, col[f"ablate:{c}"]]).norm(dim=1),
                                   removed, atol=1e-4, rtol=1e-4)
    assert P.other_concepts(2, 5, 50, seed=0) and 2 not in P.other_concepts(2, 5, 50, seed=0)


# --- scores (pure, hand-computed) -------------------------------------------------------------------------
def test_steering_success_counts_only_samples_that_lacked_the_value():
    truth = [{"colour": "red"}, {"colour": "blue"}, {"colour": "blue"}, {}]
    named = [{"colour": "green"}, {"colour": "green"}, None, {"colour": "green"}]
    out = S.steering_success(named, truth, ("colour", "green"))
    assert out[0] == 1.0 and out[1] == 1.0 and out[2] == 0.0 and np.isnan(out[3])
    same = S.steering_success(named, truth, ("colour", "red"))
    assert np.isnan(same[0]) and same[1] == 0.0  # already red: not scored


def test_fluency_and_caption_ce_are_per_token_means():
    lp = np.log(np.array([[0.5, 0.25, 0.9], [0.1, 0.2, 0.3]]))
    assert S.fluency(lp, np.array([2, 0])).tolist()[0] == pytest.approx((np.log(0.5) + np.log(0.25)) / 2)
    assert np.isnan(S.fluency(lp, np.array([2, 0]))[1])
    assert S.caption_ce(lp, np.array([3, 1])).tolist() == pytest.approx([-np.log([0.5, 0.25, 0.9]).mean(), -np.log(0.1)])


def test_ce_recovered_is_one_for_an_exact_reconstruction_and_zero_for_the_baseline():
    rng = np.random.default_rng(0)
    clean = rng.uniform(0.1, 0.5, 40)
    zero = clean + rng.uniform(2, 4, 40)
    assert S.ce_recovered(clean, clean.copy(), zero) == pytest.approx(1.0)
    assert S.ce_recovered(clean, zero.copy(), zero) == pytest.approx(0.0)
    assert S.ce_recovered(clean, (clean + zero) / 2, zero) == pytest.approx(0.5)
    m, lo, hi = S.paired_ratio_ci(clean, clean.copy(), zero)
    assert (m, lo, hi) == pytest.approx((1.0, 1.0, 1.0))
    assert np.isnan(S.ce_recovered(clean, clean, clean - 1))  # a baseline that does not hurt: undefined


def test_kl_and_the_clustered_interval():
    p = np.log(np.array([[0.5, 0.5], [0.9, 0.1]]))
    q = np.log(np.array([[0.5, 0.5], [0.5, 0.5]]))
    assert S.kl(p, q).tolist() == pytest.approx([0.0, 0.9 * np.log(1.8) + 0.1 * np.log(0.2)])
    # Per (sample, concept) successes: the interval resamples samples with their concepts together, so a
    # sample that succeeds on every concept moves the mean as one unit.
    x = np.array([[1, 1, 1], [0, 0, 0], [1, 1, 1], [0, 0, np.nan]], dtype=float)
    m, lo, hi = S.clustered_ci(x, seed=0)
    assert m == pytest.approx(6 / 11) and 0 <= lo < m < hi <= 1
    assert S.clustered_ci(np.ones((5, 2)), seed=0) == (1.0, 1.0, 1.0)


# --- the metric's plan -------------------------------------------------------------------------------------
def test_two_causal_metrics_each_get_their_own_plan():
    """Two causal metrics of one run (different steps) plan separately; the pipeline fills each metric's
    own requests and hands it only those (pipeline.fill_requests is called per metric)."""
    from tests.metrics.scoring_fakes import make_input

    from coxlmm.concepts.pca import PCA

    inp = make_input(factors={"colour": ["red", "blue", "green"]})
    d = PCA(4).fit(inp.train.Z)
    inp = dataclasses.replace(inp, dictionary=d, train=dataclasses.replace(inp.train, V=d.encode(inp.train.Z)),
                              test=dataclasses.replace(inp.test, V=d.encode(inp.test.Z)))
    a = Causal(steps=[0.1], n_samples=5, steer="all")
    b = Causal(steps=[0.3, 0.6], n_samples=3, caption_ce=False, steer="all")
    pa, pb = a.plan(inp), b.plan(inp)
    assert [type(r) for r in pa] == [TargetEdits, CaptionCE, Steering]
    assert [type(r) for r in pb] == [TargetEdits, Steering]
    steer_a, steer_b = pa[-1].plan, pb[-1].plan
    assert len(steer_a.indices) == 5 and len(steer_b.indices) == 3
    assert {d.alpha for d in steer_a.directions} == {0.0, 0.1} and {d.alpha for d in steer_b.directions} == {0.0, 0.3, 0.6}
    assert pa[-1].key() != pb[-1].key()  # separate cache entries
    # what a metric scores comes from its own sources only
    empty = dataclasses.replace(inp, sources={})
    assert a(empty).scores == {}


@pytest.mark.parametrize("kwargs, message", [
    ({"steps": [0, 0.1]}, "steps=.*positive fractions"),
    ({"steps": ["two"]}, "steps=.*positive fractions"),
    ({"steps": []}, "steps=.*positive fractions"),
    ({"controls": ["random"]}, r"unknown \['random'\]; accepted: isotropic"),
    ({"step_unit": "percent"}, "step_unit='percent' is invalid"),
    ({"positions": "prompt"}, "positions='prompt' is invalid"),
    ({"n_samples": 0}, "n_samples=0 is invalid"),
])
def test_bad_causal_settings_fail_at_once(kwargs, message):
    with pytest.raises(CoxlmmError, match=message):
        Causal(**kwargs)
