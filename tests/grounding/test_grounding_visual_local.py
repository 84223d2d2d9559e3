"""Visual grounding (X_k,MAS), local interpretation (normalised ranking), ConceptSet and its JSON."""

from __future__ import annotations

import json

import pytest
import torch

from coxlmm.grounding.concept_set import ConceptSet
from coxlmm.grounding.local import interpret, rank_concepts
from coxlmm.grounding.visual import build_concept_set, top_samples


def test_top_samples_are_the_largest_activations_best_first():
    V = torch.tensor([[0.1, 0.0, -1.0],
                      [0.9, 0.0, -2.0],
                      [0.5, 0.3, -0.5],
                      [0.9, 0.0, -3.0]])
    # ties (rows 1 and 3) keep the lower row first; zeros are left out; signed values rank by value
    assert top_samples(V, n_mas=2) == [[1, 3], [2], [2, 0]]
    assert top_samples(V, n_mas=10) == [[1, 3, 2, 0], [2], [2, 0, 1, 3]]
    assert top_samples(V, n_mas=2, drop_zero=False)[1] == [2, 0]
    with pytest.raises(ValueError):
        top_samples(torch.zeros(3))


def test_rank_concepts_normalises_to_the_top_one():
    V = torch.tensor([[0.2, 0.8, 0.4, 0.0],
                      [0.0, 0.0, 0.0, 0.0],
                      [3.0, 3.0, 0.0, 1.5]])
    r = rank_concepts(V, top=3)
    assert r.order.tolist() == [[1, 2, 0], [0, 1, 2], [0, 1, 3]]
    torch.testing.assert_close(r.scores, torch.tensor([[1.0, 0.5, 0.25], [0.0, 0.0, 0.0], [1.0, 1.0, 0.5]]))
    assert rank_concepts(V).order.shape == (3, 4)


class FakeDictionary:
    """The slice of the `Dictionary` interface grounding uses."""

    name = "fake"
    nonnegative = True

    def __init__(self, U: torch.Tensor, V_train: torch.Tensor):
        self.U, self.V_train = U, V_train

    def encode(self, Z: torch.Tensor) -> torch.Tensor:
        return (Z @ self.U.T).clamp_min(0)


def test_interpret_encodes_then_ranks():
    d = FakeDictionary(torch.eye(3), torch.zeros(1, 3))
    Z = torch.tensor([[0.5, 2.0, -1.0], [0.0, 0.0, 4.0]])
    V, r = interpret(d, Z, top=2)
    torch.testing.assert_close(V, torch.tensor([[0.5, 2.0, 0.0], [0.0, 0.0, 4.0]]))
    assert r.order.tolist() == [[1, 0], [2, 0]]
    torch.testing.assert_close(r.scores, torch.tensor([[1.0, 0.25], [1.0, 0.0]]))


class FakeLMM:
    def __init__(self):
        class Tok:  # a minimal byte-level-BPE-like tokenizer: id i <-> vocab[i]
            vocab = [" red", " blue", "ing", " circle", " the", "a"]

            def encode(self, text, add_special_tokens=False):
                return [self.vocab.index(text)]

            def decode(self, ids, clean_up_tokenization_spaces=False):
                return "".join(self.vocab[i] for i in ids)

            def batch_decode(self, batch, clean_up_tokenization_spaces=False):
                return [self.decode(ids) for ids in batch]

            def __len__(self):
                return len(self.vocab)

        self.tokenizer = Tok()
        self.W_U = torch.tensor([[5.0, -1], [4, -1], [-1, 9], [-1, 5], [-1, 4], [-9, -9]])  # no ties in the top 3

    def unembed(self, h):
        return h @ self.W_U.T


def test_build_concept_set_and_json_contract():
    V = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.5]])
    d = FakeDictionary(torch.eye(2), V)
    cs = build_concept_set(d, FakeLMM(), ["s0", "s1", "s2"], n_mas=2, n_top=3, n_words=5, layer=7, token="dog")
    assert cs.words == [["red", "blue"], ["circle"]]  # "ing" is a sub-word, "the" a stopword
    assert cs.top_indices == [[2, 0], [1, 2]]
    assert cs.top_samples == [["s2", "s0"], ["s1", "s2"]]
    doc = json.loads(json.dumps(cs.to_json()))
    assert (doc["method"], doc["layer"], doc["token"], doc["n_concepts"]) == ("fake", 7, "dog", 2)
    assert doc["concepts"][1] == {"id": 1, "words": ["circle"], "top_samples": ["s1", "s2"],
                                  "top_activations": [2.0, 0.5]}
    with pytest.raises(ValueError, match="sample ids"):
        build_concept_set(d, FakeLMM(), ["s0"])
    with pytest.raises(ValueError, match="mismatched"):
        ConceptSet(U=torch.eye(2), V=V, words=[[]], top_samples=[[], []], top_indices=[[], []])
