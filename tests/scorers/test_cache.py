"""The on-disk image-embedding cache: same embeddings, each image embedded once, across processes' shards."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from coxlmm.scorers.base import Scorer
from coxlmm.scorers.cache import CachedImages, image_key


class CountingScorer(Scorer):
    """Embeds an image as its mean RGB (a fixed, checkable function); counts the images it embeds."""

    def __init__(self, tag: str = "a"):
        self.tag, self.n_images = tag, 0

    def embed_images(self, images):
        self.n_images += len(images)
        x = torch.tensor(np.stack([np.asarray(im, dtype=np.float32).mean((0, 1)) for im in images])) if images \
            else torch.zeros(0, 3)
        return torch.nn.functional.normalize(x + 1.0, dim=-1)

    def embed_texts(self, texts):
        return torch.ones(len(texts), 3) / 3 ** 0.5

    def fingerprint(self):
        return {"model": "counting", "tag": self.tag}


def images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)) for _ in range(n)]


def test_cached_embeddings_equal_the_scorers_and_each_image_is_embedded_once(tmp_path: Path):
    ims = images(5)
    inner = CountingScorer()
    cached = CachedImages(inner, tmp_path)
    first = cached.embed_images(ims + ims[:2])  # duplicates within one call: embedded once
    assert inner.n_images == 5 and torch.equal(first, CountingScorer().embed_images(ims + ims[:2]))
    again = CachedImages(CountingScorer(), tmp_path)  # another job: reads the shard, embeds nothing
    assert torch.equal(again.embed_images(ims[::-1]), first[:5].flip(0)) and again.scorer.n_images == 0
    more = again.embed_images(images(2, seed=1) + ims[:1])
    assert again.scorer.n_images == 2 and more.shape == (3, 3)
    assert len(list((tmp_path).rglob("*.safetensors"))) == 2 and not list(tmp_path.rglob("*.tmp"))


def test_another_scorer_does_not_read_these_embeddings(tmp_path: Path):
    ims = images(3)
    CachedImages(CountingScorer("a"), tmp_path).embed_images(ims)
    other = CachedImages(CountingScorer("b"), tmp_path)
    other.embed_images(ims)
    assert other.scorer.n_images == 3 and other.fingerprint() == {"model": "counting", "tag": "b"}


def test_the_key_is_the_pixels_not_the_object():
    a, b = images(1)[0], images(1)[0]
    assert a is not b and image_key(a) == image_key(b)
    assert image_key(a) != image_key(a.convert("L")) and image_key(a) != image_key(images(1, seed=2)[0])
