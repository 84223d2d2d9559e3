"""A tiny folder dataset in the `folder` format (images + captions.jsonl), made on the fly."""

import json

import numpy as np
import pytest
from PIL import Image


def make_folder_dataset(root, n_train=6, n_test=3, words=("dog", "giraffe", "sofa"), corrupt=0):
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n_train + n_test):
        name = f"img{i:03d}.png"
        if i < corrupt:
            (root / name).write_bytes(b"not a png")
        else:
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / name)
        caps = [f"A {w} in picture {i}." for w in words] + ["Something else entirely."]
        lines.append({"image": name, "captions": caps, "split": "train" if i < n_train else "test"})
    (root / "captions.jsonl").write_text("\n".join(json.dumps(l) for l in lines))
    return root


@pytest.fixture
def folder_data(tmp_path):
    return make_folder_dataset(tmp_path / "data")
