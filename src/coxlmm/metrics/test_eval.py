"""Test-sample evaluation (paper Table 1): do a test sample's top concepts describe it?

For each test sample x_i (row i of Z_test, with activations v_i = row i of V_test, shape (K,)):

    top-1 concept  k₁ = argmax_k v_ik (ties: lowest k);  top-3 = the 3 largest v_ik
    CS top-1 = CS(image_i, T_k₁)         CS top-3 = mean of CS(image_i, T_k) over the top-3
    BS top-1 = BS(T_k₁, captions_i)      BS top-3 = mean of BS(T_k, captions_i) over the top-3

CS / BS of a word set: scorers/words.py (BS takes the max F1 over the sample's reference captions,
as multi-reference BERTScore does; an empty word set scores 0). Each metric is reported as mean and
std (population, ddof = 0) over the test samples.

Baselines, scored the same way (each has a constructor flag to turn it off):

- Rnd-Words: random unit directions in the residual stream, decoded through `lmm.unembed` and
  filtered exactly like real concepts (`grounding.text.random_words`); test sample i gets word set
  i (cycling when there are more samples than `n_random_sets`).
- Noise-Imgs: a dictionary of the run's method and K (`ctx.make_dictionary`) learnt from the LMM's
  states at layer `ctx.layer` for max(`n_noise`, K) seeded uniform-noise images (of the test
  images' size), grounded in words the same way; test samples are encoded with it and scored
  through its top-1 concept. Noise images never make the model say the target token, so the state
  taken is the one predicting the *first generated token* (the prefill's last position), not a
  token-matched one: one forward per batch of noise images.
- GT-captions (reference column): CS between the image and its first reference caption; BS of the
  first reference against the others (max F1; samples with one caption are skipped).

Keys (flat floats): cs_top1_mean/std, cs_top3_mean/std, bs_top1_mean/std, bs_top3_mean/std,
top1_no_words_frac, v_all_zero_frac, n_test_scored; rnd_words_cs_top1_mean/std,
rnd_words_bs_top1_mean/std, rnd_words_no_words_frac; noise_imgs_cs_top1_mean/std,
noise_imgs_bs_top1_mean/std, noise_imgs_no_words_frac; gt_captions_cs_mean/std,
gt_captions_bs_mean/std. CS keys need `ctx.scorer.clip`, BS keys `ctx.scorer.bert`; the Rnd-Words
and Noise-Imgs baselines need `ctx.lmm` (and Noise-Imgs `ctx.make_dictionary`).
Artefact: "scorer_fingerprint" (a dict: scorer models, layers and weight hashes).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from PIL import Image

from coxlmm.metrics.base import EvalContext
from coxlmm.scorers.base import batches, clip_score
from coxlmm.scorers.words import words_bert_scores, words_clip_scores

log = logging.getLogger(__name__)


# --- pure helpers ---------------------------------------------------------------------------------------
def mean_std(prefix: str, scores: torch.Tensor) -> dict[str, float]:
    """{prefix_mean, prefix_std} of (n,) scores (population std); {} when n = 0."""
    if scores.numel() == 0:
        return {}
    s = scores.double()
    return {f"{prefix}_mean": float(s.mean()), f"{prefix}_std": float(s.std(unbiased=False))}


def top_concepts(V: torch.Tensor, k: int) -> torch.Tensor:
    """(M, K) activations -> (M, min(k, K)) concept indices, largest activation first (ties: lowest index)."""
    k = min(k, V.shape[1])
    # A stable descending sort keeps the lowest index first among equal activations (all-zero rows).
    return torch.sort(V.float(), dim=1, descending=True, stable=True).indices[:, :k]


def noise_images(n: int, size: tuple[int, int], seed: int) -> list[Image.Image]:
    """n RGB images of i.i.d. uniform pixel noise, reproducible for a seed."""
    rng = np.random.default_rng(seed)
    w, h = size
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB") for _ in range(n)]


# --- model and data I/O ----------------------------------------------------------------------------
def embed_dataset_images(clip: Any, dataset: Any, indices: list[int], batch_size: int = 64) -> torch.Tensor:
    """(n, D) CLIP embeddings of dataset[indices[i]].image, loading `batch_size` images at a time
    (a COCO test split does not fit in memory as decoded images)."""
    chunks = batches(list(indices), batch_size)
    return torch.cat([clip.embed_images([dataset[i].image for i in chunk]) for chunk in chunks])


def noise_states(lmm: Any, layer: int, size: tuple[int, int], n: int, batch_size: int, seed: int) -> torch.Tensor:
    """(n, H) states at `layer` predicting the first generated token, for n seeded noise images."""
    from coxlmm.extraction.capture import generate_with_states

    layer = lmm.resolve_layer(layer)
    rows = []
    for chunk in batches(noise_images(n, size, seed), batch_size):
        inputs = {k: v.to(lmm.device) if torch.is_tensor(v) else v for k, v in lmm.prepare(chunk).items()}
        _, states = generate_with_states(lmm, inputs, [layer], max_new_tokens=1)
        rows.append(states[layer][:, 0].float().cpu())
    return torch.cat(rows)


def grounding_settings(ctx: EvalContext, n_top: int | None, n_words: int | None) -> tuple[int, int]:
    """n_top / n_words used to ground the run's concepts (from `concepts.extra` when recorded there)."""
    extra = getattr(ctx.concepts, "extra", {}) or {}
    return int(n_top or extra.get("n_top", 50)), int(n_words or extra.get("n_words", 10))


# --- the metric -----------------------------------------------------------------------------------------
class TestSampleScores:
    """Paper Table 1 on the test split; see the module doc for the definitions and keys.

    Args:
        top_k: concepts averaged in the "top-3" scores (keys say top{top_k}).
        rnd_words, noise_imgs, gt_captions: compute each baseline.
        n_noise: noise images for the Noise-Imgs dictionary; noise_batch_size: per LMM forward.
        n_random_sets: distinct Rnd-Words sets drawn (test samples cycle through them).
        n_top, n_words: logit-lens settings for baseline words (None: the run's, else 50 / 10).
        seed: baselines' seed (None: ctx.seed).
    """

    name = "test_samples"
    __test__ = False  # not a pytest class, despite its name

    def __init__(self, top_k: int = 3, rnd_words: bool = True, noise_imgs: bool = True, gt_captions: bool = True,
                 n_noise: int = 64, noise_batch_size: int = 16, n_random_sets: int = 256,
                 n_top: int | None = None, n_words: int | None = None, seed: int | None = None):
        self.top_k, self.rnd_words, self.noise_imgs, self.gt_captions = top_k, rnd_words, noise_imgs, gt_captions
        self.n_noise, self.noise_batch_size, self.n_random_sets = n_noise, noise_batch_size, n_random_sets
        self.n_top, self.n_words, self.seed = n_top, n_words, seed
        self._warned: set[str] = set()

    def _warn_once(self, key: str, msg: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(msg)

    def __call__(self, ctx: EvalContext) -> dict[str, float]:
        scorer = ctx.scorer
        clip, bert = getattr(scorer, "clip", None), getattr(scorer, "bert", None)
        if scorer is None or (clip is None and bert is None):
            self._warn_once("scorer", "test-sample CS/BS skipped: no scorer configured "
                                      "(use scorer=embedded or scorer=clip)")
            return {}
        if ctx.Z_test is None or ctx.V_test is None or len(ctx.V_test) == 0:
            self._warn_once("test", "test-sample CS/BS skipped: no test features (test_split empty or no sample "
                                    "predicts the token)")
            return {}
        if hasattr(scorer, "fingerprint"):  # written beside metrics.json: which models and weights gave CS / BS
            ctx.artifacts["scorer_fingerprint"] = scorer.fingerprint()
        V = ctx.V_test
        M = V.shape[0]
        img_emb = embed_dataset_images(clip, ctx.test_dataset, ctx.test_indices[:M]) if clip is not None else None
        s = _SampleScorer(clip, bert, img_emb, [list(ctx.test_records[i].captions) for i in range(M)])

        words = ctx.concepts.words
        top = top_concepts(V, self.top_k)  # (M, k)
        per_rank = [[words[k] for k in top[:, r].tolist()] for r in range(top.shape[1])]
        out = {"n_test_scored": float(M), "v_all_zero_frac": float((V.float().abs().sum(1) == 0).float().mean()),
               "top1_no_words_frac": float(np.mean([not w for w in per_rank[0]]))}
        out |= s.summary("", "_top1", [s.scores(per_rank[0])])
        out |= s.summary("", f"_top{self.top_k}", [s.scores(ws) for ws in per_rank])
        if self.rnd_words:
            out |= self._rnd_words(ctx, s)
        if self.noise_imgs:
            out |= self._noise_imgs(ctx, s)
        if self.gt_captions:
            out |= s.gt_captions()
        return out

    def _rnd_words(self, ctx: EvalContext, s: "_SampleScorer") -> dict[str, float]:
        from coxlmm.grounding.text import random_words

        if ctx.lmm is None:
            self._warn_once("rnd", "Rnd-Words baseline skipped: no LMM in the evaluation context")
            return {}
        n_top, n_words = grounding_settings(ctx, self.n_top, self.n_words)
        M = len(s.refs)
        n_sets = min(M, self.n_random_sets)
        pool = random_words(ctx.lmm, n_sets, n_top=n_top, n_words=n_words,
                            seed=ctx.seed if self.seed is None else self.seed)
        sets = [pool[i % n_sets] for i in range(M)]
        return s.summary("rnd_words_", "_top1", [s.scores(sets)]) | {
            "rnd_words_no_words_frac": float(np.mean([not w for w in sets]))}

    def _noise_imgs(self, ctx: EvalContext, s: "_SampleScorer") -> dict[str, float]:
        from coxlmm.grounding.text import concept_words

        if ctx.lmm is None or ctx.make_dictionary is None:
            self._warn_once("noise", "Noise-Imgs baseline skipped: needs ctx.lmm and ctx.make_dictionary")
            return {}
        seed = ctx.seed if self.seed is None else self.seed
        n = max(self.n_noise, ctx.concepts.n_concepts)  # k-means / Simple need at least K samples
        Z_noise = noise_states(ctx.lmm, ctx.layer, self._noise_size(ctx), n, self.noise_batch_size, seed)
        dictionary = ctx.make_dictionary(seed)
        dictionary.fit(Z_noise.to(device=ctx.Z_test.device, dtype=ctx.Z_test.dtype))
        n_top, n_words = grounding_settings(ctx, self.n_top, self.n_words)
        words = concept_words(ctx.lmm, dictionary.U.detach().float(), n_top=n_top, n_words=n_words)
        sets = [words[k] for k in top_concepts(dictionary.encode(ctx.Z_test), 1)[:, 0].tolist()]
        ctx.artifacts["noise_imgs_words"] = words  # saved as JSON: what the noise dictionary says
        return s.summary("noise_imgs_", "_top1", [s.scores(sets)]) | {
            "noise_imgs_no_words_frac": float(np.mean([not w for w in sets]))}

    def _noise_size(self, ctx: EvalContext) -> tuple[int, int]:
        """Noise images take the size of the test images (the first one)."""
        im = ctx.test_dataset[ctx.test_indices[0]].image if ctx.test_dataset is not None and ctx.test_indices else None
        return im.size if im is not None else (224, 224)


class _SampleScorer:
    """CS / BS of word sets for the M test samples, with the images embedded once.
    img_emb (M, D) or None (no CLIP scorer); refs: M lists of reference captions."""

    def __init__(self, clip: Any, bert: Any, img_emb: torch.Tensor | None, refs: list[list[str]]):
        self.clip, self.bert, self.img_emb, self.refs = clip, bert, img_emb, refs

    def scores(self, word_sets: list[list[str]]) -> dict[str, torch.Tensor]:
        """{"cs": (M,), "bs": (M,)} of word_sets[i] for sample i (a key only where its scorer exists)."""
        out = {}
        if self.clip is not None:
            out["cs"] = words_clip_scores(self.clip, self.img_emb, word_sets)
        if self.bert is not None:
            out["bs"] = words_bert_scores(self.bert, word_sets, self.refs)
        return out

    @staticmethod
    def summary(prefix: str, suffix: str, ranks: list[dict[str, torch.Tensor]]) -> dict[str, float]:
        """Average each score over ranks (top-k concepts), then mean ± std over samples:
        keys {prefix}cs{suffix}_mean ... ."""
        out: dict[str, float] = {}
        for metric in ranks[0]:
            out |= mean_std(f"{prefix}{metric}{suffix}", torch.stack([r[metric] for r in ranks]).mean(0))
        return out

    def gt_captions(self) -> dict[str, float]:
        """GT-captions: CS(image, first reference); BS(first reference, the others) (max F1)."""
        out: dict[str, float] = {}
        if self.clip is not None:
            first = self.clip.embed_texts([r[0] for r in self.refs])
            out |= mean_std("gt_captions_cs", clip_score(self.img_emb, first))
        multi = [r for r in self.refs if len(r) > 1]
        if self.bert is not None and multi:
            out |= mean_std("gt_captions_bs", self.bert.f1_max([r[0] for r in multi], [r[1:] for r in multi]))
        return out
