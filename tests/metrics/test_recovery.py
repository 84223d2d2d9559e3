"""Ground-truth recovery: AUROC with ties, the Hungarian matching, and the metric's end points
(1.0 for a dictionary made of the true factors, about 0.5 for a random one)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from coxlmm.data.base import SampleRecord
from coxlmm.data.shapes import COLOURS, POSITIONS, SHAPES, SIZES, ShapesWorld
from coxlmm.metrics.base import EvalContext
from coxlmm.metrics.recovery import (
    Recovery,
    auroc,
    auroc_matrix,
    concept_purity,
    factor_labels,
    match_concepts,
    matched_aurocs,
    words_name_value,
)

VALUES = {"shape": SHAPES, "colour": tuple(COLOURS), "size": tuple(SIZES), "position": tuple(POSITIONS)}


def test_auroc_hand_examples():
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    # pos {1, 3} vs neg {1, 2}: (1,1) tie = 1/2, (1,2) = 0, (3,1) = 1, (3,2) = 1 -> 2.5 / 4
    assert auroc([1, 1, 2, 3], [0, 1, 0, 1]) == pytest.approx(0.625)
    assert auroc([5, 5, 5, 5], [0, 1, 0, 1]) == pytest.approx(0.5)
    assert auroc([3, 2, 1], [1, 0, 0]) == pytest.approx(1.0)
    assert auroc([1, 2, 3], [1, 0, 0]) == pytest.approx(0.0)


def test_auroc_matrix_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    V = rng.integers(0, 4, size=(200, 3)).astype(float)  # few distinct values: many ties
    Y = rng.random((200, 2)) < 0.3
    A = auroc_matrix(V, Y)
    for j in range(2):
        for k in range(3):
            assert A[j, k] == pytest.approx(roc_auc_score(Y[:, j], V[:, k]))


def test_auroc_needs_both_classes():
    with pytest.raises(ValueError, match="positive and one negative"):
        auroc_matrix(np.ones((3, 1)), np.ones((3, 1), dtype=bool))


def test_hungarian_beats_greedy_and_leaves_extra_values_at_chance():
    A = np.array([[0.9, 0.8], [0.85, 0.2]])
    # Greedy (0.9 then 0.2) sums to 1.1; the one-to-one optimum is 0.8 + 0.85.
    assert match_concepts(A) == [1, 0]
    A3 = np.array([[0.9, 0.6], [0.7, 0.95], [0.8, 0.55]])  # 3 values, 2 concepts
    match = match_concepts(A3)
    assert sorted(k for k in match if k is not None) == [0, 1] and match.count(None) == 1
    assert matched_aurocs(A3, match).tolist() == pytest.approx([0.9, 0.95, 0.5])


def test_factor_labels_drop_values_without_negatives():
    attrs = [{"shape": ["circle"], "colour": ["red"]}, {"shape": ["circle", "star"], "colour": ["blue", "red"]}]
    names, Y = factor_labels(attrs, ("shape", "colour"))
    # circle and red are in every sample: no negative, no AUROC.
    assert names == [("shape", "star"), ("colour", "blue")]
    assert Y.tolist() == [[False, False], [True, True]]


def test_words_name_value():
    assert words_name_value(["red", "circles"], "circle")
    assert words_name_value(["light", "gray"], "light gray")
    assert not words_name_value(["redish", "and"], "red")


def test_purity_of_pure_and_mixed_concepts():
    Y = np.array([[1, 0], [1, 0], [0, 1], [0, 1]], dtype=bool)
    V = np.array([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0], [0.0, 2.0]])  # concept 0 pure, concept 1: 3/4
    assert concept_purity(V, Y, auroc_matrix(V, Y)) == pytest.approx((1.0 + 0.75) / 2)


# --- the metric on the shapes world -------------------------------------------------------------
@pytest.fixture(scope="module")
def records() -> list[SampleRecord]:
    return ShapesWorld(split="train", n_train=1500, seed=3).records  # factors only, no image rendered


def true_factor_dictionary(records: list[SampleRecord]) -> tuple[np.ndarray, list[list[str]]]:
    """One concept per factor value of the world: V = its indicator, words = [value]."""
    cols, words = [], []
    for factor, values in VALUES.items():
        for value in values:
            cols.append([float(value in r.attributes[factor]) for r in records])
            words.append([value])
    return np.array(cols).T, words


def context(records, V: np.ndarray, words, Z: torch.Tensor | None = None, **kw) -> EvalContext:
    V_t = torch.tensor(V, dtype=torch.float32)
    Z = Z if Z is not None else torch.randn(len(records), 16, generator=torch.Generator().manual_seed(0))
    return EvalContext(dictionary=None, concepts=SimpleNamespace(words=words), Z_train=Z, V_train=V_t,
                       train_records=records, **kw)


def test_true_factor_dictionary_recovers_everything(records):
    V, words = true_factor_dictionary(records)
    ctx = context(records, V, words)
    out = Recovery()(ctx)
    for key in ("recovery_lenient", "recovery_matched", "concept_purity", "grounding_accuracy"):
        assert out[key] == pytest.approx(1.0), key
    for f in VALUES:
        assert out[f"recovery_matched/{f}"] == pytest.approx(1.0)
    assert out["recovery_n_values"] == sum(len(v) for v in VALUES.values())
    # The random baseline (ReLU(Z U_r^T) on Z unrelated to the factors) sits at chance; no model: no words.
    assert out["recovery_matched_random"] == pytest.approx(0.5, abs=0.06)
    assert "grounding_accuracy_random" not in out
    table = ctx.artifacts["recovery_table"]
    assert len(table) == out["recovery_n_values"] and all(row["words_name_value"] for row in table)


def test_random_dictionary_is_near_chance(records):
    rng = np.random.default_rng(1)
    K = 19  # as many concepts as factor values
    V = np.maximum(rng.standard_normal((len(records), K)), 0)
    out = Recovery(random_baseline=False)(context(records, V, [["and"]] * K))
    assert out["recovery_matched"] == pytest.approx(0.5, abs=0.06)
    assert out["grounding_accuracy"] == 0.0
    assert out["recovery_lenient"] > out["recovery_matched"]  # the lenient score's optimism
    assert not any(k.endswith("_random") for k in out)


def test_prefers_test_rows(records):
    V, words = true_factor_dictionary(records)
    noise = np.random.default_rng(2).random(V.shape)
    ctx = context(records[:10], noise[:10], words, V_test=torch.tensor(V, dtype=torch.float32),
                  Z_test=torch.randn(len(records), 16), test_records=records)
    assert Recovery(random_baseline=False)(ctx)["recovery_matched"] == pytest.approx(1.0)


def test_no_attributes_no_scores():
    recs = [SampleRecord(id=str(i), captions=["a dog"]) for i in range(5)]
    assert Recovery()(context(recs, np.random.rand(5, 3), [[]] * 3)) == {}
