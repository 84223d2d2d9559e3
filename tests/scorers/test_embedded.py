"""The committed embedded scorer: normalised embeddings, right captions and words ranked first.

Images come from the world's test split, which the scorer's heads never saw (trained on train).
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from coxlmm.data.shapes import ShapesWorld, objects_of
from coxlmm.scorers.base import words_text
from coxlmm.scorers.embedded import DEFAULT_WEIGHTS, EmbeddedClip, facts_path

pytestmark = pytest.mark.skipif(not os.path.isfile(DEFAULT_WEIGHTS), reason="run `make train-scorer` first")


@pytest.fixture(scope="module")
def clip():
    return EmbeddedClip()


@pytest.fixture(scope="module")
def world():
    return ShapesWorld("test", n_test=12)


def test_embeddings_are_normalised_float32(clip, world):
    E_img = clip.embed_images([world[i].image for i in range(3)])
    E_txt = clip.embed_texts(["A red circle.", words_text(["red"])])
    assert E_img.dtype == E_txt.dtype == torch.float32 and E_img.shape[1] == E_txt.shape[1]
    assert torch.allclose(E_img.norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.allclose(E_txt.norm(dim=1), torch.ones(2), atol=1e-5)


def test_right_caption_ranks_above_wrong_ones(clip, world):
    # Every image against every image's first caption: the right caption must outrank the others
    # on average (rank 0 = best), and come first for most images.
    E_img = clip.embed_images([world[i].image for i in range(len(world))])
    E_txt = clip.embed_texts([r.captions[0] for r in world.records])
    sim = E_img @ E_txt.T
    rank_of_right = (sim > sim.diag()[:, None]).sum(1).float()
    assert rank_of_right.mean() < 1.0 and (rank_of_right == 0).float().mean() >= 0.6


def test_concept_words_of_the_object_beat_other_words(clip, world):
    images, right, wrong = [], [], []
    for rec, i in zip(world.records, range(len(world))):
        obj = objects_of(rec.attributes)[0]
        others = [c for c in ("red", "green", "blue", "yellow") if c not in rec.attributes["colour"]][0]
        images.append(world[i].image)
        right.append(words_text([obj["colour"], obj["shape"]]))
        wrong.append(words_text([others, obj["shape"]]))
    cs_right, cs_wrong = clip.score(images, right), clip.score(images, wrong)
    assert (cs_right > cs_wrong).float().mean() >= 0.9


def test_facts_are_committed_beside_the_weights():
    facts = json.load(open(facts_path(DEFAULT_WEIGHTS)))
    assert {"data", "steps", "fit_seconds", "val_retrieval", "weights_sha256"} <= set(facts)
    assert os.path.getsize(DEFAULT_WEIGHTS) < 2_500_000


def test_the_scorer_reads_the_vision_module_depalm_mini_reads(clip, world):
    """One EfficientNet-Lite0 (models/vision.py): the scorer's grid features are the pooled last map of
    the same `feature_maps` DePALM-mini's visual tokens come from."""
    from coxlmm.models import depalm_mini, vision
    from coxlmm.scorers.embedded import IMAGE_SIZE, image_features

    assert depalm_mini.load_vision_encoder is vision.load_vision_encoder
    images = [world[i].image for i in range(3)]
    last, _ = vision.feature_maps(clip.image_encoder, vision.pixel_values(images, IMAGE_SIZE))
    expected = torch.nn.functional.adaptive_avg_pool2d(last, 2).flatten(2).transpose(1, 2)
    torch.testing.assert_close(image_features(clip.image_encoder, images, grid=2), expected)
