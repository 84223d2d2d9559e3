"""A folder of images with a JSONL of captions: the simplest way to bring your own data.

`captions.jsonl`, one line per image: {"image": "relative/path.jpg", "captions": ["...", ...],
"id": optional, "split": optional, "attributes": optional dict}. When lines carry a `split`, only
those of the requested split are used; otherwise every line belongs to every split.
"""

from __future__ import annotations

import json
from pathlib import Path

from coxlmm.data.base import CaptionDataset, SampleRecord
from coxlmm.errors import CoxlmmError


class ImageFolderCaptions(CaptionDataset):
    name = "folder"

    def __init__(self, root: str, captions_file: str = "captions.jsonl", split: str = "train",
                 max_images: int | None = None):
        root_p = Path(root)
        ann = root_p / captions_file if not Path(captions_file).is_absolute() else Path(captions_file)
        if not root_p.is_dir():
            raise CoxlmmError(f"data.root={root!r} is not a directory of images.")
        if not ann.is_file():
            raise CoxlmmError(f"captions file {str(ann)!r} does not exist: write one JSON object per line, "
                              '{"image": "a.jpg", "captions": ["a dog on a couch"]}.')
        rows = []
        for n, line in enumerate(ann.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                row["image"], row["captions"]  # noqa: B018 - required keys
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise CoxlmmError(f"{ann}:{n} is not a valid caption line ({e}); expected "
                                  '{"image": "a.jpg", "captions": ["..."]}.') from e
            rows.append(row)
        if any("split" in r for r in rows):
            rows = [r for r in rows if r.get("split") == split]
        records = [
            SampleRecord(id=str(r.get("id", r["image"])), captions=list(r["captions"]),
                         path=str(root_p / r["image"]), attributes=r.get("attributes", {}))
            for r in rows
        ]
        super().__init__(records[:max_images] if max_images else records)
        self.split, self.ann = split, str(ann.resolve())

    def fingerprint(self) -> dict:
        return {**super().fingerprint(), "split": self.split, "captions_file": self.ann}
