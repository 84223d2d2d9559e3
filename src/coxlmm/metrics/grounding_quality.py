"""Grounding quality (paper Fig. 3): do a concept's words describe its most activating images?

For each concept u_k with words T_k (non-empty) and most activating training samples X_k,MAS
(`concepts.top_indices[k]`, rows of Z_train):

    CS_k     = mean over x in X_k,MAS of CS(image_x, T_k)
    CS_k^rnd = mean over x in X_k,MAS of CS(image_x, R_k)
    BS_k     = mean over x in X_k,MAS of BS(T_k, captions_x)      (max F1 over the references)
    BS_k^rnd = the same with R_k

R_k: |T_k| random words of a random direction, read through the same lens and filtered like real
words (`grounding.text.random_words_like`, as the Rnd-Words column of Table 1): same count, same filter.
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

from coxlmm.metrics.base import EvalInput, MetricResult
from coxlmm.scorers.base import Scorers, batches
from coxlmm.scorers.words import words_bert_scores, words_clip_scores

log = logging.getLogger(__name__)


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
        seed: random-word seed (None: the run's seed).
        figure: add the scatter figure to the artefacts.
    """

    name = "grounding_quality"
    needs = frozenset()

    def __init__(self, n_images: int | None = None, seed: int | None = None, figure: bool = True):
        self.n_images, self.seed, self.figure = n_images, seed, figure

    def __call__(self, inp: EvalInput) -> MetricResult:
        from coxlmm.grounding.text import keep_words, random_words_like

        scorer = inp.services.scorer
        clip, bert = Scorers.of(scorer, "grounding quality")
        if clip is None and bert is None:
            return MetricResult()
        concepts, train = inp.concepts, inp.train
        ks = [k for k in range(concepts.n_concepts) if concepts.words[k] and concepts.top_indices[k]]
        if not ks:
            log.warning("grounding quality skipped: no concept has both words and top samples")
            return MetricResult()
        seed = inp.seed if self.seed is None else self.seed
        random_sets = random_words_like(inp.services.lens, [len(concepts.words[k]) for k in ks], seed=seed,
                                        keep=keep_words(inp.factors))

        # One (concept, image) pair per row: concept k repeated over its top samples.
        rows = [(j, r) for j, k in enumerate(ks) for r in concepts.top_indices[k][: self.n_images]]
        owner = torch.tensor([j for j, _ in rows])
        word_sets = [concepts.words[ks[j]] for j, _ in rows]
        rnd_sets = [random_sets[j] for j, _ in rows]
        per_pair: dict[str, torch.Tensor] = {}
        if clip is not None:
            distinct = sorted({r for _, r in rows})  # a sample may top several concepts: embed it once
            where = {r: i for i, r in enumerate(distinct)}
            emb = torch.cat([clip.embed_images([train.image(r) for r in chunk]) for chunk in batches(distinct, 64)])
            img_emb = emb[[where[r] for _, r in rows]]
            per_pair["cs"] = words_clip_scores(clip, img_emb, word_sets)
            per_pair["cs_random"] = words_clip_scores(clip, img_emb, rnd_sets)
        if bert is not None:
            refs = train.references
            pair_refs = [refs[r] for _, r in rows]
            both = words_bert_scores(bert, word_sets + rnd_sets, pair_refs + pair_refs)  # one call: refs embedded once
            per_pair["bs"], per_pair["bs_random"] = both[: len(rows)], both[len(rows):]

        # Per concept: the mean over its images.
        counts = torch.bincount(owner, minlength=len(ks)).double()
        per_concept = {m: torch.zeros(len(ks), dtype=torch.float64).index_add_(0, owner, v.double()) / counts
                       for m, v in per_pair.items()}
        points = [{"concept": k, "words": list(concepts.words[k]), "n_images": int(counts[j]),
                   "random_words": random_sets[j], **{m: float(v[j]) for m, v in per_concept.items()}}
                  for j, k in enumerate(ks)]
        out = {"grounding_n_concepts": float(len(ks))}
        for m in ("cs", "bs"):
            if m in per_concept:
                out[f"grounding_{m}_mean"] = float(per_concept[m].mean())
                out[f"grounding_{m}_random_mean"] = float(per_concept[f"{m}_random"].mean())
                out[f"grounding_{m}_win_rate"] = float((per_concept[m] > per_concept[f"{m}_random"]).double().mean())
        artifacts: dict = {"grounding_points": points}
        paired = [m for m in ("cs", "bs") if f"{m}_random" in per_concept]
        if self.figure and paired:
            artifacts["grounding_scatter"] = scatter_figure(points, paired)
        return MetricResult(out, artifacts)
