"""Ground-truth recovery: AUROC with ties, the Hungarian matching on train scored on test, the
label-permutation null (and the selection bias it exposes in test-matched scores), target-object
labels, the metric's end points (1.0 for a dictionary made of the true factors, about 0.5 for a random
one), its nulls (prefix-only, a centred random dictionary) and the DiffMean reference."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from coxlmm.data.shapes import COLOURS, POSITIONS, SHAPES, SIZES, ShapesWorld
from coxlmm.metrics.base import EvalInput, Services, Split
from coxlmm.metrics.base import NOISE_TEST, NOISE_TRAIN
from coxlmm.metrics.recovery import (
    Recovery,
    auroc,
    auroc_matrix,
    centred_relu,
    match_concepts,
    matched_aurocs,
    matched_score,
    permutation_null,
    purity_corrected,
    target_labels,
    words_name_value,
)
from tests.metrics.scoring_fakes import records_of

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


def test_target_labels_drop_values_without_negatives():
    anns = [{"target": {"shape": "circle", "colour": "red"}}, {"target": {"shape": "circle", "colour": "blue"}}, {}]
    names, Y = target_labels(anns, {"shape": ["circle", "star"], "colour": ["red", "blue"]})
    # star: no positive; circle: a positive and a negative (the sample without a target).
    assert names == [("shape", "circle"), ("colour", "red"), ("colour", "blue")]
    assert Y.tolist() == [[True, True, False], [True, False, True], [False, False, False]]


def test_words_name_value():
    assert words_name_value(["red", "circles"], "circle")
    assert words_name_value(["light", "gray"], "light gray")
    assert not words_name_value(["redish", "and"], "red")


def test_purity_is_corrected_for_the_base_rate():
    Y = np.array([[1, 0], [1, 0], [0, 1], [0, 1]], dtype=bool)
    V = np.array([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0], [0.0, 2.0]])  # concept 0 pure; concept 1: 3/4 on value 1
    # base rate 1/2 for both values: (1 − 1/2) / (1/2) = 1 and (3/4 − 1/2) / (1/2) = 1/2
    assert purity_corrected(V, Y, auroc_matrix(V, Y).argmax(0)) == pytest.approx((1.0 + 0.5) / 2)
    # activation spread like the labels themselves: no better than the base rate
    V_flat = np.ones((4, 1))
    assert purity_corrected(V_flat, Y[:, :1], np.array([0])) == pytest.approx(0.0)


def test_train_matched_recovery_of_random_codes_is_at_chance_and_the_null_shows_the_selection_bias():
    """Random codes, random labels: matched on train and scored on test, the mean is 0.5; matched and
    scored on the same samples it is biased upward (the maximum of K noisy AUROCs), and the permutation
    null of that same-split procedure reproduces the bias, while the train-matched null sits at 0.5."""
    rng = np.random.default_rng(0)
    train_matched, in_sample, null_in_sample, null_train = [], [], [], []
    for _ in range(12):
        V_tr, V_te = rng.random((900, 20)), rng.random((93, 20))
        Y_tr = rng.random((900, 10)) < 0.2
        Y_te = rng.random((93, 10)) < 0.2
        train_matched.append(matched_score(V_tr, Y_tr, V_te, Y_te).mean())
        in_sample.append(matched_score(V_te, Y_te, V_te, Y_te).mean())
        null_in_sample.append(permutation_null(V_te, Y_te, V_te, Y_te, 30, seed=1, same_split=True).mean())
        null_train.append(permutation_null(V_tr, Y_tr, V_te, Y_te, 30, seed=1).mean())
    assert np.mean(train_matched) == pytest.approx(0.5, abs=0.01)
    assert np.mean(null_train) == pytest.approx(0.5, abs=0.01)
    assert np.mean(in_sample) > 0.6  # the selection bias of matching on the test set
    assert np.mean(null_in_sample) == pytest.approx(np.mean(in_sample), abs=0.015)


# --- the metric on the shapes world -------------------------------------------------------------
TOKEN = "circle"


@pytest.fixture(scope="module")
def world() -> ShapesWorld:
    return ShapesWorld(split="train", n_train=1500, seed=3)  # factors only, no image rendered


@pytest.fixture(scope="module")
def records(world) -> list[dict]:
    """Store-like records of the samples with a circle (the ones a token-`circle` run selects)."""
    rows = [i for i, r in enumerate(world.records) if TOKEN in r.attributes["shape"]]
    return records_of(world, rows, token=TOKEN)


def factors(world) -> dict[str, list[str]]:
    return world.factor_values()


def true_factor_dictionary(world, records) -> tuple[np.ndarray, list[list[str]]]:
    """One concept per factor value of the target (but its shape, t itself): V = its indicator, words = [value]."""
    cols, words = [], []
    for factor, values in factors(world).items():
        for value in values if factor != "shape" else []:
            cols.append([float(r["annotation"]["target"][factor] == value) for r in records])
            words.append([value])
    return np.array(cols).T, words


class RowCodes:
    """encode(Z) = V[Z[:, 0]]: features that carry their row's index, so any split's codes come from V."""

    def __init__(self, V):
        self.V = torch.tensor(V, dtype=torch.float32)

    def encode(self, Z):
        return self.V[Z[:, 0].long()]


def make(world, records, V, words, Z=None, noise=(), dictionary=None, seed=0) -> EvalInput:
    """The records split in two halves (train, test) of one world; V, Z and noise have a row per record."""
    V_t = torch.tensor(V, dtype=torch.float32)
    Z = Z if Z is not None else torch.randn(len(records), 16, generator=torch.Generator().manual_seed(0))
    half = len(records) // 2
    parts = [slice(0, half), slice(half, None)]
    train, test = (Split(Z[p], V_t[p], records[p], world, tuple(n[p] for n in noise)) for p in parts)
    return EvalInput(train=train, test=test, dictionary=dictionary, concepts=SimpleNamespace(words=words),
                     services=Services(lens=None, ground=lambda U: [[]] * len(U), refit=None), token=TOKEN,
                     layer=0, seed=seed, factors=factors(world))


def test_true_factor_dictionary_recovers_everything(world, records):
    V, words = true_factor_dictionary(world, records)
    res = Recovery(prefix_only=False, diffmean=False, n_permutations=50)(make(world, records, V, words))
    out = res.scores
    for key in ("recovery_lenient", "recovery_matched", "purity_corrected", "grounding_accuracy"):
        assert out[key] == pytest.approx(1.0), key
    for f in ("colour", "size", "position"):
        assert out[f"recovery_matched/{f}"] == pytest.approx(1.0)
    # shape = circle for every target: no negative, no column; the other values are all there.
    assert out["recovery_n_values"] == len(COLOURS) + len(SIZES) + len(POSITIONS)
    assert "recovery_matched/shape" not in out
    # Its chance level: the permutation null, at 0.5, and nothing beats the truth.
    assert out["recovery_matched_chance"] == pytest.approx(0.5, abs=0.02)
    assert out["recovery_matched_p"] == pytest.approx(1 / 51)
    # The random baseline (centred ReLU(Z U_r^T) on Z unrelated to the factors) sits at chance.
    assert out["recovery_matched_random"] == pytest.approx(0.5, abs=0.06)
    assert out["recovery_matched_random/colour"] == pytest.approx(0.5, abs=0.08)
    table = res.artifacts["recovery_table"]
    assert len(table) == out["recovery_n_values"] and all(row["words_name_value"] for row in table)
    assert all("auroc_random" in row for row in table)
    assert res.concepts["recovery_auroc"].count(None) == 0  # every concept is some value's match


def test_position_words_are_nameable():
    """`top` and `bottom` are scikit-learn stopwords; as declared factor values they are kept."""
    from coxlmm.grounding.text import filter_words

    assert filter_words([" top", " bottom"]) == []
    assert filter_words([" top", " bottom"], keep={"top", "bottom"}) == ["top", "bottom"]


def test_prefix_only_null_encodes_the_noise_states_with_the_same_dictionary(world, records):
    V, words = true_factor_dictionary(world, records)
    rows = torch.arange(len(records), dtype=torch.float32)[:, None].repeat(1, 4)  # noise states carrying their row
    out = Recovery(diffmean=False, n_permutations=10)(
        make(world, records, V, words, noise=(rows, rows), dictionary=RowCodes(V))).scores
    assert out["recovery_matched_prefix_only"] == pytest.approx(1.0)  # a prefix that carries every factor
    assert Recovery().requests() == {NOISE_TRAIN, NOISE_TEST} and Recovery(prefix_only=False).requests() == set()


def test_centred_random_directions_fire_on_about_half_the_samples():
    g = torch.Generator().manual_seed(0)
    Z = torch.randn(400, 32, generator=g) + 50.0  # a large common component, as LLM states have
    from coxlmm.directions import random_directions

    U = random_directions(20, 32, seed=0)
    uncentred = (torch.relu(Z @ U.T) > 0).float().mean(0)
    centred = (centred_relu(Z, U, Z.mean(0)) > 0).float().mean(0)
    assert ((uncentred == 0) | (uncentred == 1)).any()  # some directions fire on all or no samples
    assert ((centred > 0.3) & (centred < 0.7)).all()


def test_diffmean_reference_recovers_a_planted_factor(world, records):
    """Z carries the colour of the target along one direction per colour: DiffMean (from the training
    labels) finds them on the test samples."""
    colours = list(COLOURS)
    g = torch.Generator().manual_seed(0)
    D = torch.nn.functional.normalize(torch.randn(len(colours), 32, generator=g), dim=1)
    Z = 0.3 * torch.randn(len(records), 32, generator=g)
    for i, r in enumerate(records):
        Z[i] += 3.0 * D[colours.index(r["annotation"]["target"]["colour"])]
    V = np.random.default_rng(0).random((len(records), 13))
    out = Recovery(prefix_only=False, random_baseline=False, n_permutations=20)(
        make(world, records, V, [[]] * 13, Z=Z)).scores
    assert out["recovery_matched_diffmean/colour"] > 0.98
    assert out["recovery_matched/colour"] == pytest.approx(0.5, abs=0.1)  # the random codes do not


def test_no_factors_no_scores(world, records):
    V, words = true_factor_dictionary(world, records)
    inp = dataclasses.replace(make(world, records, V, words), factors={})
    assert Recovery()(inp).scores == {}


def test_recovery_is_split_by_what_the_caption_prefix_already_said(world, records):
    """A concept that is the colour only on samples whose prefix named the colour (text-known) is perfect
    there and at chance on the image-only samples; the share of text-known samples whose named colour
    was wrong is reported."""
    rng = np.random.default_rng(0)
    recs = []
    for i, r in enumerate(records):
        ann = {**r["annotation"], "text_known": ["colour"] if i % 2 == 0 else []}
        if i % 2 == 0:  # every fourth sample's prefix named a wrong colour
            true = ann["target"]["colour"]
            ann["text_named"] = {"colour": true if i % 4 == 0 else next(c for c in COLOURS if c != true)}
        recs.append(dict(r, annotation=ann))
    V, words = true_factor_dictionary(world, recs)
    colour_cols = [i for i, w in enumerate(words) if w[0] in COLOURS]
    odd = np.arange(len(recs)) % 2 == 1
    V[np.ix_(odd, colour_cols)] = rng.random((odd.sum(), len(colour_cols)))
    out = Recovery(prefix_only=False, diffmean=False, random_baseline=False, n_permutations=10)(
        make(world, recs, V, words)).scores
    n_test = len(recs) - len(recs) // 2
    test_odd = odd[len(recs) // 2:]
    assert out["recovery_matched/colour/text_known"] == pytest.approx(1.0)
    assert out["recovery_matched/colour/image_only"] == pytest.approx(0.5, abs=0.12)
    assert out["recovery_n_samples/colour/text_known"] == pytest.approx((~test_odd).sum())
    assert out["recovery_n_samples/colour/image_only"] == pytest.approx(n_test - (~test_odd).sum())
    assert out["recovery_matched/size/image_only"] == pytest.approx(1.0)  # size: never text-known here
    assert "recovery_matched/size/text_known" not in out
    assert out["recovery_text_wrong/colour"] == pytest.approx(0.5, abs=0.02)
