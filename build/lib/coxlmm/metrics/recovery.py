"""Recovery of a dataset's ground-truth factors by a concept dictionary, against its nulls.

Notation: V (M, K) concept activations, one row per sample; Y (M, F) binary labels, column j is
one factor value *of the target object*, e.g. ("colour", "red") = "the object whose shape word t was
matched is red" (the store's per-sample `annotation["target"]`, from `dataset.annotate`); A (F, K)
the AUROC of concept k's activation at predicting factor value j. The factors and their values are
declared by the dataset (`factor_values()`); a value that every sample has (shape = t) or none has
is dropped (an AUROC needs both classes).

Scores (AUROC-based ones in [0, 1], 0.5 = chance), overall and per factor (`<key>/<factor>`):

    recovery_lenient    mean_j max_k A[j, k]. Near 1 for almost any dictionary of a few dozen
                        concepts, so only reported beside the strict scores below.
    recovery_matched    factor values assigned one-to-one to distinct concepts (Hungarian method on
                        A), mean AUROC of the assignment; values left without a concept (F > K)
                        count as 0.5.
    purity_corrected    per concept, the share s of its positive activation mass on the samples of its
                        best value (highest AUROC), corrected for that value's base rate p:
                        (s − p) / (1 − p); 0 = no better than the base rate, 1 = all mass on the value.
    grounding_accuracy  share of factor values whose matched concept's words T_k name the value.

The same scores for the nulls, with a suffix:

    _prefix_only  the same dictionary on the position-matched noise source of the same samples (each
                  sample's own caption prefix after a noise image): what the text before t already
                  carries. A factor recovered no better than this does not come from the image.
    _random       K random unit directions (seeded) on the *centred* features, activations
                  ReLU((Z − mean) U_rᵀ), words read through the same lens.
    _diffmean     the supervised reference (it uses the training labels, the others do not): one
                  direction per value, the mean of the training Z with the value minus the mean of the
                  rest (concepts/diffmean.py), activations ReLU((Z − mean) uᵀ).

The pure functions (`auroc`, `auroc_matrix`, `match_concepts`, ...) take numpy arrays; the
`Recovery` metric only gathers rows and labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from scipy.stats import rankdata

from coxlmm.metrics.base import NOISE_TEST, EvalInput, MetricResult

CHANCE = 0.5  # AUROC of an uninformative score; what an unassigned factor value counts as


# --- labels -----------------------------------------------------------------------------------------
def target_labels(annotations: Sequence[dict[str, Any]], factors: dict[str, Sequence[str]]
                  ) -> tuple[list[tuple[str, str]], np.ndarray]:
    """Binary labels "the target object has factor = value", one column per declared value.

    annotations: one dict per sample (row) with `annotation["target"] = {factor: value}`.
    Returns (names, Y): names[j] = (factor, value), Y (M, F) bool. Values with no positive or no
    negative sample are dropped (an AUROC needs both), e.g. shape = t.
    """
    targets = [a.get("target") or {} for a in annotations]
    names: list[tuple[str, str]] = []
    columns: list[np.ndarray] = []
    for factor, values in factors.items():
        for value in values:
            y = np.array([t.get(factor) == value for t in targets], dtype=bool)
            if 0 < y.sum() < len(y):
                names.append((factor, str(value)))
                columns.append(y)
    Y = np.stack(columns, axis=1) if columns else np.zeros((len(targets), 0), dtype=bool)
    return names, Y


# --- AUROC ------------------------------------------------------------------------------------------
def auroc_matrix(V: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """AUROC of every column of V (M, K) at predicting every column of Y (M, F) -> (F, K).

    Rank-based (Mann-Whitney U / (n_pos · n_neg)); tied scores share their average rank, so a
    constant score gives exactly 0.5. Every column of Y must hold a positive and a negative.
    """
    V = np.asarray(V, dtype=np.float64)
    Y = np.asarray(Y, dtype=bool)
    if V.shape[0] != Y.shape[0]:
        raise ValueError(f"V has {V.shape[0]} rows but Y has {Y.shape[0]}: one row per sample in both")
    n_pos = Y.sum(axis=0).astype(np.float64)  # (F,)
    n_neg = Y.shape[0] - n_pos
    if np.any(n_pos == 0) or np.any(n_neg == 0):
        raise ValueError("every label column needs at least one positive and one negative sample")
    R = rankdata(V, axis=0)  # (M, K), average ranks for ties
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


def purity_corrected(V: np.ndarray, Y: np.ndarray, A: np.ndarray) -> float:
    """Mean over concepts of (s − p) / (1 − p): s the share of the concept's positive activation mass on
    the samples of its best value (argmax_j A[j, k]), p that value's base rate. Concepts with no
    positive mass (a ReLU'd direction that never fires) are left out; nan if none is left."""
    P = np.clip(np.asarray(V, dtype=np.float64), 0.0, None)  # PCA is signed: mass = positive part
    mass = P.sum(axis=0)  # (K,)
    best = A.argmax(axis=0)  # (K,)
    on_best = np.einsum("mk,mk->k", P, Y[:, best].astype(np.float64))
    base = Y.mean(axis=0)[best]
    ok = (mass > 0) & (base < 1)
    return float(np.mean((on_best[ok] / mass[ok] - base[ok]) / (1 - base[ok]))) if ok.any() else float("nan")


def words_name_value(words: Sequence[str], value: str) -> bool:
    """True when a concept's words name a factor value: every word of the value ("light gray" has
    two) is among the words, singular or plural ("circles" names circle)."""
    have = {w.casefold() for w in words} | {w.casefold()[:-1] for w in words if w.endswith("s")}
    return all(part in have for part in value.casefold().split())


@dataclass
class RecoveryResult:
    """Scores of one dictionary against one set of factor labels (see the module doc)."""

    names: list[tuple[str, str]]  # (factor, value) per row of A
    A: np.ndarray  # (F, K) AUROC
    match: list[int | None]  # matched concept per value
    matched: np.ndarray  # (F,) AUROC of the matched concept
    named: np.ndarray | None  # (F,) bool: the matched concept's words name the value; None without words
    purity: float

    def scores(self, suffix: str = "", per_factor: bool = True) -> dict[str, float]:
        out = {
            f"recovery_lenient{suffix}": float(self.A.max(axis=1).mean()),
            f"recovery_matched{suffix}": float(self.matched.mean()),
            f"purity_corrected{suffix}": self.purity,
        }
        if self.named is not None:
            out[f"grounding_accuracy{suffix}"] = float(self.named.mean())
        if per_factor:
            factors = np.array([f for f, _ in self.names])
            for f in dict.fromkeys(factors.tolist()):
                sel = factors == f
                out[f"recovery_lenient{suffix}/{f}"] = float(self.A[sel].max(axis=1).mean())
                out[f"recovery_matched{suffix}/{f}"] = float(self.matched[sel].mean())
                if self.named is not None:
                    out[f"grounding_accuracy{suffix}/{f}"] = float(self.named[sel].mean())
        return out

    def table(self, words: Sequence[Sequence[str]] | None = None) -> list[dict[str, Any]]:
        """One JSON-friendly row per factor value: its best and its matched concept."""
        rows = []
        for j, (factor, value) in enumerate(self.names):
            k = self.match[j]
            rows.append({
                "factor": factor, "value": value,
                "best_concept": int(self.A[j].argmax()), "auroc_best": round(float(self.A[j].max()), 4),
                "matched_concept": k, "auroc_matched": round(float(self.matched[j]), 4),
                "matched_words": list(words[k]) if words is not None and k is not None else [],
                "words_name_value": bool(self.named[j]) if self.named is not None else None,
            })
        return rows


def split_scores(res: "RecoveryResult", V: np.ndarray, Y: np.ndarray, text_known: np.ndarray, suffix: str = ""
                 ) -> dict[str, float]:
    """Matched AUROC of each factor's values on the samples whose caption prefix already named the
    target's value of that factor (`text_known[m, j]`, (M, F) bool) and on the others (image-only):
    `recovery_matched{suffix}/<factor>/text_known|image_only`, their means over values, and counts.
    The matching is the one on all samples; a subset without both classes of a value is left out."""
    out: dict[str, float] = {}
    factors = np.array([f for f, _ in res.names])
    pooled: dict[str, list[float]] = {"text_known": [], "image_only": []}
    for f in dict.fromkeys(factors.tolist()):
        cols = np.flatnonzero(factors == f)
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


def recovery(V: np.ndarray, names: list[tuple[str, str]], Y: np.ndarray,
             words: Sequence[Sequence[str]] | None = None) -> RecoveryResult:
    """Every recovery score of activations V (M, K) for labels Y (M, F) named `names`."""
    A = auroc_matrix(V, Y)
    match = match_concepts(A)
    named = None
    if words is not None:
        named = np.array([k is not None and words_name_value(words[k], value)
                          for (_, value), k in zip(names, match)], dtype=bool)
    return RecoveryResult(names, A, match, matched_aurocs(A, match), named, purity_corrected(V, Y, A))


def centred_relu(Z: torch.Tensor, U: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """ReLU((Z − mean) Uᵀ): (M, B), (K, B), (B,) -> (M, K). Centred, so a direction fires on about half
    the samples instead of on all or none (LLM states share a large common component)."""
    return torch.relu((Z.float() - mean.float()) @ U.float().T)


# --- the metric -------------------------------------------------------------------------------------
class Recovery:
    """Ground-truth factor recovery with its nulls (module doc); nothing on data without factors.

    Uses the test rows when the run has them, else the training rows.
    Args: prefix_only, random_baseline, diffmean: compute each null / reference.
    Artefact: "recovery_table", one row per factor value (best and matched concept, their AUROC, the
    matched concept's words, and the prefix-only / random / DiffMean AUROC of the value).
    """

    name = "recovery"

    def __init__(self, prefix_only: bool = True, random_baseline: bool = True, diffmean: bool = True):
        self.prefix_only, self.random_baseline, self.diffmean = prefix_only, random_baseline, diffmean

    @property
    def needs(self) -> frozenset[str]:
        return frozenset({NOISE_TEST}) if self.prefix_only else frozenset()

    def __call__(self, inp: EvalInput) -> MetricResult:
        split = inp.eval_split
        if not inp.factors:
            return MetricResult()  # a dataset without ground truth (COCO, folders)
        names, Y = target_labels(split.annotations, inp.factors)
        if not names:
            return MetricResult()
        words = inp.concepts.words
        res = recovery(split.V.detach().float().cpu().numpy(), names, Y, words)
        out = res.scores()
        out["recovery_n_values"] = float(len(names))
        table = res.table(words)
        extra: dict[str, RecoveryResult] = {}
        mean = inp.train.Z.float().mean(0)
        K, B = split.V.shape[1], split.Z.shape[1]
        if self.prefix_only and split.noise is not None:
            extra["prefix_only"] = recovery(inp.dictionary.encode(split.noise).numpy(), names, Y, words)
        from coxlmm.grounding.text import random_directions

        if self.random_baseline:
            U_r = random_directions(K, B, seed=inp.seed)
            extra["random"] = recovery(centred_relu(split.Z, U_r, mean).numpy(), names, Y, inp.services.ground(U_r))
        if self.diffmean:
            U_dm = self._diffmean(inp, names)
            if U_dm is not None:
                extra["diffmean"] = recovery(centred_relu(split.Z, U_dm, mean).numpy(), names, Y,
                                             inp.services.ground(U_dm))
        for tag, r in extra.items():
            out |= r.scores(suffix=f"_{tag}")
            for row, a in zip(table, r.matched):
                row[f"auroc_{tag}"] = round(float(a), 4)
        if any("text_known" in a for a in split.annotations):  # where the information came from
            known = np.array([[f in (a.get("text_known") or ()) for f, _ in names] for a in split.annotations],
                             dtype=bool).reshape(len(split), -1)
            out |= split_scores(res, split.V.detach().float().cpu().numpy(), Y, known)
            for tag in ("prefix_only", "random"):
                if tag in extra:
                    V_tag = inp.dictionary.encode(split.noise).numpy() if tag == "prefix_only" else \
                        centred_relu(split.Z, random_directions(K, B, seed=inp.seed), mean).numpy()
                    out |= {k: v for k, v in split_scores(extra[tag], V_tag, Y, known, f"_{tag}").items()
                            if not k.startswith("recovery_n_samples")}
        return MetricResult(out, {"recovery_table": table})

    @staticmethod
    def _diffmean(inp: EvalInput, names: list[tuple[str, str]]) -> torch.Tensor | None:
        """DiffMean directions (F, B) from the *training* samples' labels, one per evaluated value."""
        from coxlmm.concepts.diffmean import diff_mean

        targets = [a.get("target") or {} for a in inp.train.annotations]
        Y_train = np.array([[t.get(f) == v for f, v in names] for t in targets], dtype=bool).reshape(len(targets), -1)
        if not (Y_train.any(0) & ~Y_train.all(0)).all():
            return None  # a value with no positive (or no negative) training sample has no direction
        return diff_mean(inp.train.Z, torch.from_numpy(Y_train))
