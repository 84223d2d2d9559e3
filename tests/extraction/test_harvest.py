"""One generation for several target tokens (`extraction.tokens`): each image is captioned once, and every
token's entry is the one a job of that token alone would write."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from coxlmm.data.folder import ImageFolderCaptions
from coxlmm.extraction import ExtractionSettings, FeatureStore, extract
from coxlmm.extraction.lightning import ExtractionModule
from coxlmm.io import entry_lock
from coxlmm.models.hf import HFVisionLM

TRAINER = {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False}
# The tiny LLaVA captions every image "A dog sits on the red Sofa near an armadillo."; the reference
# captions decide which images are a token's candidates.
REFERENCES = ["A dog."] * 4 + ["A sofa."] * 4 + ["A dog on a sofa with an armadillo."] * 2
CANDIDATES = {"dog": {0, 1, 2, 3, 8, 9}, "sofa": {4, 5, 6, 7, 8, 9}, "armadillo": {8, 9}}


@pytest.fixture(scope="module")
def lmm(tiny_llava_path):
    return HFVisionLM(name_or_path=str(tiny_llava_path))


@pytest.fixture
def ds(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    rng = np.random.default_rng(0)
    lines = []
    for i, caption in enumerate(REFERENCES):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / f"img{i}.png")
        lines.append(json.dumps({"image": f"img{i}.png", "captions": [caption], "split": "train"}))
    (root / "captions.jsonl").write_text("\n".join(lines))
    return ImageFolderCaptions(str(root), split="train")


@pytest.fixture
def captioned(monkeypatch):
    """Every image the extraction captions, in order."""
    seen: list[int] = []
    inputs = ExtractionModule.inputs

    def counting(self, images):
        seen.extend([1] * len(images))
        return inputs(self, images)

    monkeypatch.setattr(ExtractionModule, "inputs", counting)
    return seen


def settings(**kw) -> ExtractionSettings:
    return ExtractionSettings(batch_size=4, max_new_tokens=20, **kw)


def entry(root, ds, lmm, token) -> FeatureStore:
    from coxlmm.extraction import store_fields, stored_layers

    return FeatureStore(root, store_fields(lmm.fingerprint(), ds, token, stored_layers(lmm.num_layers, [], "all"),
                                           settings()))


def test_one_generation_fills_every_tokens_entry_as_its_own_job_would(lmm, ds, tmp_path, captioned):
    root = tmp_path / "store"
    s = settings(tokens=("dog", "sofa", "armadillo", "red"))  # red: generated, but no reference says it
    dog = extract(lmm, ds, "dog", [-1], s, str(root), TRAINER)
    assert len(captioned) == 10  # the union of the candidates, once (not 6 + 6 + 2)
    assert not entry(root, ds, lmm, "red").complete
    for token in ("sofa", "armadillo"):
        assert entry(root, ds, lmm, token).complete
        before = len(captioned)
        again = extract(lmm, ds, token, [-1], settings(), str(root), TRAINER)  # the job of that token
        assert len(captioned) == before and again.dir == entry(root, ds, lmm, token).dir
        assert set(again.manifest()["harvested_with"]) == {"dog", "sofa", "armadillo"}
    for token in ("dog", "sofa", "armadillo"):  # the same entries as one token per generation
        alone = extract(lmm, ds, token, [-1], settings(), str(tmp_path / f"alone-{token}"), TRAINER)
        shared = dog if token == "dog" else entry(root, ds, lmm, token)
        assert alone.key == shared.key
        Z1, r1 = alone.load([0, 2])
        Z2, r2 = shared.load([0, 2])
        keys = ("index", "id", "caption", "status", "position", "token_ids", "prefix_ids")
        assert [{k: r.get(k) for k in keys} for r in r2] == [{k: r.get(k) for k in keys} for r in r1]
        assert {r["index"] for r in r2} == CANDIDATES[token]
        for l in Z1:
            torch.testing.assert_close(Z2[l], Z1[l], atol=1e-5, rtol=1e-5)


def test_an_entry_another_job_holds_is_left_to_it(lmm, ds, tmp_path, captioned):
    root = tmp_path / "store"
    sofa = entry(root, ds, lmm, "sofa")
    with entry_lock(sofa.dir, "sofa, held by another job"):
        extract(lmm, ds, "dog", [-1], settings(tokens=("dog", "sofa")), str(root), TRAINER)
    assert len(captioned) == 6 and not sofa.complete and entry(root, ds, lmm, "dog").complete


@pytest.mark.parametrize("share, harvested", [(1, {"dog", "sofa", "armadillo"}), (2, {"dog", "sofa"}), (3, {"dog"})])
def test_jobs_running_at_once_divide_the_tokens(lmm, ds, tmp_path, captioned, share, harvested):
    root = tmp_path / "store"
    extract(lmm, ds, "dog", [-1], settings(tokens=("dog", "sofa", "armadillo"), share=share), str(root), TRAINER)
    assert {t for t in CANDIDATES if entry(root, ds, lmm, t).complete} == harvested
    assert len(captioned) == len(set().union(*(CANDIDATES[t] for t in harvested)))
