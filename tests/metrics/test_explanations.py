"""Explanations that predict: detection and fuzzing AUROCs, the gain over the target word, factor accuracy,
and the held-out-pair analysis, on small planted inputs with the fake scorers."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from coxlmm.data.shapes import ShapesWorld
from coxlmm.errors import CoxlmmError
from coxlmm.grounding.concept_set import ConceptSet
from coxlmm.metrics.explanations import Explanations, detection_sets, with_token
from coxlmm.metrics.heldout import Heldout, heldout_scores
from tests.metrics.scoring_fakes import K, make_input, records_of


def planted(inp, words):
    """The input with concept 0 firing exactly on the test samples whose reference captions say "red" (and
    concept 1 on "blue" ones), with the given words per concept."""
    refs = inp.test.references
    M = len(refs)
    V = torch.zeros(M, K)
    for m, r in enumerate(refs):
        V[m, 0] = float(any("red" in c.lower().split() for c in r)) * (1.0 + 0.01 * m)
        V[m, 1] = float(any("blue" in c.lower().split() for c in r))
    c = inp.concepts
    concepts = ConceptSet(U=c.U, V=c.V, words=words, top_samples=c.top_samples, top_indices=c.top_indices)
    return dataclasses.replace(inp, concepts=concepts, test=dataclasses.replace(inp.test, V=V))


@pytest.fixture(scope="module")
def big_input():
    """A test split large enough for AUROCs (60 world images)."""
    inp = make_input()
    test = ShapesWorld("test", n_test=60, image_size=32)
    Z = torch.randn(60, 16, generator=torch.Generator().manual_seed(1))
    split = dataclasses.replace(inp.test, Z=Z, V=torch.zeros(60, K), records=records_of(test), dataset=test)
    return dataclasses.replace(inp, test=split)


def test_detection_is_one_for_words_that_are_the_active_samples_captions_and_chance_for_random_words(big_input):
    inp = planted(big_input, [["red"], ["blue"], ["qwxz"], ["green"]])
    n_red = int((inp.test.V[:, 0] > 0).sum())
    assert 5 <= n_red <= 30  # enough active and inactive samples
    res = Explanations(quantile=0.2, min_samples=3, n_draws=8, factor_accuracy=False)(inp)
    det = dict(zip(res.samples["detection_bs"][0], res.samples["detection_bs"][1]))
    assert det["0"] == pytest.approx(1.0)  # BS of "red" separates the red samples from the rest perfectly
    rnd = dict(zip(res.samples["detection_bs_rnd_words"][0], res.samples["detection_bs_rnd_words"][1]))
    assert np.nanmean(rnd["0"]) == pytest.approx(0.5, abs=0.1)  # random words: chance
    assert res.concepts["detection_bs"][0] == pytest.approx(1.0)
    assert res.scores["detection_bs_mean"] > res.scores["detection_bs_rnd_words_mean"]


def test_the_gain_over_t_is_zero_when_the_words_are_t(big_input):
    inp = planted(big_input, [["circle"], ["circle"], ["circle"], ["circle"]])
    inp = dataclasses.replace(inp, test=dataclasses.replace(inp.test, V=inp.test.V + 0.1))  # every sample has a concept
    res = Explanations(n_draws=3, factor_accuracy=False)(inp)
    for m in ("cs", "bs"):
        assert np.all(res.samples[f"gain_{m}"][1] == 0.0)
    assert with_token(["red", "circle"], "circle") == ["circle", "red"] and with_token([], "dog") == ["dog"]


def test_detection_sets_and_bad_settings():
    v = np.array([0, 0, 0, 0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.9])
    active, inactive, near = detection_sets(v, 0.2)
    assert np.flatnonzero(active).tolist() == [8, 9] and np.flatnonzero(near).tolist() == [6, 7]
    assert np.flatnonzero(inactive).tolist() == [0, 1, 2, 3, 4]  # v at or below the median (0.15)
    for kwargs in ({"quantile": 0.0}, {"quantile": 0.7}, {"min_samples": 0}, {"n_draws": 1.5}):
        with pytest.raises(CoxlmmError):
            Explanations(**kwargs)


def test_factor_accuracy_is_right_for_the_truth_and_wrong_for_the_prefix_that_says_nothing():
    world = ShapesWorld("train", n_train=400, seed=5)
    recs = records_of(world, [i for i, r in enumerate(world.records) if "circle" in r.attributes["shape"]])
    colours = ["red", "green", "blue", "yellow", "purple", "orange"]

    def indicator(rows):
        return torch.tensor([[float(r["annotation"]["target"]["colour"] == c) for c in colours] for r in rows])

    half = len(recs) // 2
    inp = make_input(factors={"colour": colours})
    from coxlmm.metrics.base import Split

    train = Split(torch.randn(half, 16), indicator(recs[:half]), recs[:half], world)
    noise = (torch.zeros(len(recs) - half, 16),)
    test = Split(torch.randn(len(recs) - half, 16), indicator(recs[half:]), recs[half:], world, noise)

    class Zero:
        n_concepts = 6

        def encode(self, Z):
            return torch.zeros(len(Z), 6)

    inp = dataclasses.replace(inp, train=train, test=test, dictionary=Zero(), services=dataclasses.replace(
        inp.services, scorer=None))
    res = Explanations()(inp)
    assert res.scores["factor_accuracy"] == pytest.approx(1.0)
    assert res.scores["factor_accuracy_prefix_only"] == pytest.approx(0.0)  # codes all zero: no concept
    assert res.samples["factor_accuracy_prefix_only"][1].shape == (len(recs) - half, 1)


def test_the_heldout_analysis_uses_only_samples_whose_pair_never_occurs_in_training():
    train_world = ShapesWorld("train", n_train=3000, seed=2)
    test_world = ShapesWorld("test", n_test=1500, seed=2)
    words = ("circle", "triangle", "cross")

    def rows(world):
        return [r for w in words for r in records_of(world, [i for i, x in enumerate(world.records)
                                                           if w in x.attributes["shape"]], token=w)]

    train, test = rows(train_world), rows(test_world)
    pairs = {(r["annotation"]["target"]["shape"], r["annotation"]["target"]["colour"]) for r in train}
    held = [r for r in test if r["annotation"]["heldout_pair"]]
    assert held and all((r["annotation"]["target"]["shape"], r["annotation"]["target"]["colour"]) not in pairs
                        for r in held)  # the flagged pairs never occur in the training split
    colours = ["red", "green", "blue", "yellow", "purple", "orange"]
    rng = np.random.default_rng(0)

    def codes(recs, generalises: bool):
        """A colour concept per colour: exact on seen pairs; on held-out pairs exact or noise."""
        V = np.array([[float(r["annotation"]["target"]["colour"] == c) for c in colours] for r in recs])
        if not generalises:
            for m, r in enumerate(recs):
                if r["annotation"]["heldout_pair"]:
                    V[m] = rng.random(len(colours))
        return V

    ann_tr, ann_te = [r["annotation"] for r in train], [r["annotation"] for r in test]
    good = heldout_scores(codes(train, True), codes(test, True), ann_tr, ann_te, colours)
    bad = heldout_scores(codes(train, True), codes(test, False), ann_tr, ann_te, colours)
    assert set(k.split("/")[1] for k in good if k.startswith("heldout_auroc/")) <= {"blue", "yellow", "green", "purple"}
    assert good["heldout_auroc_mean"] == pytest.approx(1.0) and good["seen_auroc_mean"] == pytest.approx(1.0)
    assert bad["seen_auroc_mean"] == pytest.approx(1.0) and bad["heldout_auroc_mean"] < 0.8
    n_blue = sum(1 for r in held if r["annotation"]["target"]["colour"] == "blue")
    assert good["heldout_n/blue"] == n_blue


def test_heldout_is_skipped_with_a_message_without_heldout_samples(caplog):
    inp = make_input(factors={"colour": ["red", "blue"]})
    with caplog.at_level("WARNING"):
        assert Heldout()(inp).scores == {}
    assert any("no test sample of token 'circle' is a held-out pair" in r.message for r in caplog.records)
