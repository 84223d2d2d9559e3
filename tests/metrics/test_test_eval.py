"""TestSampleScores (paper Table 1) on a small synthetic EvalContext with fake scorers and a tiny LMM."""

from __future__ import annotations

import logging

import pytest
import torch

from coxlmm.metrics.test_eval import TestSampleScores, noise_images, top_concepts
from tests.metrics.scoring_fakes import CONCEPT_WORDS, K, make_ctx

KEYS = {f"{m}_top{k}_{s}" for m in ("cs", "bs") for k in (1, 3) for s in ("mean", "std")}
KEYS |= {f"{b}_{m}_top1_{s}" for b in ("rnd_words", "noise_imgs") for m in ("cs", "bs") for s in ("mean", "std")}
KEYS |= {f"gt_captions_{m}_{s}" for m in ("cs", "bs") for s in ("mean", "std")}
KEYS |= {"n_test_scored", "v_all_zero_frac", "top1_no_words_frac", "rnd_words_no_words_frac",
         "noise_imgs_no_words_frac"}


def test_documented_keys_and_ranges():
    ctx = make_ctx()
    out = TestSampleScores()(ctx)
    assert ctx.artifacts["scorer_fingerprint"] == {"clip": {"scorer": "colour"}, "bert": {"bert": "overlap"}}
    assert set(out) == KEYS
    assert all(isinstance(v, float) for v in out.values())
    for k, v in out.items():
        if "_cs_" in k or k.startswith("cs_"):
            assert 0.0 <= v <= 2.5, (k, v)
        elif "_bs_" in k or k.startswith("bs_"):
            assert 0.0 <= v <= 1.0, (k, v)
    assert out["n_test_scored"] == 12.0
    # GT captions name the object's colour and shape: they beat the fake concepts on word overlap.
    assert out["gt_captions_bs_mean"] > out["bs_top1_mean"]


def test_flags_turn_baselines_off():
    out = TestSampleScores(rnd_words=False, noise_imgs=False, gt_captions=False)(make_ctx())
    assert not any(k.startswith(("rnd_words", "noise_imgs", "gt_captions")) for k in out)
    assert "cs_top1_mean" in out


def test_top1_uses_the_largest_activation():
    ctx = make_ctx()
    ctx.V_test = torch.zeros(12, K)
    ctx.V_test[:, 0] = 1.0  # every sample's top concept: "red, circle"
    out = TestSampleScores(rnd_words=False, noise_imgs=False, gt_captions=False)(ctx)
    from coxlmm.scorers.words import words_clip_scores

    clip = ctx.scorer.clip
    imgs = clip.embed_images([ctx.test_dataset[i].image for i in range(12)])
    expected = words_clip_scores(clip, imgs, [CONCEPT_WORDS[0]] * 12)
    assert out["cs_top1_mean"] == pytest.approx(float(expected.mean()), abs=1e-6)
    assert out["top1_no_words_frac"] == 0.0


def test_without_scorer_or_test_features_returns_empty_and_warns_once(caplog):
    metric = TestSampleScores()
    with caplog.at_level(logging.WARNING):
        assert metric(make_ctx(scorer=None)) == {}
        assert metric(make_ctx(scorer=None)) == {}
    assert sum("no scorer" in r.message for r in caplog.records) == 1
    ctx = make_ctx()
    ctx.Z_test = ctx.V_test = None
    assert TestSampleScores()(ctx) == {}


def test_baselines_skipped_without_lmm():
    out = TestSampleScores()(make_ctx(lmm=False))
    assert "cs_top1_mean" in out and not any(k.startswith(("rnd_words", "noise_imgs")) for k in out)


def test_helpers():
    V = torch.tensor([[0.0, 2.0, 1.0, 3.0], [0.0, 0.0, 0.0, 0.0]])
    assert top_concepts(V, 3).tolist() == [[3, 1, 2], [0, 1, 2]]  # ties: lowest index first
    assert top_concepts(V, 9).shape == (2, 4)
    a, b = noise_images(2, (8, 6), seed=1), noise_images(2, (8, 6), seed=1)
    assert a[0].size == (8, 6) and a[0].tobytes() == b[0].tobytes() != a[1].tobytes()
