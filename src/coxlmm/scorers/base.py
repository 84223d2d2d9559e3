"""Scorer interface and the CLIPScore formula.

A *CLIP-like scorer* maps images and texts into one embedding space:

    embed_images(images)  list of n PIL images -> E_img (n, D), float32, rows L2-normalised
    embed_texts(texts)    list of n strings    -> E_txt (n, D), float32, rows L2-normalised

CLIPScore (Hessel et al., 2021), per sample, with w = 2.5:

    CS(image_i, text_i) = w · max(cos(E_img[i], E_txt[i]), 0)

The paper scores a concept's words T_k through the text `words_text(T_k)`:
"A photo is described by the words w1, w2, …" (the authors' code).

`Scorers(clip, bert)` bundles a CLIP-like scorer and a BERTScore scorer (scorers/bertscore.py);
the pipeline builds it from `conf/scorer/*.yaml` once and hands it to metrics as `ctx.scorer`.
Either part may be None: metrics then skip the scores that need it.
"""

from __future__ import annotations

import abc
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

if TYPE_CHECKING:
    from coxlmm.scorers.bertscore import BertScorer

CLIP_SCORE_WEIGHT = 2.5
WORDS_TEMPLATE = "A photo is described by the words {}"


# --- pure functions ---------------------------------------------------------------------------------
def clip_score(img_emb: torch.Tensor, txt_emb: torch.Tensor, w: float = CLIP_SCORE_WEIGHT) -> torch.Tensor:
    """(n, D), (n, D) -> (n,): w · max(cos(img_i, txt_i), 0), one score per row pair.

    Rows are normalised here too, so unnormalised embeddings give the same value.
    """
    if img_emb.shape != txt_emb.shape:
        raise ValueError(f"clip_score needs paired rows of equal shape, got {tuple(img_emb.shape)} "
                         f"and {tuple(txt_emb.shape)}")
    cos = torch.nn.functional.cosine_similarity(img_emb.float(), txt_emb.float(), dim=-1)
    return w * cos.clamp(min=0.0)  # clamp per sample, before any averaging


def words_text(words: list[str]) -> str:
    """The text a concept's words are scored through: "A photo is described by the words red, circle"."""
    return WORDS_TEMPLATE.format(", ".join(words))


def l2_normalise(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.float(), dim=-1)


# --- interfaces ---------------------------------------------------------------------------------------
class Scorer(abc.ABC):
    """A CLIP-like image/text embedder (see the module doc). Subclasses batch and run without grad."""

    batch_size: int = 32

    @abc.abstractmethod
    def embed_images(self, images: list[Image.Image]) -> torch.Tensor:
        """n PIL images -> (n, D) float32, L2-normalised rows."""

    @abc.abstractmethod
    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        """n strings -> (n, D) float32, L2-normalised rows."""

    @abc.abstractmethod
    def fingerprint(self) -> dict[str, Any]:
        """What identifies the scores: model id or path, weights hash, settings."""

    def score(self, images: list[Image.Image], texts: list[str]) -> torch.Tensor:
        """CLIPScore of each (images[i], texts[i]) pair: (n,)."""
        return clip_score(self.embed_images(images), self.embed_texts(texts))


def batches(items: list, size: int):
    """Consecutive slices of at most `size` items."""
    for start in range(0, len(items), max(1, size)):
        yield items[start:start + size]


@dataclass
class Scorers:
    """The `ctx.scorer` bundle: `clip` (a `Scorer`, for CS) and `bert` (a `BertScorer`, for BS)."""

    clip: Scorer | None = None
    bert: "BertScorer | None" = None

    @staticmethod
    def of(scorer: Any, what: str) -> tuple[Scorer | None, "BertScorer | None"]:
        """(clip, bert) of a services' scorer (None, None when none is configured: `what` is skipped,
        with a warning naming the scorer configs)."""
        clip, bert = getattr(scorer, "clip", None), getattr(scorer, "bert", None)
        if clip is None and bert is None:
            logging.getLogger("coxlmm.metrics").warning(
                "%s skipped: no scorer configured (use scorer=embedded or scorer=clip)", what)
        return clip, bert

    def fingerprint(self) -> dict[str, Any]:
        return {"clip": self.clip.fingerprint() if self.clip is not None else None,
                "bert": self.bert.fingerprint() if self.bert is not None else None}
