"""Sample types and the base captioning dataset every data source derives from.

A dataset is a list of lightweight `SampleRecord`s (id, captions, where the image is, optional
ground-truth attributes) plus a way to load one image. A dataset with ground-truth factors declares
them (`factor_values`) and may label what a generated caption's prefix already says (`annotate`). `__getitem__` returns a `Sample` whose
`image` is None when the file is unreadable: the extraction counts and skips those, the run goes on.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image


@dataclass
class SampleRecord:
    id: str
    captions: list[str]
    path: str | None = None  # image file, or None for generated images
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass
class Sample:
    id: str
    image: Image.Image | None
    captions: list[str]
    attributes: dict[str, Any] = field(default_factory=dict)
    index: int = -1  # position in the dataset (stable key for caching / resuming)


def contains_word(text: str, word: str) -> bool:
    """True when `word` occurs in `text` as a whole word, case-insensitive."""
    return re.search(rf"(?<![A-Za-z0-9]){re.escape(word)}(?![A-Za-z0-9])", text, re.IGNORECASE) is not None


class CaptionDataset(torch.utils.data.Dataset):
    """Base class: subclasses fill `self.records` and may override `load_image`.

    `name` and `fingerprint()` identify the data for the feature-store key.
    """

    name: str = "captions"

    def __init__(self, records: list[SampleRecord]):
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def load_image(self, record: SampleRecord) -> Image.Image:
        if record.path is None:
            raise NotImplementedError(f"{type(self).__name__} has no image path for {record.id}")
        with Image.open(record.path) as im:
            return im.convert("RGB")

    def __getitem__(self, i: int) -> Sample:
        rec = self.records[i]
        try:
            image = self.load_image(rec)
        except Exception as e:  # corrupt / unreadable: counted and skipped by the extraction
            warnings.warn(f"skipping unreadable image {rec.path or rec.id}: {e}", stacklevel=2)
            image = None
        return Sample(id=rec.id, image=image, captions=list(rec.captions), attributes=dict(rec.attributes), index=i)

    def fingerprint(self) -> dict[str, Any]:
        """Everything that identifies which samples this dataset yields (for cache keys)."""
        return {"name": self.name, "n": len(self.records), "first": self.records[0].id if self.records else None,
                "last": self.records[-1].id if self.records else None}

    def factor_values(self) -> dict[str, list[str]]:
        """The ground-truth factors this dataset labels and their values ({factor: [value, ...]}),
        e.g. the shapes world's {"shape": ["circle", ...], "colour": [...], ...}; {} = no factors.
        Value words are never dropped as stopwords by the word filter, and recovery scores them."""
        return {}

    def annotate(self, record: SampleRecord | Sample, caption: str, prefix: str, token: str) -> dict[str, Any]:
        """Per selected sample: what the text before the matched token already said (JSON-friendly).

        caption: the model's generated caption; prefix: the generated text before the matched token
        t (the state that predicts t has read exactly this). {} = the dataset has no such labels
        (the shapes world returns the target object, its companion, text-known / image-only factors,
        the caption style and a held-out-pair flag)."""
        return {}

    def named_target(self, caption: str, token: str) -> dict[str, Any] | None:
        """The target object's factors as a caption names them ({factor: value}), or None: datasets with
        a caption grammar (the world) can read a steered caption back."""
        return None

    def indices_with_word(self, word: str) -> list[int]:
        """Indices of samples with at least one ground-truth caption containing `word` (whole word)."""
        return [i for i, r in enumerate(self.records) if any(contains_word(c, word) for c in r.captions)]


def collate_samples(samples: list[Sample]) -> list[Sample]:
    """Keep samples as a list: each adapter's processor batches images its own way."""
    return list(samples)
