"""Image embeddings on disk: the jobs of a sweep embed each image once per CLIP-like scorer.

`CachedImages` wraps a `Scorer`. `embed_images(images)` keys each image by a SHA-1 of its mode, size
and pixels, takes the embeddings the cache already holds, embeds only the others with the wrapped
scorer, and writes those as a new shard. Shards live in `<root>/<fingerprint hash>/`, one safetensors
file per write (the image keys in its metadata), written atomically (`coxlmm.io.atomic_write`): concurrent
jobs never lock and never read half a file; at worst two of them embed the same image once each.
The directory is named by the wrapped scorer's fingerprint (model, weights hash, settings), so another
scorer never reads these embeddings. Texts are not cached (they are cheap and rarely repeat).

Why: in a cached `make paper` job the scorer's image embeddings (test images for Table 1, each
concept's top images for grounding) were ~2 s of ~10 s, the same images for every method and seed.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from coxlmm.io import atomic_write, content_key, digest
from coxlmm.scorers.base import Scorer


def image_key(image: Image.Image) -> str:
    """SHA-1 of an image's mode, size and pixel bytes."""
    return digest([f"{image.mode}|{image.size}", image.tobytes()], "sha1")


class CachedImages(Scorer):
    """A `Scorer` whose image embeddings are cached on disk under `root` (see the module doc)."""

    def __init__(self, scorer: Scorer, root: str | Path):
        self.scorer = scorer
        self.batch_size = getattr(scorer, "batch_size", Scorer.batch_size)
        self.dir = Path(root) / content_key(scorer.fingerprint())
        self._known: dict[str, torch.Tensor] = {}
        self._read: set[str] = set()

    def embed_images(self, images: list[Image.Image]) -> torch.Tensor:
        if not images:
            return self.scorer.embed_images([])
        keys = [image_key(im) for im in images]
        self._load()
        todo = list(dict.fromkeys(k for k in keys if k not in self._known))  # each new image once
        if todo:
            first = {k: i for i, k in reversed(list(enumerate(keys)))}
            emb = self.scorer.embed_images([images[first[k]] for k in todo]).float()
            self._write(todo, emb)
            self._known.update(zip(todo, emb))
        return torch.stack([self._known[k] for k in keys])

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        return self.scorer.embed_texts(texts)

    def fingerprint(self) -> dict[str, Any]:
        return self.scorer.fingerprint()

    # --- the shards (I/O) ---
    def _load(self) -> None:
        """Read the shards this process has not read yet (other jobs may have written some)."""
        if not self.dir.is_dir():
            return
        for path in sorted(self.dir.glob("*.safetensors")):
            if path.name in self._read:
                continue
            with safe_open(str(path), framework="pt") as f:
                keys, emb = json.loads(f.metadata()["keys"]), f.get_tensor("emb")
            self._known.update(zip(keys, emb))
            self._read.add(path.name)

    def _write(self, keys: list[str], emb: torch.Tensor) -> None:
        name = f"{uuid.uuid4().hex}.safetensors"
        atomic_write(self.dir / name, lambda tmp: save_file({"emb": emb.contiguous()}, str(tmp),
                                                            metadata={"keys": json.dumps(keys)}))
        self._read.add(name)

