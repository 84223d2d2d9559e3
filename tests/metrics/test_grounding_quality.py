"""GroundingQuality (paper Fig. 3) on a small synthetic EvalInput with fake scorers and a tiny LMM."""

from __future__ import annotations

import dataclasses

from matplotlib.figure import Figure

from coxlmm.metrics.grounding_quality import GroundingQuality
from coxlmm.scorers.base import Scorers
from tests.metrics.scoring_fakes import CONCEPT_WORDS, make_input

KEYS = {"grounding_n_concepts"}
KEYS |= {f"grounding_{m}_{s}" for m in ("cs", "bs") for s in ("mean", "random_mean", "win_rate")}


def test_documented_keys_ranges_and_artifacts():
    res = GroundingQuality()(make_input())
    out = res.scores
    assert set(out) == KEYS
    assert out["grounding_n_concepts"] == 3.0  # the concept without words is skipped
    for m, hi in (("cs", 2.5), ("bs", 1.0)):
        assert 0.0 <= out[f"grounding_{m}_mean"] <= hi and 0.0 <= out[f"grounding_{m}_random_mean"] <= hi
        assert 0.0 <= out[f"grounding_{m}_win_rate"] <= 1.0
    points = res.artifacts["grounding_points"]
    assert [p["concept"] for p in points] == [0, 1, 3]
    for p in points:
        assert len(p["random_words"]) == len(CONCEPT_WORDS[p["concept"]])  # same count as the concept's words
        assert {"cs", "cs_random", "bs", "bs_random", "n_images", "words"} <= set(p)
    assert isinstance(res.artifacts["grounding_scatter"], Figure)


def test_colour_words_beat_random_words_on_their_own_images():
    # Each concept's top images hold an object of the colour its words name, and the fake CLIP
    # scores colour agreement, so grounded words must win against random words on CS.
    out = GroundingQuality()(make_input()).scores
    assert out["grounding_cs_win_rate"] == 1.0
    assert out["grounding_cs_mean"] > out["grounding_cs_random_mean"]


def test_partial_scorers():
    inp = make_input()
    inp = dataclasses.replace(inp, services=dataclasses.replace(
        inp.services, scorer=Scorers(clip=inp.services.scorer.clip, bert=None)))
    res = GroundingQuality()(inp)
    assert set(res.scores) == {"grounding_n_concepts", "grounding_cs_mean", "grounding_cs_random_mean",
                               "grounding_cs_win_rate"}
    assert GroundingQuality()(make_input(scorer=None)).scores == {}
