"""Grounding quality (paper Fig. 3): do a concept's words describe its most activating images?

For each concept u_k with words T_k (non-empty) and most activating training samples X_k,MAS
(`concepts.top_indices[k]`, rows of Z_train):

    CS_k     = mean over x in X_k,MAS of CS(image_x, T_k)
    CS_k^rnd = mean over x in X_k,MAS of CS(image_x, R_k)
    BS_k     = mean over x in X_k,MAS of BS(T_k, captions_x)      (max F1 over the references)
    BS_k^rnd = the same with R_k

R_k: |T_k| random words of a random direction, read through the same lens and filtered like real
words (`grounding.text.RandomWordPool`, as the Rnd-Words column of Table 1): same count, same filter;
`n_draws` draws per concept, CS_k^rnd their mean.
CS / BS of a word set: scorers/words.py.

Scores: the mean over concepts of CS_k and CS_k^rnd, the win rate (share of concepts with CS_k >
CS_k^rnd), the same for BS, and the number of concepts with words (the others are skipped). Per
concept (unit "concept") arrays of CS_k and the draws of CS_k^rnd, so the sweep tables give the
concept-minus-random difference an interval over concepts, draws and seeds. Artefacts:
"grounding_points" (one dict per concept) and "grounding_scatter" (a matplotlib Figure: x =
random-words score, y = concept-words score, one point per concept, y = x line).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from coxlmm.metrics.base import EvalInput, Metric, MetricResult
from coxlmm.metrics.schema import ConceptColumn, Samples, Schema, Score, TableSpec
from coxlmm.scorers.base import Scorers, batches
from coxlmm.scorers.words import words_bert_scores, words_clip_scores_many

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


GROUNDING = TableSpec("grounding", "Grounding: a concept's words against its top images, versus length-matched "
                      "random words (mean over concepts; ± std across seeds)",
                      "win rate: share of a dictionary's concepts whose words score above their random words.", order=40)


def grounding_schema(metrics: list[str]) -> Schema:
    scores, samples, concepts = [Score("grounding_n_concepts", "concepts with words", digits=0)], [], []
    for m in metrics:
        M = m.upper()
        scores += [Score(f"grounding_{m}_mean", f"{M} words", ("grounding",), better=1, curve=True),
                   Score(f"grounding_{m}_random_mean", f"{M} random", ("grounding",), of="Rnd-Words", curve=True),
                   Score(f"grounding_{m}_win_rate", f"{M} win rate", ("grounding",), better=1)]
        samples += [Samples(f"grounding_{m}", f"{M}, concept vs its top images", unit="concept",
                            nulls=(f"grounding_{m}_random",)),
                    Samples(f"grounding_{m}_random", f"{M}, concept vs its top images", of="Rnd-Words", unit="concept")]
        concepts += [ConceptColumn(f"grounding_{m}", f"grounding {M}: words vs top images", better=1,
                                   null=f"grounding_{m}_random"),
                     ConceptColumn(f"grounding_{m}_random", f"grounding {M}: random words")]
    return Schema(scores=scores, samples=samples, concepts=concepts, tables=[GROUNDING])


class GroundingQuality(Metric):
    """Paper Fig. 3; see the module doc.

    Args:
        n_images: most activating samples used per concept (None: all of `top_indices[k]`, i.e. N_MAS).
        n_draws: random word sets per concept.
        seed: random-word seed (None: the run's seed).
        figure: add the scatter figure to the artefacts.
    """

    name = "grounding_quality"

    def __init__(self, n_images: int | None = None, n_draws: int = 10, seed: int | None = None, figure: bool = True):
        from coxlmm.errors import CoxlmmError

        if isinstance(n_draws, bool) or not isinstance(n_draws, int) or n_draws < 1:
            raise CoxlmmError(f"grounding_quality: n_draws={n_draws!r} must be a positive integer (random word "
                              "sets per concept, e.g. 10).")
        self.n_images, self.n_draws, self.seed, self.figure = n_images, n_draws, seed, figure

    def __call__(self, inp: EvalInput) -> MetricResult:
        from coxlmm.grounding.text import RandomWordPool, keep_words

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
        pool = RandomWordPool(inp.services.lens, max(64, 4 * self.n_draws), seed=seed, max_words=inp.n_words,
                              keep=keep_words(inp.factors))
        random_sets = pool.draw([len(concepts.words[k]) for k in ks], self.n_draws, np.random.default_rng([seed, 3]))
        R = self.n_draws

        # One (concept, image) pair per row: concept k repeated over its top samples; the random words
        # of draw r in the r-th block of rows.
        rows = [(j, r) for j, k in enumerate(ks) for r in concepts.top_indices[k][: self.n_images]]
        owner = torch.tensor([j for j, _ in rows])
        word_sets = [concepts.words[ks[j]] for j, _ in rows]
        rnd_sets = [random_sets[j][d] for d in range(R) for j, _ in rows]
        per_pair: dict[str, torch.Tensor] = {}
        if clip is not None:
            distinct = sorted({r for _, r in rows})  # a sample may top several concepts: embed it once
            where = {r: i for i, r in enumerate(distinct)}
            emb = torch.cat([clip.embed_images([train.image(r) for r in chunk]) for chunk in batches(distinct, 64)])
            img_emb = emb[[where[r] for _, r in rows]]
            per_pair["cs"], rnd = words_clip_scores_many(clip, img_emb.repeat(R, 1), [word_sets * R, rnd_sets])
            per_pair["cs"] = per_pair["cs"][: len(rows)]
            per_pair["cs_random"] = rnd.view(R, len(rows)).T  # (pairs, R)
        if bert is not None:
            refs = train.references
            pair_refs = [refs[r] for _, r in rows]
            both = words_bert_scores(bert, word_sets + rnd_sets, pair_refs * (R + 1))  # one call: refs embedded once
            per_pair["bs"], per_pair["bs_random"] = both[: len(rows)], both[len(rows):].view(R, len(rows)).T

        # Per concept: the mean over its images (per draw for the random words).
        counts = torch.bincount(owner, minlength=len(ks)).double()

        def by_concept(v: torch.Tensor) -> torch.Tensor:
            v = v.double()
            shape = (len(ks),) + tuple(v.shape[1:])
            return torch.zeros(shape, dtype=torch.float64).index_add_(0, owner, v) / counts.view(-1, *[1] * (v.dim() - 1))

        per_concept = {m: by_concept(v) for m, v in per_pair.items()}  # (n,) or (n, R)
        flat = {m: v if v.dim() == 1 else v.mean(1) for m, v in per_concept.items()}
        points = [{"concept": k, "words": list(concepts.words[k]), "n_images": int(counts[j]),
                   "random_words": random_sets[j][0], **{m: float(v[j]) for m, v in flat.items()}}
                  for j, k in enumerate(ks)]
        out = {"grounding_n_concepts": float(len(ks))}
        metrics = [m for m in ("cs", "bs") if m in per_concept]
        ids = [str(k) for k in ks]
        samples, columns = {}, {}
        for m in metrics:
            out[f"grounding_{m}_mean"] = float(flat[m].mean())
            out[f"grounding_{m}_random_mean"] = float(flat[f"{m}_random"].mean())
            out[f"grounding_{m}_win_rate"] = float((flat[m] > flat[f"{m}_random"]).double().mean())
            for key in (m, f"{m}_random"):
                samples[f"grounding_{key}"] = (ids, per_concept[key].numpy())
                col: list[float | None] = [None] * concepts.n_concepts
                for j, k in enumerate(ks):
                    col[k] = float(flat[key][j])
                columns[f"grounding_{key}"] = col
        artifacts: dict = {"grounding_points": points}
        if self.figure and metrics:
            artifacts["grounding_scatter"] = scatter_figure(points, metrics)
        return MetricResult(out, artifacts, schema=grounding_schema(metrics), samples=samples, concepts=columns)
