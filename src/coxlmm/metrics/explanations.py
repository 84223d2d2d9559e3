"""Explanations that predict: do a concept's words say when it fires, and do they add to the target word?

All on the test split, with the run's scorer (CS: the image against "A photo is described by the words
…"; BS: the words against the sample's reference captions; scorers/words.py), S[m, k] = score of test
sample m against the words T_k of concept k:

**Detection** (SAEBench's / Delphi's detection, without an LLM judge): for concept k, the test samples
whose activation v_k is in the top `quantile` (and > 0) are its *active* samples, those with v_k at or
below the median its *inactive* ones; detection_k = AUROC of S[:, k] for active vs inactive: 1 when the
words alone tell where the concept fires, 0.5 when they say nothing. **Fuzzing**: the same AUROC of the
active samples against the *near misses*, the next band of activations (the samples ranked just below
the active ones): can the words tell the concept's peak from its neighbourhood? A concept with fewer
than `min_samples` active or inactive test samples (or no words) gets no score; how many is logged.

Nulls, scored the same way: Rnd-Words (`n_draws` length-matched random word sets per concept,
`grounding.text.RandomWordPool`), Rnd-Concept (another concept's words T_j, j ≠ k, detecting k's
activity: every other concept), and a random dictionary (K centred random directions, their own words and
activations). Means over concepts go in Table 1's family; per concept in concepts.json and the browser.

**Usefulness beyond t.** Every selected sample's caption says t, so naming t already describes it
(Token-only scores above every dictionary in Table 1). The gain of a sample's top-1 concept is
score(x, {t} ∪ T_k₁) − score(x, {t}), 0 for a sample without a concept and for T_k₁ = {t}; its null,
the same gain with `n_draws` length-matched Rnd-Words sets. Per sample, paired CIs in the sweep tables.

**Factor accuracy** (data with factors): the factor value matched to each concept on the *training*
split (Hungarian on the training AUROCs, recovery's matching); a test sample's explanation is right when
its top-1 concept's matched value is its target's value (a concept matched to no value: wrong). Against
a random dictionary (its own training matching) and the prefix-only control (the same dictionary and
matching on the position-matched noise states of the test samples: what the text before t gives).
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import torch

from coxlmm.errors import CoxlmmError
from coxlmm.metrics.base import NOISE_TEST, EvalInput, Metric, MetricResult
from coxlmm.metrics.recovery import auroc, auroc_matrix, centred_relu, match_concepts, target_labels
from coxlmm.metrics.schema import ConceptColumn, Samples, Schema, Score
from coxlmm.metrics.stats import mean_std
from coxlmm.metrics.test_eval import METRICS, SampleScorer, embed_images, table1_spec, top_concepts
from coxlmm.scorers.base import Scorers

log = logging.getLogger(__name__)


# --- pure helpers -------------------------------------------------------------------------------------
def detection_sets(v: np.ndarray, quantile: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row masks of one concept's test activations v (M,): active (the top `quantile`, v > 0), inactive
    (v at or below the median) and near misses (the next ranks below the active ones, as many)."""
    M = len(v)
    n = max(1, int(np.ceil(quantile * M)))
    order = np.argsort(-v, kind="stable")
    active = np.zeros(M, dtype=bool)
    active[order[:n]] = True
    active &= v > 0
    near = np.zeros(M, dtype=bool)
    near[order[n: 2 * n]] = True
    near &= ~active
    inactive = (v <= np.median(v)) & ~active
    return active, inactive, near


def set_auroc(scores: np.ndarray, positive: np.ndarray, negative: np.ndarray) -> float:
    """AUROC of scores (M,) for the positive rows against the negative rows (NaN without both)."""
    if not positive.any() or not negative.any():
        return float("nan")
    keep = positive | negative
    return auroc(scores[keep], positive[keep])


def with_token(words: list[str], token: str) -> list[str]:
    """{t} ∪ T: the target word first, then the words that are not it."""
    t = token.casefold()
    return [t, *[w for w in words if w != t]]


# --- the metric -----------------------------------------------------------------------------------------
class Explanations(Metric):
    """Detection, fuzzing, usefulness beyond t and factor accuracy (module doc).

    Args:
        quantile: the share of test samples counted as a concept's active ones.
        min_samples: fewest active (and inactive) test samples a concept needs for an AUROC.
        n_draws: Rnd-Words draws per concept (detection) and per sample (usefulness).
        factor_accuracy: compute the per-sample factor accuracy (data with factors).
        seed: the nulls' seed (None: the run's seed).
    """

    name = "explanations"

    def __init__(self, quantile: float = 0.2, min_samples: int = 5, n_draws: int = 10, factor_accuracy: bool = True,
                 seed: int | None = None):
        if not 0 < quantile <= 0.5:
            raise CoxlmmError(f"explanations: quantile={quantile!r} must be in (0, 0.5] (the share of test samples "
                              "counted as a concept's active ones; the near misses are the next band).")
        for key, value in (("min_samples", min_samples), ("n_draws", n_draws)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise CoxlmmError(f"explanations: {key}={value!r} must be a positive integer.")
        self.quantile, self.min_samples, self.n_draws = quantile, min_samples, n_draws
        self.factor_accuracy, self.seed = factor_accuracy, seed

    def requests(self) -> frozenset:
        return frozenset({NOISE_TEST}) if self.factor_accuracy else frozenset()

    def __call__(self, inp: EvalInput) -> MetricResult:
        test = inp.test
        if test is None or not len(test):
            log.warning("explanations skipped: no test features")
            return MetricResult()
        clip, bert = Scorers.of(inp.services.scorer, "explanations (detection, usefulness)")
        seed = inp.seed if self.seed is None else self.seed
        out: dict[str, float] = {}
        samples: dict[str, tuple[list[str], np.ndarray]] = {}
        concepts: dict[str, list] = {}
        schema = Schema()
        if clip is not None or bert is not None:
            s = SampleScorer(clip, bert, embed_images(clip, test) if clip is not None else None, test.references)
            d_out, d_samples, d_concepts, d_schema = self.detection(inp, s, seed)
            u_out, u_samples, u_schema = self.usefulness(inp, s, seed)
            out |= d_out | u_out
            samples |= d_samples | u_samples
            concepts |= d_concepts
            schema = schema.merge(d_schema, u_schema)
        if self.factor_accuracy and inp.factors:
            f_out, f_samples, f_schema = self.factor_accuracy_scores(inp, seed)
            out |= f_out
            samples |= f_samples
            schema = schema.merge(f_schema)
        return MetricResult(out, schema=schema.only(out), samples=samples, concepts=concepts)

    # --- detection and fuzzing ---
    def detection(self, inp: EvalInput, s: SampleScorer, seed: int):
        from coxlmm.directions import random_directions
        from coxlmm.grounding.text import RandomWordPool, keep_words

        test = inp.test
        V = test.V.detach().float().numpy()
        M, K = V.shape
        words = inp.concepts.words
        keep = keep_words(inp.factors)
        pool = RandomWordPool(inp.services.lens, max(64, 4 * self.n_draws), seed=seed + 11, max_words=inp.n_words,
                              keep=keep)
        rnd = pool.draw([len(w) or inp.n_words for w in words], self.n_draws, np.random.default_rng([seed, 5]))
        U_r = random_directions(K, test.Z.shape[1], seed=seed + 13)
        mean = inp.train.Z.float().mean(0)
        V_r = centred_relu(test.Z, U_r, mean).numpy()
        words_r = inp.services.ground(U_r)
        columns = {f"k{k}": [words[k]] * M for k in range(K)}
        columns |= {f"r{k}": [words_r[k]] * M for k in range(K)}
        columns |= {f"w{k}_{r}": [rnd[k][r]] * M for k in range(K) for r in range(self.n_draws)}
        scored = s.scores_many(columns)
        out: dict[str, float] = {}
        samples: dict[str, tuple[list[str], np.ndarray]] = {}
        per_concept: dict[str, list] = {}
        scores = []
        sets = [detection_sets(V[:, k], self.quantile) for k in range(K)]
        sets_r = [detection_sets(V_r[:, k], self.quantile) for k in range(K)]
        enough = [bool(words[k]) and a.sum() >= self.min_samples and i.sum() >= self.min_samples
                  for k, (a, i, _) in enumerate(sets)]
        skipped = K - sum(enough)
        if skipped:
            log.info("explanations: %d of %d concepts without a detection score (no words, or fewer than %d active / "
                     "inactive test samples of %d: top %.0f %% of v_k > 0 vs v_k ≤ median)", skipped, K,
                     self.min_samples, M, 100 * self.quantile)
        ids = [str(k) for k in range(K) if enough[k]]
        for m in scored["k0"]:
            S = np.stack([scored[f"k{k}"][m].numpy() for k in range(K)], 1)  # (M, K)
            S_r = np.stack([scored[f"r{k}"][m].numpy() for k in range(K)], 1)
            W = np.stack([[scored[f"w{k}_{r}"][m].numpy() for r in range(self.n_draws)] for k in range(K)])  # (K, R, M)
            for task, neg_of in (("detection", 1), ("fuzzing", 2)):
                own = np.array([set_auroc(S[:, k], sets[k][0], sets[k][neg_of]) if enough[k] else np.nan
                                for k in range(K)])
                rnd_words = np.array([[set_auroc(W[k, r], sets[k][0], sets[k][neg_of]) for r in range(self.n_draws)]
                                      if enough[k] else [np.nan] * self.n_draws for k in range(K)])
                other = np.array([[set_auroc(S[:, j], sets[k][0], sets[k][neg_of]) for j in range(K) if j != k]
                                  if enough[k] else [np.nan] * (K - 1) for k in range(K)]).reshape(K, max(K - 1, 0))
                random_dict = np.array([set_auroc(S_r[:, k], sets_r[k][0], sets_r[k][neg_of])
                                        if words_r[k] else np.nan for k in range(K)])
                key = f"{task}_{m}"
                for name, arr in (("", own), ("_rnd_words", rnd_words), ("_other_concept", other),
                                  ("_random_dict", random_dict)):
                    with np.errstate(all="ignore"), warnings.catch_warnings():
                        warnings.simplefilter("ignore", RuntimeWarning)  # concepts without a score: all-NaN rows
                        flat = arr if arr.ndim == 1 else np.nanmean(arr, axis=1) if arr.shape[1] else np.full(K, np.nan)
                    if np.isfinite(flat).any():
                        out[f"{key}{name}_mean"] = float(np.nanmean(flat))
                sel = np.array(enough)
                if sel.any():
                    samples[key] = (ids, own[sel])
                    samples[f"{key}_rnd_words"] = (ids, rnd_words[sel])
                    if K > 1:
                        samples[f"{key}_other_concept"] = (ids, other[sel])
                per_concept[key] = [None if not np.isfinite(x) else float(x) for x in own]
            scores.append(m)
        out["detection_n_concepts"] = float(sum(enough))
        return out, samples, per_concept, detection_schema(scores)

    # --- usefulness beyond t ---
    def usefulness(self, inp: EvalInput, s: SampleScorer, seed: int):
        from coxlmm.grounding.text import RandomWordPool, keep_words

        test = inp.test
        M = len(test)
        words = inp.concepts.words
        top = top_concepts(test.V, 1)
        top_words = [words[t[0]] if t else [] for t in top]
        pool = RandomWordPool(inp.services.lens, max(64, 4 * self.n_draws), seed=seed + 17, max_words=inp.n_words,
                              keep=keep_words(inp.factors))
        rnd = pool.draw([len(w) or inp.n_words for w in top_words], self.n_draws, np.random.default_rng([seed, 9]))
        t = test.words(inp.token)  # each sample's target word
        columns = {"t": [[w.casefold()] for w in t], "k": [with_token(w, t[m]) for m, w in enumerate(top_words)]}
        columns |= {f"r{r}": [with_token(rnd[m][r], t[m]) if top_words[m] else [t[m].casefold()] for m in range(M)]
                    for r in range(self.n_draws)}
        scored = s.scores_many(columns)
        out: dict[str, float] = {}
        samples: dict[str, tuple[list[str], np.ndarray]] = {}
        metrics = []
        for m in scored["t"]:
            base = scored["t"][m].double().numpy()
            gain = scored["k"][m].double().numpy() - base
            gain_rnd = np.stack([scored[f"r{r}"][m].double().numpy() - base for r in range(self.n_draws)], 1)
            out |= mean_std(f"gain_{m}", gain) | mean_std(f"gain_{m}_rnd_words", gain_rnd)
            samples[f"gain_{m}"] = (test.ids, gain)
            samples[f"gain_{m}_rnd_words"] = (test.ids, gain_rnd)
            metrics.append(m)
        return out, samples, usefulness_schema(metrics)

    # --- factor accuracy ---
    def factor_accuracy_scores(self, inp: EvalInput, seed: int):
        from coxlmm.directions import random_directions

        train, test = inp.train, inp.test
        names, Y_train = target_labels(train.annotations, inp.factors, test.annotations)
        if not names:
            return {}, {}, Schema()
        truth = [a.get("target") or {} for a in test.annotations]

        def accuracy(V_train: np.ndarray, V_test: np.ndarray, match=None) -> tuple[np.ndarray, list]:
            match = match if match is not None else match_concepts(auroc_matrix(V_train, Y_train))
            value_of = {k: names[j] for j, k in enumerate(match) if k is not None}
            k1 = [t[0] if t else None for t in top_concepts(torch.from_numpy(V_test), 1)]
            right = np.array([float(k is not None and k in value_of and truth[m].get(value_of[k][0]) == value_of[k][1])
                              for m, k in enumerate(k1)])
            return right, match

        V_tr, V_te = train.V.detach().float().numpy(), test.V.detach().float().numpy()
        own, match = accuracy(V_tr, V_te)
        matched_share = float(np.mean([k in {c for c in match if c is not None} for k in
                                       [t[0] if t else None for t in top_concepts(test.V, 1)]]))
        out = {"factor_accuracy": float(own.mean()), "factor_accuracy_matched_share": matched_share}
        samples = {"factor_accuracy": (test.ids, own)}
        K = V_tr.shape[1]
        U_r = random_directions(K, train.Z.shape[1], seed=seed + 13)
        mean = train.Z.float().mean(0)
        rd, _ = accuracy(centred_relu(train.Z, U_r, mean).numpy(), centred_relu(test.Z, U_r, mean).numpy())
        out["factor_accuracy_random_dict"] = float(rd.mean())
        samples["factor_accuracy_random_dict"] = (test.ids, rd)
        nulls = ["factor_accuracy_random_dict"]
        if test.noise:
            draws = np.stack([accuracy(V_tr, inp.dictionary.encode(n).detach().float().numpy(), match)[0]
                              for n in test.noise], 1)
            out["factor_accuracy_prefix_only"] = float(draws.mean())
            samples["factor_accuracy_prefix_only"] = (test.ids, draws)
            nulls.append("factor_accuracy_prefix_only")
        return out, samples, factor_schema(nulls)


def detection_schema(metrics: list[str]) -> Schema:
    t1 = ("table1",)
    scores, samples, concepts = [Score("detection_n_concepts", "concepts with a detection score", digits=0)], [], []
    for m in metrics:
        M = METRICS[m]
        for task, title in (("detection", "Detection"), ("fuzzing", "Fuzzing")):
            row = f"{title} {M}"
            key = f"{task}_{m}"
            scores += [Score(f"{key}_mean", row, t1, row=row, better=1, summary=task == "detection"),
                       Score(f"{key}_rnd_words_mean", row, t1, row=row, of="Rnd-Words"),
                       Score(f"{key}_other_concept_mean", row, t1, row=row, of="Rnd-Concept"),
                       Score(f"{key}_random_dict_mean", row, t1, row=row, of="Random dict.")]
            samples += [Samples(key, f"{row} AUROC, concept", unit="concept",
                                nulls=(f"{key}_rnd_words", f"{key}_other_concept")),
                        Samples(f"{key}_rnd_words", f"{row} AUROC, concept", of="Rnd-Words", unit="concept"),
                        Samples(f"{key}_other_concept", f"{row} AUROC, concept", of="Rnd-Concept", unit="concept")]
            concepts.append(ConceptColumn(key, f"{task} AUROC ({M}): words predict where it fires", better=1,
                                          sortable=True))
    return Schema(scores=scores, samples=samples, concepts=concepts, tables=[table1_spec()])


def usefulness_schema(metrics: list[str]) -> Schema:
    t1 = ("table1",)
    scores, samples = [], []
    for m in metrics:
        M = METRICS[m]
        row = f"Gain over t ({M})"
        scores += [Score(f"gain_{m}_mean", row, t1, row=row, spread=f"gain_{m}_std", better=1),
                   Score(f"gain_{m}_rnd_words_mean", row, t1, row=row, of="Rnd-Words", spread=f"gain_{m}_rnd_words_std"),
                   Score(f"gain_{m}_std", f"{row}: std over samples"),
                   Score(f"gain_{m}_rnd_words_std", f"{row} (Rnd-Words): std over samples")]
        samples += [Samples(f"gain_{m}", f"{row}, test sample", nulls=(f"gain_{m}_rnd_words",)),
                    Samples(f"gain_{m}_rnd_words", f"{row}, test sample", of="Rnd-Words")]
    return Schema(scores=scores, samples=samples, tables=[table1_spec()])


def factor_schema(nulls: list[str]) -> Schema:
    t1 = ("table1",)
    row = "Factor acc."
    scores = [Score("factor_accuracy", row, t1, row=row, better=1, summary=True),
              Score("factor_accuracy_random_dict", row, t1, row=row, of="Random dict."),
              Score("factor_accuracy_prefix_only", row, t1, row=row, of="Prefix-only"),
              Score("factor_accuracy_matched_share", "share of test samples whose top-1 concept has a matched value")]
    samples = [Samples("factor_accuracy", f"{row}, test sample", nulls=tuple(nulls)),
               Samples("factor_accuracy_random_dict", f"{row}, test sample", of="Random dict."),
               Samples("factor_accuracy_prefix_only", f"{row}, test sample", of="Prefix-only")]
    return Schema(scores=scores, samples=samples, tables=[table1_spec()])
