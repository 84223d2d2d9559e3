"""Recovery of a dataset's ground-truth factors by a concept dictionary, against its nulls.

Notation: V (M, K) concept activations, one row per sample; Y (M, F) binary labels, column j is
one factor value *of the target object*, e.g. ("colour", "red") = "the object whose shape word t was
matched is red" (the store's per-sample `annotation["target"]`, from `dataset.annotate`); A (F, K)
the AUROC of concept k's activation at predicting factor value j. The factors and their values are
declared by the dataset (`factor_values()`); a value must have positives and negatives in both
splits to be scored (an AUROC needs both classes), so e.g. shape = t is dropped.

**Nothing is selected on the data it is scored on.** Every choice of concept is made on the
*training* split and scored on the *test* split:

    recovery_matched    factor values assigned one-to-one to distinct concepts by the Hungarian
                        method on A_train; the mean of A_test over the assignment (values left
                        without a concept, F > K, count as 0.5)
    recovery_lenient    per value, the concept with the best A_train (not one-to-one), scored on A_test
    purity_corrected    per concept, the share s of its positive test activation mass on the test
                        samples of its train-best value, corrected for that value's base rate p:
                        (s − p) / (1 − p); 0 = no better than the base rate
    grounding_accuracy  share of factor values whose train-matched concept's words T_k name the value

Matching on the test set and scoring there would read a permuted label set at 0.55–0.66, not 0.5
(the maximum of K noisy AUROCs); matched on train it reads 0.5. Each number comes with its
**label-permutation null**, the same procedure (match on train, score on test) with the rows of the
labels shuffled in both splits, `n_permutations` times: `recovery_matched_chance` (its mean),
`_chance_q95` and the one-sided permutation p-value `recovery_matched_p`.

The same scores for the nulls, with a suffix:

    _prefix_only  the same dictionary on the position-matched noise source of the same samples (each
                  sample's own caption prefix after a noise image), matched on the training noise
                  states and scored on the test ones, averaged over the noise draws: what the text
                  before t already carries. A factor recovered no better than this does not come
                  from the image.
    _random       K random unit directions (seeded) on the *centred* features, activations
                  ReLU((Z − mean_train) U_rᵀ), matched and scored like the dictionary.
    _diffmean     the supervised reference (it uses the training labels): one direction per value,
                  the mean of the training Z with the value minus the mean of the rest
                  (concepts/diffmean.py), activations ReLU((Z − mean) uᵀ), each value read from its
                  own direction (no matching), scored on test.

Split by where the information came from (`annotation["text_known"]`, the factors whose value some
word of the generated prefix names, true or not): `recovery_matched/<factor>/text_known|image_only`,
with `recovery_text_wrong/<factor>`, the share of text-known samples whose prefix named a value the
target does not have.

The pure functions (`auroc`, `auroc_matrix`, `match_concepts`, `recovery`, `permutation_null`, ...)
take numpy arrays; the `Recovery` metric only gathers rows and labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.stats import rankdata

from coxlmm.metrics.assignment import linear_sum_assignment
from coxlmm.metrics.base import NOISE_TEST, NOISE_TRAIN, EvalInput, Metric, MetricResult
from coxlmm.metrics.schema import ConceptColumn, Schema, Score, TableSpec

CHANCE = 0.5  # AUROC of an uninformative score; what an unassigned factor value counts as


# --- labels -----------------------------------------------------------------------------------------
def value_labels(annotations: Sequence[dict[str, Any]], names: Sequence[tuple[str, str]]) -> np.ndarray:
    """(M, F) bool: "the target object has factor = value" for each (factor, value) of `names`."""
    targets = [a.get("target") or {} for a in annotations]
    return np.array([[t.get(f) == v for f, v in names] for t in targets], dtype=bool).reshape(len(targets), len(names))


def target_labels(annotations: Sequence[dict[str, Any]], factors: dict[str, Sequence[str]],
                  *also: Sequence[dict[str, Any]]) -> tuple[list[tuple[str, str]], np.ndarray]:
    """Binary labels "the target object has factor = value", one column per declared value.

    annotations: one dict per sample (row) with `annotation["target"] = {factor: value}`; `also`:
    the annotations of other splits that must hold both classes too (a value is kept only where
    every split has a positive and a negative). Returns (names, Y) of the first split: names[j] =
    (factor, value), Y (M, F) bool."""
    names = [(f, str(v)) for f, values in factors.items() for v in values]
    splits = [annotations, *also]
    ok = np.ones(len(names), dtype=bool)
    for ann in splits:
        Y = value_labels(ann, names)
        ok &= (Y.sum(0) > 0) & (Y.sum(0) < len(ann))
    names = [n for n, keep in zip(names, ok) if keep]
    return names, value_labels(annotations, names)


# --- AUROC ------------------------------------------------------------------------------------------
def auroc_matrix(V: np.ndarray, Y: np.ndarray, ranks: np.ndarray | None = None) -> np.ndarray:
    """AUROC of every column of V (M, K) at predicting every column of Y (M, F) -> (F, K).

    Rank-based (Mann-Whitney U / (n_pos · n_neg)); tied scores share their average rank, so a
    constant score gives exactly 0.5. Every column of Y must hold a positive and a negative.
    `ranks`: `rankdata(V, axis=0)` when the caller has it (permutations reuse it).
    """
    V = np.asarray(V, dtype=np.float64)
    Y = np.asarray(Y, dtype=bool)
    if V.shape[0] != Y.shape[0]:
        raise ValueError(f"V has {V.shape[0]} rows but Y has {Y.shape[0]}: one row per sample in both")
    n_pos = Y.sum(axis=0).astype(np.float64)  # (F,)
    n_neg = Y.shape[0] - n_pos
    if np.any(n_pos == 0) or np.any(n_neg == 0):
        raise ValueError("every label column needs at least one positive and one negative sample")
    R = rankdata(V, axis=0) if ranks is None else ranks  # (M, K), average ranks for ties
    rank_sum = Y.T.astype(np.float64) @ R  # (F, K): sum of the positives' ranks
    return (rank_sum - (n_pos * (n_pos + 1) / 2)[:, None]) / (n_pos * n_neg)[:, None]


def auroc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """AUROC of one score vector for one binary label vector (ties count one half)."""
    s = np.asarray(scores, dtype=np.float64)[:, None]
    y = np.asarray(labels, dtype=bool)[:, None]
    return float(auroc_matrix(s, y)[0, 0])


# --- matching and scores ----------------------------------------------------------------------------
def match_concepts(A: np.ndarray) -> list[int | None]:
    """One-to-one assignment of factor values (rows of A) to distinct concepts (columns), maximising
    the total AUROC (Hungarian method). Returns the concept of each value, None where F > K leaves
    a value without one."""
    match: list[int | None] = [None] * A.shape[0]
    if A.size == 0:
        return match
    rows, cols = linear_sum_assignment(A, maximize=True)
    for r, c in zip(rows, cols):
        match[int(r)] = int(c)
    return match


def matched_aurocs(A: np.ndarray, match: Sequence[int | None]) -> np.ndarray:
    """(F,) AUROC of each value's matched concept; unmatched values count as chance (0.5)."""
    return np.array([A[j, k] if k is not None else CHANCE for j, k in enumerate(match)], dtype=np.float64)


def purity_corrected(V: np.ndarray, Y: np.ndarray, best: np.ndarray) -> float:
    """Mean over concepts of (s − p) / (1 − p): s the share of the concept's positive activation mass on
    the samples of its value `best[k]` (chosen elsewhere: on train), p that value's base rate. Concepts
    with no positive mass (a ReLU'd direction that never fires) are left out; nan if none is left."""
    P = np.clip(np.asarray(V, dtype=np.float64), 0.0, None)  # PCA is signed: mass = positive part
    mass = P.sum(axis=0)  # (K,)
    on_best = np.einsum("mk,mk->k", P, Y[:, best].astype(np.float64))
    base = Y.mean(axis=0)[best]
    ok = (mass > 0) & (base < 1)
    return float(np.mean((on_best[ok] / mass[ok] - base[ok]) / (1 - base[ok]))) if ok.any() else float("nan")


def words_name_value(words: Sequence[str], value: str) -> bool:
    """True when a concept's words name a factor value: every word of the value ("light gray" has
    two) is among the words, singular or plural ("circles" names circle)."""
    have = {w.casefold() for w in words} | {w.casefold()[:-1] for w in words if w.endswith("s")}
    return all(part in have for part in value.casefold().split())


def matched_score(V_fit: np.ndarray, Y_fit: np.ndarray, V_eval: np.ndarray, Y_eval: np.ndarray,
                  ranks_fit: np.ndarray | None = None, ranks_eval: np.ndarray | None = None) -> np.ndarray:
    """(F,) AUROC on (V_eval, Y_eval) of the concepts matched one-to-one on (V_fit, Y_fit).
    Pass the same arrays twice to reproduce in-sample selection (what the test-matched score did)."""
    match = match_concepts(auroc_matrix(V_fit, Y_fit, ranks_fit))
    return matched_aurocs(auroc_matrix(V_eval, Y_eval, ranks_eval), match)


def permutation_null(V_fit: np.ndarray, Y_fit: np.ndarray, V_eval: np.ndarray, Y_eval: np.ndarray,
                     n_permutations: int = 200, seed: int = 0, same_split: bool = False) -> np.ndarray:
    """(n_permutations, F) matched AUROCs with the label rows shuffled (each split on its own): the
    chance level of `matched_score` for this V and these label frequencies. `same_split`: the fit and
    the evaluation split are one (V_fit is V_eval): shuffle once, which reproduces the selection bias
    of matching and scoring on the same samples."""
    rng = np.random.default_rng(seed)
    r_fit = rankdata(np.asarray(V_fit, dtype=np.float64), axis=0)
    r_eval = r_fit if same_split else rankdata(np.asarray(V_eval, dtype=np.float64), axis=0)
    out = np.empty((n_permutations, np.asarray(Y_fit).shape[1]))
    for i in range(n_permutations):
        Yf = Y_fit[rng.permutation(len(Y_fit))]
        Ye = Yf if same_split else Y_eval[rng.permutation(len(Y_eval))]
        out[i] = matched_score(V_fit, Yf, V_eval, Ye, r_fit, r_eval)
    return out


@dataclass
class RecoveryResult:
    """Scores of one dictionary's activations, matched on train and scored on test (module doc)."""

    names: list[tuple[str, str]]  # (factor, value) per row of A
    A_train: np.ndarray  # (F, K) AUROC on the training split: the matching's input
    A_test: np.ndarray  # (F, K) AUROC on the test split
    match: list[int | None]  # matched concept per value (Hungarian on A_train)
    matched: np.ndarray  # (F,) test AUROC of the matched concept
    lenient: np.ndarray  # (F,) test AUROC of each value's train-best concept
    named: np.ndarray | None  # (F,) bool: the matched concept's words name the value; None without words
    purity: float

    def scores(self, suffix: str = "", per_factor: bool = True) -> dict[str, float]:
        out = {f"recovery_lenient{suffix}": float(self.lenient.mean()),
               f"recovery_matched{suffix}": float(self.matched.mean()),
               f"purity_corrected{suffix}": self.purity}
        if self.named is not None:
            out[f"grounding_accuracy{suffix}"] = float(self.named.mean())
        if per_factor:
            for f, sel in factor_columns(self.names).items():
                out[f"recovery_lenient{suffix}/{f}"] = float(self.lenient[sel].mean())
                out[f"recovery_matched{suffix}/{f}"] = float(self.matched[sel].mean())
                if self.named is not None:
                    out[f"grounding_accuracy{suffix}/{f}"] = float(self.named[sel].mean())
        return out

    def table(self, words: Sequence[Sequence[str]] | None = None) -> list[dict[str, Any]]:
        """One JSON-friendly row per factor value: its matched concept (chosen on train) and its test AUROC."""
        rows = []
        for j, (factor, value) in enumerate(self.names):
            k = self.match[j]
            rows.append({
                "factor": factor, "value": value,
                "best_concept_train": int(self.A_train[j].argmax()),
                "matched_concept": k, "auroc_matched_train": round(float(self.A_train[j, k]), 4) if k is not None else None,
                "auroc_matched": round(float(self.matched[j]), 4),
                "matched_words": list(words[k]) if words is not None and k is not None else [],
                "words_name_value": bool(self.named[j]) if self.named is not None else None,
            })
        return rows


def factor_columns(names: Sequence[tuple[str, str]]) -> dict[str, np.ndarray]:
    """factor -> bool mask of its values among `names`, in first-seen order."""
    factors = np.array([f for f, _ in names])
    return {f: factors == f for f in dict.fromkeys(factors.tolist())}


def recovery(V_train: np.ndarray, Y_train: np.ndarray, V_test: np.ndarray, Y_test: np.ndarray,
             names: list[tuple[str, str]], words: Sequence[Sequence[str]] | None = None,
             match: Sequence[int | None] | None = None) -> RecoveryResult:
    """Every recovery score of activations (train, test) for labels (train, test) named `names`.
    `match`: a fixed value -> concept assignment (DiffMean's identity) instead of the Hungarian one."""
    A_train, A_test = auroc_matrix(V_train, Y_train), auroc_matrix(V_test, Y_test)
    match = list(match) if match is not None else match_concepts(A_train)
    best = A_train.argmax(axis=1)
    named = None
    if words is not None:
        named = np.array([k is not None and words_name_value(words[k], value)
                          for (_, value), k in zip(names, match)], dtype=bool)
    return RecoveryResult(names, A_train, A_test, match, matched_aurocs(A_test, match), A_test[np.arange(len(best)), best],
                          named, purity_corrected(V_test, Y_test, A_train.argmax(axis=0)))


def split_scores(res: RecoveryResult, V: np.ndarray, Y: np.ndarray, text_known: np.ndarray, suffix: str = ""
                 ) -> dict[str, float]:
    """Test AUROC of each factor's matched concepts on the test samples whose caption prefix named a
    value of that factor (`text_known[m, j]`, (M, F) bool) and on the others (image-only):
    `recovery_matched{suffix}/<factor>/text_known|image_only`, their means over values, and counts.
    The matching is the training split's; a subset without both classes of a value is left out."""
    out: dict[str, float] = {}
    pooled: dict[str, list[float]] = {"text_known": [], "image_only": []}
    for f, sel in factor_columns(res.names).items():
        cols = np.flatnonzero(sel)
        for kind, rows in (("text_known", text_known[:, cols[0]]), ("image_only", ~text_known[:, cols[0]])):
            vals = []
            for j in cols:
                k, y = res.match[j], Y[rows, j]
                if k is not None and 0 < y.sum() < len(y):
                    vals.append(auroc(V[rows, k], y))
            out[f"recovery_n_samples/{f}/{kind}"] = float(rows.sum())
            if vals:
                out[f"recovery_matched{suffix}/{f}/{kind}"] = float(np.mean(vals))
                pooled[kind] += vals
    for kind, vals in pooled.items():
        if vals:
            out[f"recovery_matched{suffix}/{kind}"] = float(np.mean(vals))
    return out


def centred_relu(Z: torch.Tensor, U: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """ReLU((Z − mean) Uᵀ): (M, B), (K, B), (B,) -> (M, K). Centred, so a direction fires on about half
    the samples instead of on all or none (LLM states share a large common component)."""
    return torch.relu((Z.float() - mean.float()) @ U.float().T)


# --- the description ---------------------------------------------------------------------------------
RECOVERY = TableSpec("recovery", "Ground-truth recovery of the target object's factors (test AUROC of the concepts "
                     "matched on train; chance = the label-permutation null)",
                     "Matched: one concept per factor value, chosen on the training split (Hungarian), scored on "
                     "the test split. Chance: the same procedure with the labels permuted. Prefix-only: the same "
                     "dictionary on the position-matched noise source (noise image, the sample's own caption "
                     "prefix): what the text before t already carries. Random dict.: centred random directions. "
                     "DiffMean uses the training labels. Purity (corr.): test activation share on the concept's "
                     "train-best value, corrected for its base rate (0 = chance).", order=50)
SPLIT = TableSpec("recovery_split", "Recovery by where the information came from (test AUROC of the "
                  "train-matched concepts)",
                  "text-known: the generated caption had named some value of the factor before t (the state "
                  "that predicts t has read it; `wrong`: the share of those whose named value was not the "
                  "target's); image-only: the others. Compare image-only with prefix-only, image-only.", order=55)


NULL_TAGS = {"": None, "_prefix_only": "Prefix-only", "_random": "Random dict.", "_diffmean": "DiffMean (labels)"}
BASES = {"recovery_matched": "Matched", "recovery_lenient": "Lenient", "purity_corrected": "Purity (corr.)",
         "grounding_accuracy": "Grounding acc."}


def recovery_schema(factors: Sequence[str], split: bool) -> Schema:
    """Every score the metric can write for these factors; the recovery table shows the dictionary's
    matched, lenient, purity and grounding scores, the chance level, and each null's matched score."""
    scores = []
    for f in [None, *factors]:
        at, row = (f"/{f}" if f else ""), f
        for tag, null in NULL_TAGS.items():
            for base, label in BASES.items():
                if base == "purity_corrected" and f:
                    continue  # purity is per concept, not per factor
                in_table = tag == "" or base == "recovery_matched"
                scores.append(Score(f"{base}{tag}{at}", null if tag and base == "recovery_matched" else
                                    (f"{label} ({null})" if null else label), ("recovery",) if in_table else (),
                                    row=row, of=null, better=0 if tag else 1,
                                    summary=not f and not tag and base == "recovery_matched",
                                    curve=not f and base in ("recovery_matched", "grounding_accuracy") and tag != "_diffmean"))
        scores.append(Score(f"recovery_matched_chance{at}", "Chance (perm.)", ("recovery",), row=row, of="Permutation",
                            curve=not f))
    scores += [Score("recovery_matched_p", "p (perm.)", ("recovery",)),
               Score("recovery_matched_chance_q95", "Chance (perm.), 95th percentile"),
               Score("recovery_n_values", "factor values scored", digits=0)]
    if split:
        for f in [None, *factors]:
            at = f"/{f}" if f else ""
            row = f or "all"
            scores += [Score(f"recovery_matched{at}/text_known", "text-known", ("recovery_split",), row=row),
                       Score(f"recovery_matched{at}/image_only", "image-only", ("recovery_split",), row=row),
                       Score(f"recovery_matched_prefix_only{at}/text_known", "prefix-only, text-known", ("recovery_split",),
                             row=row, of="Prefix-only"),
                       Score(f"recovery_matched_prefix_only{at}/image_only", "prefix-only, image-only", ("recovery_split",),
                             row=row, of="Prefix-only"),
                       Score(f"recovery_matched_random{at}/text_known", "random, text-known", (), row=row, of="Random dict."),
                       Score(f"recovery_matched_random{at}/image_only", "random, image-only", ("recovery_split",), row=row,
                             of="Random dict.")]
            if f:
                scores += [Score(f"recovery_n_samples/{f}/text_known", "n text-known", ("recovery_split",), row=row, digits=0),
                           Score(f"recovery_n_samples/{f}/image_only", "n image-only", ("recovery_split",), row=row, digits=0),
                           Score(f"recovery_text_wrong/{f}", "text-known, wrong", ("recovery_split",), row=row)]
    return Schema(scores=scores,
                  concepts=[ConceptColumn("recovery_value", "matched value (train)"),
                            ConceptColumn("recovery_auroc", "matched value: test AUROC", better=1, sortable=True)],
                  tables=[RECOVERY, SPLIT])


# --- the metric -------------------------------------------------------------------------------------
class Recovery(Metric):
    """Ground-truth factor recovery with its nulls (module doc); nothing on data without factors.

    Needs a test split (the matching is made on train). Args: prefix_only, random_baseline, diffmean:
    compute each null / reference; n_permutations: draws of the label-permutation null.
    Artefact: "recovery_table", one row per factor value (the concept matched on train, its train and
    test AUROC, its words, and the prefix-only / random / DiffMean test AUROC of the value)."""

    name = "recovery"

    def __init__(self, prefix_only: bool = True, random_baseline: bool = True, diffmean: bool = True,
                 n_permutations: int = 200):
        from coxlmm.errors import CoxlmmError

        if not isinstance(n_permutations, int) or n_permutations < 1:
            raise CoxlmmError(f"recovery: n_permutations={n_permutations!r} must be a positive integer (draws of "
                              "the label-permutation null; 200 gives its mean to ±0.002).")
        self.prefix_only, self.random_baseline, self.diffmean = prefix_only, random_baseline, diffmean
        self.n_permutations = n_permutations

    def requests(self) -> frozenset:
        return frozenset({NOISE_TRAIN, NOISE_TEST}) if self.prefix_only else frozenset()

    def __call__(self, inp: EvalInput) -> MetricResult:
        import logging

        train, test = inp.train, inp.test
        if not inp.factors:
            return MetricResult()  # a dataset without ground truth (COCO, folders)
        if test is None or not len(test):
            logging.getLogger(__name__).warning("recovery skipped: it matches concepts on train and scores them on "
                                                "test, and this run has no test features")
            return MetricResult()
        names, Y_train = target_labels(train.annotations, inp.factors, test.annotations)
        if not names:
            return MetricResult()
        Y_test = value_labels(test.annotations, names)
        words = inp.concepts.words
        V_tr, V_te = _np(train.V), _np(test.V)
        res = recovery(V_tr, Y_train, V_te, Y_test, names, words)
        out = res.scores() | {"recovery_n_values": float(len(names))}
        null = permutation_null(V_tr, Y_train, V_te, Y_test, self.n_permutations, seed=inp.seed)  # (P, F)
        out |= {"recovery_matched_chance": float(null.mean()),
                "recovery_matched_chance_q95": float(np.quantile(null.mean(1), 0.95)),
                "recovery_matched_p": float((np.sum(null.mean(1) >= res.matched.mean()) + 1) / (len(null) + 1))}
        for f, sel in factor_columns(names).items():
            out[f"recovery_matched_chance/{f}"] = float(null[:, sel].mean())
        table = res.table(words)
        extra: dict[str, tuple[RecoveryResult, np.ndarray]] = {}  # tag -> (result, test activations)
        if self.prefix_only and train.noise and test.noise:
            draws = [(_np(inp.dictionary.encode(ntr)), _np(inp.dictionary.encode(nte)))
                     for ntr, nte in zip(train.noise, test.noise)]
            results = [recovery(a, Y_train, b, Y_test, names, words) for a, b in draws]
            extra["prefix_only"] = (_mean_result(results), draws[0][1])
        mean = train.Z.float().mean(0)
        if self.random_baseline:
            from coxlmm.directions import random_directions

            U_r = random_directions(train.V.shape[1], train.Z.shape[1], seed=inp.seed)
            a, b = _np(centred_relu(train.Z, U_r, mean)), _np(centred_relu(test.Z, U_r, mean))
            extra["random"] = (recovery(a, Y_train, b, Y_test, names, inp.services.ground(U_r)), b)
        if self.diffmean:
            U_dm = self._diffmean(inp, Y_train)
            if U_dm is not None:
                a, b = _np(centred_relu(train.Z, U_dm, mean)), _np(centred_relu(test.Z, U_dm, mean))
                extra["diffmean"] = (recovery(a, Y_train, b, Y_test, names, inp.services.ground(U_dm),
                                              match=range(len(names))), b)
        for tag, (r, _) in extra.items():
            out |= r.scores(suffix=f"_{tag}")
            for row, a in zip(table, r.matched):
                row[f"auroc_{tag}"] = round(float(a), 4)
        split = any("text_known" in a for a in test.annotations)
        if split:  # where the information came from
            known = np.array([[f in (a.get("text_known") or ()) for f, _ in names] for a in test.annotations],
                             dtype=bool).reshape(len(test), -1)
            out |= split_scores(res, V_te, Y_test, known)
            for tag in ("prefix_only", "random"):
                if tag in extra:
                    r, V_tag = extra[tag]
                    out |= {k: v for k, v in split_scores(r, V_tag, Y_test, known, f"_{tag}").items()
                            if not k.startswith("recovery_n_samples")}
            out |= text_wrong(test.annotations, [f for f in factor_columns(names)])
        per_concept_value: list[str | None] = [None] * V_tr.shape[1]
        per_concept_auroc: list[float | None] = [None] * V_tr.shape[1]
        for (f, v), k, a in zip(names, res.match, res.matched):
            if k is not None:
                per_concept_value[k] = f"{f} = {v}"
                per_concept_auroc[k] = float(a)
        schema = recovery_schema(list(factor_columns(names)), split).only(out)
        return MetricResult(out, {"recovery_table": table}, schema=schema,
                            concepts={"recovery_value": per_concept_value, "recovery_auroc": per_concept_auroc})

    @staticmethod
    def _diffmean(inp: EvalInput, Y_train: np.ndarray) -> torch.Tensor | None:
        """DiffMean directions (F, B) from the *training* samples' labels, one per evaluated value."""
        from coxlmm.concepts.diffmean import diff_mean

        if not (Y_train.any(0) & ~Y_train.all(0)).all():
            return None  # a value with no positive (or no negative) training sample has no direction
        return diff_mean(inp.train.Z, torch.from_numpy(Y_train))


def text_wrong(annotations: Sequence[dict[str, Any]], factors: Sequence[str]) -> dict[str, float]:
    """`recovery_text_wrong/<factor>`: among the samples whose prefix named a value of the factor, the
    share whose named value (`annotation["text_named"]`) is not the target's."""
    out = {}
    for f in factors:
        named = [(a.get("text_named") or {}).get(f) for a in annotations]
        truth = [(a.get("target") or {}).get(f) for a in annotations]
        pairs = [(n, t) for n, t in zip(named, truth) if n is not None]
        if pairs:
            out[f"recovery_text_wrong/{f}"] = float(np.mean([n != t for n, t in pairs]))
    return out


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().float().cpu().numpy()


def _mean_result(results: list[RecoveryResult]) -> RecoveryResult:
    """The mean over noise draws of several results with the same names (matched AUROCs, purity ...)."""
    first = results[0]
    if len(results) == 1:
        return first
    mean = lambda xs: np.mean(np.stack(xs), axis=0)  # noqa: E731
    named = None if first.named is None else mean([r.named.astype(float) for r in results])
    return RecoveryResult(first.names, mean([r.A_train for r in results]), mean([r.A_test for r in results]), first.match,
                          mean([r.matched for r in results]), mean([r.lenient for r in results]), named,
                          float(np.nanmean([r.purity for r in results])))
