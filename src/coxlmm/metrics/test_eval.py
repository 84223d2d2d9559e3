"""Test-sample evaluation (paper Table 1): do a test sample's top concepts describe it, against nulls?

For each test sample x_i (row i of the test Z, with codes v_i, shape (K,)):

    top-1 concept  k₁ = argmax_k v_ik; a row with v_i = 0 has *no concept* (its words are empty and
                   it scores 0; `top1_no_concept_frac` counts those rows)
    top-3          the 3 largest v_ik (concepts with v_ik = 0 excluded)
    CS top-1 = CS(image_i, T_k₁),  BS top-1 = BS(T_k₁, references_i)      (scorers/words.py)

Every column below is one word set per test sample, scored by the same per-sample scorer:

    method        T_k₁ (and top-3: mean over the top-3 concepts)
    Rnd-Words     R_k₁: concept k's words replaced by |T_k| words of a random direction (the reference
                  code's top 10·|T_k| tokens of lm_head(r), filtered, truncated; `random_words_like`);
                  length-matched and never empty (a concept with no words gets n_words random words)
    Token-only    [t]: every selected sample's caption says t, so this is what naming t alone scores
    Rnd-Concept   T_r for a random concept r of the same dictionary (uniform, seeded per sample)
    Noise-Imgs    a dictionary of the run's method and K fit on the *position-matched noise source* of
                  the training samples (each sample's own caption prefix teacher-forced after a noise
                  image, the state that predicts t: only the image changes), grounded the same way;
                  test samples are encoded with it and scored through its top-1 concept
    GT-captions   CS(image_i, first reference); BS(first reference, the others): an upper reference

Each column is reported as mean and std over the test samples, and the method's top-1 against each
null as a paired difference with a bootstrap 95 % CI over samples (`stats.paired_scores`:
`cs_top1_vs_<null>_diff / _ci_lo / _ci_hi / _significant`).

Keys: cs_top1_mean/std, cs_top3_mean/std, bs_top1_..., bs_top3_..., <null>_cs_top1_mean/std and
<null>_bs_top1_mean/std for null in rnd_words, token_only, rnd_concept, noise_imgs;
gt_captions_cs_mean/std, gt_captions_bs_mean/std; top1_no_concept_frac, top1_no_words_frac,
noise_imgs_no_concept_frac, rnd_words_len_mean, n_test_scored. CS keys need a CLIP-like scorer,
BS keys a BERTScore scorer. Artefacts: "scorer_fingerprint", "noise_imgs_words" (the noise
dictionary's words), "test_scores" (every column's per-sample scores, with the sample ids).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from coxlmm.metrics.base import NOISE_TRAIN, EvalInput, MetricResult, Split
from coxlmm.metrics.stats import mean_std, paired_scores
from coxlmm.scorers.base import Scorers, batches, clip_score
from coxlmm.scorers.words import words_bert_scores, words_clip_scores

log = logging.getLogger(__name__)

NULLS = ("rnd_words", "token_only", "rnd_concept", "noise_imgs")


# --- pure helpers ---------------------------------------------------------------------------------------
def top_concepts(V: torch.Tensor, k: int) -> list[list[int]]:
    """(M, K) codes -> per row the indices of its (at most k) largest *non-zero* codes, largest first
    (ties: lowest index). A row of zeros has no concept: []."""
    k = min(k, V.shape[1])
    order = torch.sort(V.float(), dim=1, descending=True, stable=True).indices[:, :k]
    return [[int(c) for c in row if float(V[m, c]) != 0.0] for m, row in enumerate(order.tolist())]


def top1_word_sets(V: torch.Tensor, words: list[list[str]]) -> list[list[str]]:
    """Per row of V, the words of its top-1 concept ([] for a row with no concept)."""
    return [words[t[0]] if t else [] for t in top_concepts(V, 1)]


def embed_images(clip: Any, split: Split, batch_size: int = 64) -> torch.Tensor:
    """(M, D) CLIP-like embeddings of a split's images, `batch_size` images decoded at a time."""
    rows = list(range(len(split)))
    return torch.cat([clip.embed_images([split.image(r) for r in chunk]) for chunk in batches(rows, batch_size)])


class SampleScorer:
    """CS / BS of one word set per test sample, images embedded once; every column scored alike."""

    def __init__(self, clip: Any, bert: Any, img_emb: torch.Tensor | None, refs: list[list[str]]):
        self.clip, self.bert, self.img_emb, self.refs = clip, bert, img_emb, refs

    def scores(self, word_sets: list[list[str]]) -> dict[str, torch.Tensor]:
        """{"cs": (M,), "bs": (M,)} of word_sets[i] for sample i (a key only where its scorer exists)."""
        return self.scores_many({"_": word_sets})["_"]

    def scores_many(self, columns: dict[str, list[list[str]]]) -> dict[str, dict[str, torch.Tensor]]:
        """`scores` of several columns at once: one BERTScore call for all of them, so each reference
        caption is embedded once."""
        out: dict[str, dict[str, torch.Tensor]] = {name: {} for name in columns}
        if self.clip is not None:
            for name, sets in columns.items():
                out[name]["cs"] = words_clip_scores(self.clip, self.img_emb, sets)
        if self.bert is not None:
            M = len(self.refs)
            flat = words_bert_scores(self.bert, [w for sets in columns.values() for w in sets], self.refs * len(columns))
            for c, name in enumerate(columns):
                out[name]["bs"] = flat[c * M:(c + 1) * M]
        return out

    def gt_captions(self) -> dict[str, torch.Tensor]:
        """CS(image, first reference); BS(first reference, the others) (0 for a sample with one caption)."""
        out = {}
        if self.clip is not None:
            out["cs"] = clip_score(self.img_emb, self.clip.embed_texts([r[0] for r in self.refs]))
        if self.bert is not None:
            multi = [i for i, r in enumerate(self.refs) if len(r) > 1]
            bs = torch.full((len(self.refs),), float("nan"))
            if multi:
                bs[multi] = self.bert.f1_max([self.refs[i][0] for i in multi], [self.refs[i][1:] for i in multi])
            out["bs"] = bs
        return out


# --- the metric -----------------------------------------------------------------------------------------
class TestSampleScores:
    """Paper Table 1 on the test split, with its nulls and paired CIs; see the module doc.

    Args:
        top_k: concepts averaged in the "top-3" scores (keys say top{top_k}).
        nulls: which null columns to compute (a subset of rnd_words, token_only, rnd_concept, noise_imgs).
        gt_captions: compute the GT-captions reference.
        seed: the nulls' seed (None: the run's seed).
    """

    name = "test_samples"
    __test__ = False  # not a pytest class, despite its name

    def __init__(self, top_k: int = 3, nulls: tuple[str, ...] | list[str] = NULLS, gt_captions: bool = True,
                 seed: int | None = None):
        unknown = set(nulls) - set(NULLS)
        if unknown:
            from coxlmm.errors import CoxlmmError

            raise CoxlmmError(f"test_samples: unknown nulls {sorted(unknown)}; accepted: {', '.join(NULLS)}.")
        self.top_k, self.nulls, self.gt, self.seed = top_k, tuple(nulls), gt_captions, seed

    @property
    def needs(self) -> frozenset[str]:
        return frozenset({NOISE_TRAIN}) if "noise_imgs" in self.nulls else frozenset()

    def __call__(self, inp: EvalInput) -> MetricResult:
        scorer = inp.services.scorer
        clip, bert = Scorers.of(scorer, "test-sample CS/BS")
        if clip is None and bert is None:
            return MetricResult()
        test = inp.test
        if test is None or len(test) == 0:
            log.warning("test-sample CS/BS skipped: no test features (test_split empty or no sample predicts t)")
            return MetricResult()
        seed = inp.seed if self.seed is None else self.seed
        M, K = test.V.shape
        s = SampleScorer(clip, bert, embed_images(clip, test) if clip is not None else None, test.references)
        words = inp.concepts.words
        top = top_concepts(test.V, self.top_k)

        columns: dict[str, list[list[str]]] = {"top1": [words[t[0]] if t else [] for t in top]}
        sets_of: dict[str, Any] = {}
        if "rnd_words" in self.nulls:
            from coxlmm.grounding.text import keep_words, random_words_like

            lengths = [len(w) or inp.n_words for w in words] + [inp.n_words]  # the last: rows with no concept
            rnd = random_words_like(inp.services.lens, lengths, seed=seed, keep=keep_words(inp.factors))
            columns["rnd_words"] = [rnd[t[0]] if t else rnd[K] for t in top]
            sets_of["rnd_words"] = rnd[:K]
        if "token_only" in self.nulls:
            columns["token_only"] = [[inp.token.casefold()]] * M
        if "rnd_concept" in self.nulls:
            picks = np.random.default_rng(seed).integers(0, K, size=M)
            columns["rnd_concept"] = [words[int(k)] for k in picks]
        noise_no_concept = None
        if "noise_imgs" in self.nulls:
            if inp.train.noise is None:
                log.warning("Noise-Imgs skipped: the noise source of the training split is missing")
            else:
                noise_dict = inp.services.refit(inp.train.noise, seed)
                noise_words = inp.services.ground(noise_dict.U)
                V_noise = noise_dict.encode(test.Z)
                columns["noise_imgs"] = top1_word_sets(V_noise, noise_words)
                noise_no_concept = float((V_noise.abs().sum(1) == 0).float().mean())
                sets_of["noise_imgs"] = noise_words

        rank_sets = {f"_rank{r}": [words[t[r]] if r < len(t) else [] for t in top] for r in range(min(self.top_k, K))}
        scored = s.scores_many({**columns, **rank_sets})
        per = {c: scored[c] for c in columns}
        ranks = [scored[c] for c in rank_sets]
        out: dict[str, float] = {"n_test_scored": float(M),
                                 "top1_no_concept_frac": float(np.mean([not t for t in top])),
                                 "top1_no_words_frac": float(np.mean([not w for w in columns["top1"]]))}
        for m in per["top1"]:
            out |= mean_std(f"{m}_top1", per["top1"][m])
            out |= mean_std(f"{m}_top{self.top_k}", _mean_of_ranks(ranks, m, top))
        for null in (c for c in columns if c != "top1"):
            for m, v in per[null].items():
                out |= mean_std(f"{null}_{m}_top1", v)
                out |= paired_scores(f"{m}_top1_vs_{null}", per["top1"][m], v, seed=seed)
        if "rnd_words" in columns:
            out["rnd_words_len_mean"] = float(np.mean([len(w) for w in columns["rnd_words"]]))
        if noise_no_concept is not None:
            out["noise_imgs_no_concept_frac"] = noise_no_concept
        gt = s.gt_captions() if self.gt else {}
        for m, v in gt.items():
            out |= mean_std(f"gt_captions_{m}", v[~torch.isnan(v)])

        artifacts: dict[str, Any] = {"test_scores": {
            "ids": [r["id"] for r in test.records],
            "scores": {f"{c}_{m}": [round(float(x), 6) for x in v] for c, d in per.items() for m, v in d.items()}
                      | {f"gt_captions_{m}": [None if np.isnan(float(x)) else round(float(x), 6) for x in v]
                         for m, v in gt.items()}}}
        if hasattr(scorer, "fingerprint"):
            artifacts["scorer_fingerprint"] = scorer.fingerprint()
        if "noise_imgs" in sets_of:
            artifacts["noise_imgs_words"] = sets_of["noise_imgs"]
        return MetricResult(out, artifacts)


def _mean_of_ranks(ranks: list[dict[str, torch.Tensor]], metric: str, top: list[list[int]]) -> torch.Tensor:
    """Per sample, the mean score over its top-k concepts (as many as it has; 0 with none)."""
    stacked = torch.stack([r[metric] for r in ranks])  # (k, M)
    n = torch.tensor([max(len(t), 1) for t in top], dtype=stacked.dtype)
    have = torch.tensor([[r < len(t) for t in top] for r in range(len(ranks))], dtype=stacked.dtype)
    return (stacked * have).sum(0) / n
