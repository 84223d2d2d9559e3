"""COCO captions in the Karpathy split format (`dataset_coco.json`).

Each entry of `images` has `filepath` (e.g. val2014), `filename`, `split` (train | val | test |
restval), `sentences` (list of {"raw": caption}) and `cocoid`. The paper learns dictionaries on the
training images (train + restval, ~120k) and evaluates on the 5k test images.
"""

from __future__ import annotations

import json
from pathlib import Path

from coxlmm.data.base import CaptionDataset, SampleRecord
from coxlmm.errors import CoxlmmError

SPLITS = ("train", "val", "test", "restval")


class CocoKarpathy(CaptionDataset):
    name = "coco"

    def __init__(self, root: str, ann_file: str, split: str = "train", train_includes_restval: bool = True,
                 max_images: int | None = None):
        root_p, ann_p = Path(root), Path(ann_file)
        if not root_p.is_dir():
            raise CoxlmmError(f"data.root={root!r} is not a directory: point it at the COCO images root "
                              "(the folder holding train2014/ and val2014/).")
        if not ann_p.is_file():
            raise CoxlmmError(f"data.ann_file={ann_file!r} does not exist: point it at the Karpathy split "
                              "annotation file dataset_coco.json.")
        if split not in SPLITS:
            raise CoxlmmError(f"data split {split!r} is not one of {', '.join(SPLITS)}.")
        try:
            images = json.loads(ann_p.read_text())["images"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CoxlmmError(f"{ann_file} is not a Karpathy-format annotation file (expected a JSON object with "
                              f"an 'images' list): {e}") from e
        keep = {split, "restval"} if (split == "train" and train_includes_restval) else {split}
        records = [
            SampleRecord(
                id=str(im.get("cocoid", im.get("imgid", im["filename"]))),
                captions=[s["raw"].strip() for s in im["sentences"]],
                path=str(root_p / im.get("filepath", "") / im["filename"]),
            )
            for im in images
            if im["split"] in keep
        ]
        super().__init__(records[:max_images] if max_images else records)
        self.split, self.root, self.ann_file = split, str(root_p.resolve()), str(ann_p.resolve())

    def fingerprint(self) -> dict:
        return {**super().fingerprint(), "split": self.split, "root": self.root, "ann_file": self.ann_file}
