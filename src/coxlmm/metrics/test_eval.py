"""Test-sample evaluation (paper Table 1): do a test sample's top concepts describe it, against nulls?

For each test sample x_i (row i of the test Z, with codes v_i, shape (K,)):

    top-1 concept  k₁ = argmax_k v_ik; a row with v_i = 0 has *no concept* (its words are empty and
                   it scores 0; `top1_no_concept_frac` counts those rows)
    top-3          the 3 largest v_ik (concepts with v_ik = 0 excluded)
    CS top-1 = CS(image_i, T_k₁),  BS top-1 = BS(T_k₁, references_i)      (scorers/words.py)

Every column below is one word set per test sample (and per draw), scored by the same scorer:

    method        T_k₁ (and top-3: mean over the top-3 concepts)
    Rnd-Words     |T_k₁| words of a random direction read through the same lens (the reference code's
                  top 10·|T_k| tokens, filtered, truncated; `grounding.text.RandomWordPool`); length-
                  matched and never empty (a sample without words gets n_words). R = `n_draws`
                  independent draws per sample, each from its own random direction
    Token-only    [t]: every selected sample's caption says t, so this is what naming t alone scores
    Rnd-Concept   T_r for another concept r ≠ k₁ of the same dictionary, R draws per sample (uniform)
    Noise-Imgs    a dictionary of the run's method and K fit on the *position-matched noise source* of
                  the training samples (each sample's own caption prefix teacher-forced after a noise
                  image, the state that predicts t: only the image changes), grounded the same way;
                  test samples are encoded with it and scored through its top-1 concept; one draw per
                  noise seed (`noise.seeds`)
    GT-captions   CS(image_i, first reference); BS(first reference, the others): an upper reference

A null with draws gives each sample the mean of its draws. Each column is reported as mean and std
over the test samples, and the method's top-1 against each null as a paired difference whose
bootstrap 95 % CI resamples the test samples *and* each sample's null draws (`stats.bootstrap_diff`),
so its width includes the null's own randomness: `cs_top1_vs_<null>_diff / _ci_lo / _ci_hi /
_significant`. The per-sample scores (draws kept) go to samples.safetensors, where the sweep tables
pair them across seeds (refits) and methods. CS needs a CLIP-like scorer, BS a BERTScore scorer.
Artefacts: "scorer_fingerprint", "noise_imgs_words" (the first noise dictionary's words).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from coxlmm.errors import CoxlmmError
from coxlmm.metrics.base import NOISE_TRAIN, EvalInput, Metric, MetricResult, Split
from coxlmm.metrics.schema import Samples, Schema, Score, TableSpec, with_spreads
from coxlmm.metrics.stats import mean_std, paired_scores
from coxlmm.scorers.base import Scorers, batches, clip_score
from coxlmm.scorers.words import words_bert_scores, words_clip_scores_many

log = logging.getLogger(__name__)

NULLS = ("rnd_words", "token_only", "rnd_concept", "noise_imgs")
NULL_NAMES = {"rnd_words": "Rnd-Words", "token_only": "Token-only", "rnd_concept": "Rnd-Concept",
              "noise_imgs": "Noise-Imgs", "gt_captions": "GT-captions"}
METRICS = {"cs": "CS", "bs": "BS"}


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
        """`scores` of several columns at once: one text embedding per distinct word set, one BERTScore
        call for all of them (bert-score embeds each distinct sentence once)."""
        out: dict[str, dict[str, torch.Tensor]] = {name: {} for name in columns}
        if self.clip is not None:
            for name, cs in zip(columns, words_clip_scores_many(self.clip, self.img_emb, list(columns.values()))):
                out[name]["cs"] = cs
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


# --- the description ------------------------------------------------------------------------------
def table1_spec(scorer_note: str = "") -> TableSpec:
    return TableSpec("table1", "Table 1: test samples, top-1 concept, against the nulls",
                     "Mean over test samples (a null with draws: the mean of each sample's draws), ± std across "
                     "seeds (with one seed, over test samples). The nulls are those of one method's jobs (named "
                     "below the table). L0 (test): non-zero codes per test sample (PCA, k-means and Simple are "
                     "dense). " + scorer_note, pivot=True, order=10)


def table1_schema(nulls: tuple[str, ...], gt: bool, metrics: list[str], top_k: int, scorer_note: str) -> Schema:
    scores, samples = [], []
    for m in metrics:
        label = METRICS[m]
        scores.append(Score(f"{m}_top1_mean", label, ("table1",), row=label, spread=f"{m}_top1_std", better=1,
                            summary=True))
        scores.append(Score(f"{m}_top{top_k}_mean", f"{label} top-{top_k}", spread=f"{m}_top{top_k}_std", better=1))
        for null in nulls:
            scores.append(Score(f"{null}_{m}_top1_mean", label, ("table1",), row=label, of=NULL_NAMES[null],
                                spread=f"{null}_{m}_top1_std"))
            scores += [Score(f"{m}_top1_vs_{null}_{x}", f"{label} − {NULL_NAMES[null]} ({x})")
                       for x in ("diff", "ci_lo", "ci_hi", "significant")]
            samples.append(Samples(f"{null}_{m}", f"{label}, test sample", of=NULL_NAMES[null]))
        if gt:
            scores.append(Score(f"gt_captions_{m}_mean", label, ("table1",), row=label, of="GT-captions",
                                spread=f"gt_captions_{m}_std", last=True))
            samples.append(Samples(f"gt_captions_{m}", f"{label}, test sample", of="GT-captions"))
        samples.insert(0, Samples(f"top1_{m}", f"{label}, test sample", nulls=tuple(f"{n}_{m}" for n in nulls)))
    scores += [Score("top1_no_concept_frac", "share of test samples with no concept"),
               Score("top1_no_words_frac", "share of test samples whose top-1 concept has no words"),
               Score("noise_imgs_no_concept_frac", "Noise-Imgs: share of test samples with no noise concept"),
               Score("rnd_words_len_mean", "Rnd-Words: mean words per set"),
               Score("n_test_scored", "test samples scored", digits=0)]
    return Schema(scores=with_spreads(scores), samples=samples, tables=[table1_spec(scorer_note)])


def scorer_note(fingerprint: dict[str, Any]) -> str:
    """Which models and scales CS and BS are on."""
    clip, bert = fingerprint.get("clip") or {}, fingerprint.get("bert") or {}
    parts = []
    if clip:
        parts.append(f"CS: {clip.get('scorer') or clip.get('model', '?')} (2.5 · max(cos, 0))")
    if bert:
        parts.append(f"BS: {bert.get('scale', 'raw F1')} of {bert.get('model', '?')} layer {bert.get('layer', '?')}")
    return ("Scorers: " + "; ".join(parts) + ".") if parts else ""


# --- the metric -----------------------------------------------------------------------------------------
class TestSampleScores(Metric):
    """Paper Table 1 on the test split, with its nulls and paired CIs; see the module doc.

    Args:
        top_k: concepts averaged in the "top-3" scores (keys say top{top_k}).
        nulls: which null columns to compute (a subset of rnd_words, token_only, rnd_concept, noise_imgs).
        gt_captions: compute the GT-captions reference.
        n_draws: R, the draws of Rnd-Words and Rnd-Concept per test sample.
        pool_size: random directions of the Rnd-Words pool the draws come from.
        seed: the nulls' seed (None: the run's seed).
    """

    name = "test_samples"
    __test__ = False  # not a pytest class, despite its name

    def __init__(self, top_k: int = 3, nulls: tuple[str, ...] | list[str] = NULLS, gt_captions: bool = True,
                 n_draws: int = 20, pool_size: int = 256, seed: int | None = None):
        unknown = set(nulls) - set(NULLS)
        if unknown:
            raise CoxlmmError(f"test_samples: unknown nulls {sorted(unknown)}; accepted: {', '.join(NULLS)}.")
        for key, value in (("n_draws", n_draws), ("pool_size", pool_size), ("top_k", top_k)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise CoxlmmError(f"test_samples: {key}={value!r} must be a positive integer (n_draws: draws of "
                                  "Rnd-Words and Rnd-Concept per test sample, e.g. 20).")
        self.top_k, self.nulls, self.gt, self.seed = top_k, tuple(nulls), gt_captions, seed
        self.n_draws, self.pool_size = n_draws, pool_size

    def requests(self) -> frozenset:
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
        rng = np.random.default_rng([seed, 17])
        M, K = test.V.shape
        R = self.n_draws
        s = SampleScorer(clip, bert, embed_images(clip, test) if clip is not None else None, test.references)
        words = inp.concepts.words
        top = top_concepts(test.V, self.top_k)

        columns: dict[str, list[list[str]]] = {"top1": [words[t[0]] if t else [] for t in top]}
        draws: dict[str, list[list[list[str]]]] = {}  # null -> per sample, its draws' word sets
        if "rnd_words" in self.nulls:
            from coxlmm.grounding.text import RandomWordPool, keep_words

            pool = RandomWordPool(inp.services.lens, self.pool_size, seed=seed, max_words=inp.n_words,
                                  keep=keep_words(inp.factors))
            draws["rnd_words"] = pool.draw([len(w) or inp.n_words for w in columns["top1"]], R, rng)
        if "token_only" in self.nulls:
            columns["token_only"] = [[w.casefold()] for w in test.words(inp.token)]
        if "rnd_concept" in self.nulls:
            draws["rnd_concept"] = [[words[int(k)] for k in other_concepts(t[0] if t else None, K, R, rng)] for t in top]
        noise_words, noise_no_concept = None, None
        if "noise_imgs" in self.nulls:
            if not inp.train.noise:
                log.warning("Noise-Imgs skipped: the noise source of the training split is missing")
            else:
                per_draw, empty = [], []
                for Zn in inp.train.noise:
                    noise_dict = inp.services.refit(Zn, seed)
                    nw = inp.services.ground(noise_dict.U)
                    V_noise = noise_dict.encode(test.Z)
                    per_draw.append(top1_word_sets(V_noise, nw))
                    empty.append(float((V_noise.abs().sum(1) == 0).float().mean()))
                    noise_words = noise_words or nw
                draws["noise_imgs"] = [list(sets) for sets in zip(*per_draw)]
                noise_no_concept = float(np.mean(empty))

        rank_sets = {f"_rank{r}": [words[t[r]] if r < len(t) else [] for t in top] for r in range(min(self.top_k, K))}
        draw_columns = {f"{null}#{r}": [sets[r] for sets in per_sample]
                        for null, per_sample in draws.items() for r in range(len(per_sample[0]))}
        scored = s.scores_many({**columns, **rank_sets, **draw_columns})
        per: dict[str, dict[str, np.ndarray]] = {c: {m: v.double().numpy() for m, v in scored[c].items()} for c in columns}
        for null, per_sample in draws.items():
            n = len(per_sample[0])
            per[null] = {m: np.stack([scored[f"{null}#{r}"][m].double().numpy() for r in range(n)], axis=1)
                         for m in scored["top1"]}
        ranks = [scored[c] for c in rank_sets]
        out: dict[str, float] = {"n_test_scored": float(M),
                                 "top1_no_concept_frac": float(np.mean([not t for t in top])),
                                 "top1_no_words_frac": float(np.mean([not w for w in columns["top1"]]))}
        for m in per["top1"]:
            out |= mean_std(f"{m}_top1", per["top1"][m])
            out |= mean_std(f"{m}_top{self.top_k}", _mean_of_ranks(ranks, m, top))
        nulls = [n for n in NULLS if n in per]
        for null in nulls:
            for m, v in per[null].items():
                out |= mean_std(f"{null}_{m}_top1", v)
                out |= paired_scores(f"{m}_top1_vs_{null}", per["top1"][m], v, seed=seed)
        if "rnd_words" in draws:
            out["rnd_words_len_mean"] = float(np.mean([len(w) for sets in draws["rnd_words"] for w in sets]))
        if noise_no_concept is not None:
            out["noise_imgs_no_concept_frac"] = noise_no_concept
        gt = {m: v.double().numpy() for m, v in (s.gt_captions() if self.gt else {}).items()}
        for m, v in gt.items():
            out |= mean_std(f"gt_captions_{m}", v[~np.isnan(v)])

        ids = test.ids
        samples = {f"{c}_{m}": (ids, v) for c, d in per.items() for m, v in d.items()}
        samples |= {f"gt_captions_{m}": (ids, v) for m, v in gt.items()}
        fingerprint = scorer.fingerprint() if hasattr(scorer, "fingerprint") else {}
        artifacts: dict[str, Any] = {}
        if fingerprint:
            artifacts["scorer_fingerprint"] = fingerprint
        if noise_words is not None:
            artifacts["noise_imgs_words"] = noise_words
        schema = table1_schema(tuple(nulls), bool(gt), list(per["top1"]), self.top_k, scorer_note(fingerprint))
        return MetricResult(out, artifacts, schema=schema.only(out), samples=samples)


def other_concepts(top1: int | None, K: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """n concepts drawn uniformly among the K − 1 that are not `top1` (all K when top1 is None or K = 1)."""
    if top1 is None or K == 1:
        return rng.integers(0, K, size=n)
    k = rng.integers(0, K - 1, size=n)
    return k + (k >= top1)


def _mean_of_ranks(ranks: list[dict[str, torch.Tensor]], metric: str, top: list[list[int]]) -> torch.Tensor:
    """Per sample, the mean score over its top-k concepts (as many as it has; 0 with none)."""
    stacked = torch.stack([r[metric] for r in ranks])  # (k, M)
    n = torch.tensor([max(len(t), 1) for t in top], dtype=stacked.dtype)
    have = torch.tensor([[r < len(t) for t in top] for r in range(len(ranks))], dtype=stacked.dtype)
    return (stacked * have).sum(0) / n
