"""Grounding quality (paper Fig. 3): do a concept's words describe its most activating images?

For each concept u_k with words T_k (non-empty) and most activating training samples X_k,MAS
(`concepts.top_indices[k]`, rows of Z_train):

    CS_k     = mean over x in X_k,MAS of CS(image_x, T_k)
    CS_k^rnd = mean over x in X_k,MAS of CS(image_x, R_k)
    BS_k     = mean over x in X_k,MAS of BS(T_k, captions_x)      (max F1 over the references)
    BS_k^rnd = the same with R_k

R_k: |T_k| random words, drawn (seeded, without replacement) from the pool of words of
`n_random_dirs` random residual-stream directions decoded and filtered like real concepts
(`grounding.text.random_words`), so random words have the same count and pass the same filter.
CS / BS of a word set: scorers/words.py.

Keys: grounding_cs_mean, grounding_cs_random_mean, grounding_cs_win_rate (share of concepts with
CS_k > CS_k^rnd), the same three for bs, and grounding_n_concepts (concepts with words; the others
are skipped). Artefacts: "grounding_points" (one dict per concept) and "grounding_scatter" (a
matplotlib Figure: x = random-words score, y = concept-words score, one point per concept, y = x line).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from coxlmm.metrics.base import EvalContext
from coxlmm.metrics.test_eval import embed_dataset_images, grounding_settings
from coxlmm.scorers.words import words_bert_scores, words_clip_scores

log = logging.getLogger(__name__)


def random_word_sets(pool: list[str], counts: list[int], seed: int) -> list[list[str]]:
    """One random word set per count, drawn without replacement from `pool` (with replacement if too small)."""
    rng = np.random.default_rng(seed)
    return [[pool[i] for i in rng.choice(len(pool), size=n, replace=n > len(pool))] if pool and n else []
            for n in counts]


def scatter_figure(points: list[dict[str, Any]], metrics: list[str]):
    """Figure with one panel per metric ("cs", "bs"): concept words (y) vs random words (x), y = x line."""
    from matplotlib.figure import Figure  # no pyplot: no global figure state

    fig = Figure(figsize=(4.2 * len(metrics), 4.0), layout="constrained")
    for ax, m in zip(fig.subplots(1, len(metrics), squeeze=False)[0], metrics):
        x = np.array([p[f"{m}_random"] for p in points])
        y = np.array([p[m] for p in points])
        lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
        pad = 0.05 * (hi - lo or 1.0)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="gray", lw=1, ls="--", label="y = x")
        ax.scatter(x, y, s=22, color="tab:blue", label="concept")
        for p, xi, yi in zip(points, x, y):
            ax.annotate(str(p["concept"]), (xi, yi), fontsize=6, xytext=(2, 2), textcoords="offset points")
        ax.set(xlabel=f"{m.upper()}, random words", ylabel=f"{m.upper()}, concept words",
               title=f"{m.upper()}: words beat random for {np.mean(y > x):.0%} of {len(points)} concepts",
               xlim=(lo - pad, hi + pad), ylim=(lo - pad, hi + pad))
        ax.set_title(ax.get_title(), fontsize=9)
        ax.legend(fontsize=7, loc="best")
    return fig


class GroundingQuality:
    """Paper Fig. 3; see the module doc.

    Args:
        n_images: most activating samples used per concept (None: all of `top_indices[k]`, i.e. N_MAS).
        n_random_dirs: random directions whose words form the random-word pool.
        n_top, n_words: logit-lens settings of the random words (None: the run's, else 50 / 10).
        seed: random-word seed (None: ctx.seed).
        figure: add the scatter figure to ctx.artifacts.
    """

    name = "grounding_quality"

    def __init__(self, n_images: int | None = None, n_random_dirs: int = 64, n_top: int | None = None,
                 n_words: int | None = None, seed: int | None = None, figure: bool = True):
        self.n_images, self.n_random_dirs, self.n_top, self.n_words = n_images, n_random_dirs, n_top, n_words
        self.seed, self.figure = seed, figure
        self._warned: set[str] = set()

    def _warn_once(self, key: str, msg: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(msg)

    def _random_pool(self, ctx: EvalContext, seed: int) -> list[str]:
        from coxlmm.grounding.text import random_words

        n_top, n_words = grounding_settings(ctx, self.n_top, self.n_words)
        pool: list[str] = []
        for ws in random_words(ctx.lmm, self.n_random_dirs, n_top=n_top, n_words=n_words, seed=seed):
            pool += [w for w in ws if w not in pool]
        return pool

    def __call__(self, ctx: EvalContext) -> dict[str, float]:
        scorer = ctx.scorer
        clip, bert = getattr(scorer, "clip", None), getattr(scorer, "bert", None)
        if clip is None and bert is None:
            self._warn_once("scorer", "grounding quality skipped: no scorer configured "
                                      "(use scorer=embedded or scorer=clip)")
            return {}
        concepts = ctx.concepts
        ks = [k for k in range(concepts.n_concepts) if concepts.words[k] and concepts.top_indices[k]]
        if not ks:
            self._warn_once("words", "grounding quality skipped: no concept has both words and top samples")
            return {}
        seed = ctx.seed if self.seed is None else self.seed
        if ctx.lmm is None:
            self._warn_once("lmm", "grounding quality: no LMM in the context, so no random-word baseline")
            pool = []
        else:
            pool = self._random_pool(ctx, seed)
        random_sets = random_word_sets(pool, [len(concepts.words[k]) for k in ks], seed) if pool else None

        # One (concept, image) pair per row: concept k repeated over its top samples.
        rows = [(j, r) for j, k in enumerate(ks) for r in concepts.top_indices[k][: self.n_images]]
        owner = torch.tensor([j for j, _ in rows])
        word_sets = [concepts.words[ks[j]] for j, _ in rows]
        rnd_sets = [random_sets[j] for j, _ in rows] if random_sets else None
        per_pair: dict[str, torch.Tensor] = {}
        if clip is not None:
            distinct = sorted({r for _, r in rows})  # a sample may top several concepts: embed it once
            where = {r: i for i, r in enumerate(distinct)}
            emb = embed_dataset_images(clip, ctx.train_dataset, [ctx.train_indices[r] for r in distinct])
            img_emb = emb[[where[r] for _, r in rows]]
            per_pair["cs"] = words_clip_scores(clip, img_emb, word_sets)
            if rnd_sets:
                per_pair["cs_random"] = words_clip_scores(clip, img_emb, rnd_sets)
        if bert is not None:
            refs = [list(ctx.train_records[r].captions) for _, r in rows]
            per_pair["bs"] = words_bert_scores(bert, word_sets, refs)
            if rnd_sets:
                per_pair["bs_random"] = words_bert_scores(bert, rnd_sets, refs)

        # Per concept: the mean over its images.
        counts = torch.bincount(owner, minlength=len(ks)).double()
        per_concept = {m: torch.zeros(len(ks), dtype=torch.float64).index_add_(0, owner, v.double()) / counts
                       for m, v in per_pair.items()}
        points = [{"concept": k, "words": list(concepts.words[k]), "n_images": int(counts[j]),
                   **({"random_words": random_sets[j]} if random_sets else {}),
                   **{m: float(v[j]) for m, v in per_concept.items()}} for j, k in enumerate(ks)]
        out = {"grounding_n_concepts": float(len(ks))}
        for m in ("cs", "bs"):
            if m in per_concept:
                out[f"grounding_{m}_mean"] = float(per_concept[m].mean())
            if f"{m}_random" in per_concept:
                out[f"grounding_{m}_random_mean"] = float(per_concept[f"{m}_random"].mean())
                out[f"grounding_{m}_win_rate"] = float((per_concept[m] > per_concept[f"{m}_random"]).double().mean())
        ctx.artifacts["grounding_points"] = points
        paired = [m for m in ("cs", "bs") if f"{m}_random" in per_concept]
        if self.figure and paired:
            ctx.artifacts["grounding_scatter"] = scatter_figure(points, paired)
        return out
