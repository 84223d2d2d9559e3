"""Recovery of the ground-truth factors of the shapes world by a concept dictionary.

Notation: V (M, K) concept activations, one row per sample; Y (M, F) binary labels, column j is
one factor value, e.g. ("colour", "red") = "the image holds a red object"; A (F, K) the AUROC of
concept k's activation at predicting factor value j.

Scores (all in [0, 1]; 0.5 = chance for the AUROC-based ones):

    recovery_lenient    mean_j max_k A[j, k]. Near 1 for almost any dictionary of a few dozen
                        concepts (one of K noisy scores predicts each value a bit), so it is only
                        reported beside the strict scores below.
    recovery_matched    factor values assigned one-to-one to distinct concepts (Hungarian method on
                        A), mean AUROC of the assignment; values left without a concept (F > K)
                        count as 0.5. A concept can explain one value only, so a dictionary scores
                        high only if it has a separate concept per value.
    concept_purity      per concept, the share of its (positive) activation mass on the samples of
                        its best factor value (the value of highest AUROC), averaged over concepts.
    grounding_accuracy  share of factor values whose matched concept's words T_k contain the value
                        ("red" in the words of the concept matched to colour=red).

Each is also computed for a random dictionary (`*_random`): K random unit directions U_r (seeded)
with activations ReLU(Z U_rᵀ), words read through the same logit lens. The random baseline is the
same for every method of a (token, layer, K, seed), so it is the fair chance line of a sweep.

The pure functions (`auroc`, `auroc_matrix`, `match_concepts`, ...) take numpy arrays; the
`Recovery` metric only gathers rows and labels from the `EvalContext`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from scipy.stats import rankdata

from coxlmm.metrics.base import EvalContext

FACTORS: tuple[str, ...] = ("shape", "colour", "size", "position")  # object factors of data/shapes.py
CHANCE = 0.5  # AUROC of an uninformative score; what an unassigned factor value counts as


# --- labels -----------------------------------------------------------------------------------------
def factor_labels(attributes: Sequence[dict[str, Any]], factors: Sequence[str] = FACTORS
                  ) -> tuple[list[tuple[str, str]], np.ndarray]:
    """Binary labels "the image holds an object with factor = value", one column per value.

    attributes: one dict per sample (row), with per-object lists `attributes[factor]`.
    Returns (names, Y): names[j] = (factor, value), Y (M, F) bool. Values with no positive or no
    negative sample are dropped (an AUROC needs both), e.g. shape=circle when every sample was
    selected for the token "circle".
    """
    names: list[tuple[str, str]] = []
    columns: list[np.ndarray] = []
    for factor in factors:
        per_row = [set(_as_list(a.get(factor))) for a in attributes]
        for value in sorted(set().union(*per_row)) if per_row else []:
            y = np.array([value in s for s in per_row], dtype=bool)
            if 0 < y.sum() < len(y):
                names.append((factor, str(value)))
                columns.append(y)
    Y = np.stack(columns, axis=1) if columns else np.zeros((len(attributes), 0), dtype=bool)
    return names, Y


def _as_list(x: Any) -> list:
    if x is None:
        return []
    return list(x) if isinstance(x, (list, tuple)) else [x]


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


def concept_purity(V: np.ndarray, Y: np.ndarray, A: np.ndarray) -> float:
    """Mean over concepts of the share of the concept's positive activation mass that falls on the
    samples of its best factor value (argmax_j A[j, k]). Concepts with no positive mass (a ReLU'd
    random direction that never fires) have no best value and are left out; nan if none is left."""
    P = np.clip(np.asarray(V, dtype=np.float64), 0.0, None)  # PCA is signed: mass = positive part
    mass = P.sum(axis=0)  # (K,)
    best = A.argmax(axis=0)  # (K,)
    on_best = np.einsum("mk,mk->k", P, Y[:, best].astype(np.float64))
    ok = mass > 0
    return float(np.mean(on_best[ok] / mass[ok])) if ok.any() else float("nan")


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

    def scores(self, suffix: str = "", per_factor: bool = False) -> dict[str, float]:
        out = {
            f"recovery_lenient{suffix}": float(self.A.max(axis=1).mean()),
            f"recovery_matched{suffix}": float(self.matched.mean()),
            f"concept_purity{suffix}": self.purity,
        }
        if self.named is not None:
            out[f"grounding_accuracy{suffix}"] = float(self.named.mean())
        if per_factor:
            factors = np.array([f for f, _ in self.names])
            for f in dict.fromkeys(factors.tolist()):
                sel = factors == f
                out[f"recovery_lenient/{f}"] = float(self.A[sel].max(axis=1).mean())
                out[f"recovery_matched/{f}"] = float(self.matched[sel].mean())
                if self.named is not None:
                    out[f"grounding_accuracy/{f}"] = float(self.named[sel].mean())
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


def recovery(V: np.ndarray, names: list[tuple[str, str]], Y: np.ndarray,
             words: Sequence[Sequence[str]] | None = None) -> RecoveryResult:
    """Every recovery score of activations V (M, K) for labels Y (M, F) named `names`."""
    A = auroc_matrix(V, Y)
    match = match_concepts(A)
    named = None
    if words is not None:
        named = np.array([k is not None and words_name_value(words[k], value)
                          for (_, value), k in zip(names, match)], dtype=bool)
    return RecoveryResult(names, A, match, matched_aurocs(A, match), named, concept_purity(V, Y, A))


def random_activations(Z: torch.Tensor, U_random: torch.Tensor) -> torch.Tensor:
    """Activations of a random dictionary: ReLU(Z U_rᵀ), (M, B) x (K, B) -> (M, K)."""
    return torch.relu(Z.float() @ U_random.float().T)


# --- the metric -------------------------------------------------------------------------------------
class Recovery:
    """Ground-truth factor recovery (module doc); {} on data without factor attributes.

    Uses the test rows (V_test, test_records) when the run has them, else the training rows.
    Artefact: `ctx.artifacts["recovery_table"]`, one row per factor value.
    """

    name = "recovery"

    def __init__(self, factors: Sequence[str] = FACTORS, random_baseline: bool = True,
                 n_top: int = 50, n_words: int = 10):
        self.factors = tuple(factors)
        self.random_baseline = random_baseline
        self.n_top, self.n_words = n_top, n_words  # logit-lens settings for the random concepts' words

    def _rows(self, ctx: EvalContext) -> tuple[torch.Tensor, torch.Tensor | None, list]:
        if ctx.V_test is not None and ctx.test_records and len(ctx.test_records) == ctx.V_test.shape[0]:
            return ctx.V_test, ctx.Z_test, ctx.test_records
        return ctx.V_train, ctx.Z_train, ctx.train_records

    def __call__(self, ctx: EvalContext) -> dict[str, float]:
        V, Z, records = self._rows(ctx)
        attributes = [r.attributes for r in records]
        if not any(f in a for a in attributes for f in self.factors):
            return {}  # a dataset without ground truth (COCO, folders)
        names, Y = factor_labels(attributes, self.factors)
        if not names:
            return {}
        words = ctx.concepts.words if ctx.concepts is not None else None
        res = recovery(V.detach().float().cpu().numpy(), names, Y, words)
        out = res.scores(per_factor=True)
        out["recovery_n_values"] = float(len(names))
        ctx.artifacts["recovery_table"] = res.table(words)
        if self.random_baseline and Z is not None:
            out.update(self._random(ctx, Z, names, Y, V.shape[1]).scores(suffix="_random"))
        return out

    def _random(self, ctx: EvalContext, Z: torch.Tensor, names, Y, K: int) -> RecoveryResult:
        # Imported here: the words need the model's logit lens, the rest of the metric does not.
        from coxlmm.grounding.text import concept_words, random_directions

        U_r = random_directions(K, Z.shape[1], seed=ctx.seed)
        V_r = random_activations(Z.detach().cpu(), U_r).numpy()
        words_r = None
        if ctx.lmm is not None:
            words_r = concept_words(ctx.lmm, U_r, n_top=self.n_top, n_words=self.n_words)
        return recovery(V_r, names, Y, words_r)
