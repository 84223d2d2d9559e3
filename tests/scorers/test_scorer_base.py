"""CLIPScore formula and the words text (scorers/base.py, scorers/words.py)."""

from __future__ import annotations

import pytest
import torch

from coxlmm.scorers import Scorers, clip_score, words_text
from coxlmm.scorers.words import bs_text


def test_clip_score_is_2_5_times_clamped_cosine_per_sample():
    img = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 2.0], [3.0, 4.0]])
    txt = torch.tensor([[2.0, 0.0], [-1.0, 0.0], [1.0, 1.0], [4.0, -3.0]])  # cos = 1, -1, 1/√2, 0
    cs = clip_score(img, txt)
    assert cs.dtype == torch.float32 and cs.shape == (4,)
    assert cs.tolist() == pytest.approx([2.5, 0.0, 2.5 / 2**0.5, 0.0], abs=1e-6)
    # Clamped per sample, then averaged: the negative pair counts as 0, it does not cancel a positive.
    assert float(clip_score(img[:2], txt[:2]).mean()) == pytest.approx(1.25)
    # Scale-free: unnormalised and normalised rows give the same score.
    assert torch.allclose(clip_score(img, txt), clip_score(img / img.norm(dim=1, keepdim=True), txt * 7.0))
    with pytest.raises(ValueError):
        clip_score(img, txt[:3])


def test_texts():
    assert words_text(["red", "circle", "large"]) == "A photo is described by the words red, circle, large"
    assert bs_text(["red", "circle"]) == "red circle"


def test_scorers_bundle_fingerprint_allows_missing_parts():
    assert Scorers().fingerprint() == {"clip": None, "bert": None}
