"""Pure parts of the embedded scorer's training recipe (coxlmm.train.scorer)."""

from __future__ import annotations

import pytest
import torch

from coxlmm.train.scorer import multi_hot, multi_positive_clip_loss, positives, retrieval_accuracy


def test_positives_captions_by_scene_word_lists_by_subset():
    img_scene = torch.tensor([0, 1])
    img_words = torch.stack([multi_hot(["red", "circle", "large", "left"]),
                             multi_hot(["blue", "star", "small", "top"])])
    txt_scene = torch.tensor([0, -1, -1, -1])  # caption of scene 0; three word lists
    txt_words = torch.stack([multi_hot(["red", "circle", "large", "left"]), multi_hot(["red", "circle"]),
                             multi_hot(["star"]), multi_hot(["red", "star"])])
    assert positives(img_scene, img_words, txt_scene, txt_words).tolist() == [
        [True, True, False, False],
        [False, False, True, False],  # "red, star" is true of neither image
    ]


def test_multi_positive_loss_reduces_to_clip_loss_with_one_positive_each():
    logits = torch.randn(4, 4, generator=torch.Generator().manual_seed(0))
    clip = 0.5 * (torch.nn.functional.cross_entropy(logits, torch.arange(4))
                  + torch.nn.functional.cross_entropy(logits.T, torch.arange(4)))
    loss = multi_positive_clip_loss(logits, torch.eye(4, dtype=torch.bool))
    assert float(loss) == pytest.approx(float(clip), abs=1e-6)
    # A distractor column (true of no image) only adds a negative: finite loss, larger than without it.
    with_neg = torch.cat([logits, torch.full((4, 1), 5.0)], 1)
    pos = torch.cat([torch.eye(4, dtype=torch.bool), torch.zeros(4, 1, dtype=torch.bool)], 1)
    assert float(multi_positive_clip_loss(with_neg, pos)) > float(clip)


def test_retrieval_accuracy():
    img = torch.eye(3)
    txt = torch.tensor([[1.0, 0, 0], [0, 0.1, 1], [0, 1, 0.1]])  # images 1 and 2 rank each other's text first
    acc = retrieval_accuracy(img, txt, torch.eye(3, dtype=torch.bool), ks=(1, 2))
    assert acc == {"top1": pytest.approx(1 / 3), "top2": 1.0}
