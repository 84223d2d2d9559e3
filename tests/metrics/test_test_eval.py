"""TestSampleScores (paper Table 1) and its nulls on a small synthetic EvalInput with fake scorers."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch

from coxlmm.errors import CoxlmmError
from coxlmm.metrics.base import NOISE_TRAIN
from coxlmm.metrics.test_eval import TestSampleScores, other_concepts, top1_word_sets, top_concepts
from tests.metrics.scoring_fakes import CONCEPT_WORDS, K, RowsDictionary, make_input

NULLS = ("rnd_words", "token_only", "rnd_concept", "noise_imgs")


def with_noise(inp, noise=None, draws: int = 2):
    """The input with a training noise source of `draws` draws (default: the training Z itself, i.e. real images)."""
    source = inp.train.Z.clone() if noise is None else noise
    train = dataclasses.replace(inp.train, noise=tuple(source for _ in range(draws)))
    return dataclasses.replace(inp, train=train)


def test_documented_keys_ranges_and_artifacts():
    inp = with_noise(make_input(), noise=torch.randn(40, 16), draws=3)
    res = TestSampleScores(n_draws=7)(inp)
    out = res.scores
    for null in NULLS:
        for m in ("cs", "bs"):
            assert f"{null}_{m}_top1_mean" in out
            assert {f"{m}_top1_vs_{null}_{s}" for s in ("diff", "ci_lo", "ci_hi", "significant")} <= set(out)
    assert {"cs_top1_mean", "cs_top3_mean", "bs_top1_mean", "gt_captions_cs_mean", "gt_captions_bs_mean",
            "top1_no_concept_frac", "noise_imgs_no_concept_frac", "rnd_words_len_mean"} <= set(out)
    assert all(isinstance(v, float) for v in out.values())
    for k, v in out.items():
        if k.endswith("_mean") and ("_cs_" in k or k.startswith("cs_")):
            assert 0.0 <= v <= 2.5, (k, v)
    assert res.artifacts["scorer_fingerprint"] == {"clip": {"scorer": "colour"}, "bert": {"bert": "overlap"}}
    # Per-sample scores with each null's draws: Rnd-Words and Rnd-Concept n_draws, Noise-Imgs one per noise seed.
    shapes = {name: values.shape for name, (ids, values) in res.samples.items()}
    assert shapes["top1_cs"] == (12,) and shapes["token_only_cs"] == (12,) and shapes["gt_captions_bs"] == (12,)
    assert shapes["rnd_words_cs"] == (12, 7) and shapes["rnd_concept_bs"] == (12, 7) and shapes["noise_imgs_cs"] == (12, 3)
    assert all(ids == inp.test.ids for ids, _ in res.samples.values())
    assert len(res.artifacts["noise_imgs_words"]) == K
    # The description names every per-sample array and pairs the method's with its nulls.
    described = {s.name: s for s in res.schema.samples}
    assert set(described) == set(res.samples)
    assert described["top1_cs"].nulls == ("rnd_words_cs", "token_only_cs", "rnd_concept_cs", "noise_imgs_cs")
    assert {s.key for s in res.schema.scores} >= {"cs_top1_mean", "rnd_words_cs_top1_mean", "gt_captions_bs_mean"}


def test_every_rnd_words_set_is_non_empty_and_as_long_as_the_concepts_words():
    inp = make_input()
    V = torch.zeros(12, K)
    for i in range(12):
        V[i, i % K] = 1.0  # every concept is some sample's top-1, concept 2 has no words
    inp = dataclasses.replace(inp, test=dataclasses.replace(inp.test, V=V))
    res = TestSampleScores(nulls=("rnd_words",), n_draws=5)(inp)
    import numpy as np

    from coxlmm.grounding.text import RandomWordPool

    lengths = [len(w) or inp.n_words for w in CONCEPT_WORDS]
    draws = RandomWordPool(inp.services.lens, 32, seed=0).draw(lengths, 5, np.random.default_rng(0))
    assert all(len(s) == n for n, sets in zip(lengths, draws) for s in sets)
    assert res.scores["rnd_words_len_mean"] == pytest.approx(sum(lengths[i % K] for i in range(12)) / 12)


def test_token_only_and_rnd_concept_use_the_same_scorer():
    inp = make_input()
    res = TestSampleScores(nulls=("token_only", "rnd_concept"), n_draws=4)(inp)
    clip = inp.services.scorer.clip
    from coxlmm.scorers.words import words_clip_scores

    emb = clip.embed_images([inp.test.image(i) for i in range(12)])
    expected = words_clip_scores(clip, emb, [["circle"]] * 12)
    assert res.scores["token_only_cs_top1_mean"] == pytest.approx(float(expected.mean()), abs=1e-6)
    assert res.samples["token_only_cs"][1].tolist() == pytest.approx(expected.tolist(), abs=1e-5)
    # The random concept is another concept of the same dictionary: every draw scores as some T_k != T_k1.
    assert "rnd_concept_bs_top1_mean" in res.scores and res.samples["rnd_concept_cs"][1].shape == (12, 4)


def test_noise_imgs_with_the_real_states_scores_like_the_method():
    """The noise source made of the real images' states (noise.images=real) must reproduce the
    method's own top-1 scores: the baseline changes the image and nothing else."""
    inp = make_input()
    ground = inp.services.ground
    method = RowsDictionary(K).fit(inp.train.Z)
    concepts = dataclasses.replace(inp.concepts, U=method.U, words=ground(method.U))
    inp = dataclasses.replace(inp, concepts=concepts,
                              test=dataclasses.replace(inp.test, V=method.encode(inp.test.Z)))
    out = TestSampleScores(nulls=("noise_imgs",))(with_noise(inp)).scores
    for m in ("cs", "bs"):
        assert out[f"noise_imgs_{m}_top1_mean"] == pytest.approx(out[f"{m}_top1_mean"], abs=1e-9)
        assert out[f"{m}_top1_vs_noise_imgs_diff"] == 0.0 and out[f"{m}_top1_vs_noise_imgs_significant"] == 0.0


def test_a_row_with_no_concept_scores_zero_and_is_counted():
    V = torch.zeros(12, K)
    V[:6, 0] = 1.0  # half the samples: concept 0; the other half: all codes zero
    inp = make_input(V_test=V)
    res = TestSampleScores(nulls=(), gt_captions=False)(inp)
    assert res.scores["top1_no_concept_frac"] == 0.5
    cs = res.samples["top1_cs"][1].tolist()
    assert all(c == 0.0 for c in cs[6:]) and any(c > 0 for c in cs[:6])
    assert top1_word_sets(V, CONCEPT_WORDS)[6] == []


def test_without_scorer_or_test_features_returns_empty(caplog):
    with caplog.at_level(logging.WARNING):
        assert TestSampleScores()(make_input(scorer=None)).scores == {}
    assert any("no scorer" in r.message for r in caplog.records)
    inp = make_input()
    assert TestSampleScores()(dataclasses.replace(inp, test=None)).scores == {}


def test_noise_imgs_is_skipped_without_its_source_and_declares_its_need():
    out = TestSampleScores()(make_input()).scores
    assert "cs_top1_mean" in out and not any(k.startswith("noise_imgs") for k in out)
    assert TestSampleScores().requests() == {NOISE_TRAIN}
    assert TestSampleScores(nulls=("token_only",)).requests() == set()


def test_helpers():
    V = torch.tensor([[0.0, 2.0, 1.0, 3.0], [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    assert top_concepts(V, 3) == [[3, 1, 2], [], [0, 1]]  # zero codes are no concept; ties: lowest first
    with pytest.raises(Exception, match="unknown nulls"):
        TestSampleScores(nulls=("nope",))
    for bad in (0, -1, 2.5, True):
        with pytest.raises(CoxlmmError, match="n_draws"):
            TestSampleScores(n_draws=bad)
    import numpy as np

    rng = np.random.default_rng(0)
    picks = other_concepts(2, 5, 1000, rng)
    assert 2 not in picks and set(picks) == {0, 1, 3, 4}  # another concept, uniformly
    assert set(other_concepts(None, 3, 200, rng)) == {0, 1, 2}
