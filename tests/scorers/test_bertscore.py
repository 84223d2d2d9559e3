"""BERTScore F1 (scorers/bertscore.py) is the `bert-score` package's F1 for the pinned model and layer, on
the scale it says (raw, or rescaled with a baseline)."""

from __future__ import annotations

import pytest
import torch

from coxlmm.errors import CoxlmmError
from coxlmm.scorers.bertscore import BertScorer, minilm_dir, shipped_baseline

CANDIDATES = [
    "red circle large",
    "A photo is described by the words blue, star, small",
    "There is a small green heart at the bottom.",
    "dog",
    "orange square top purple cross",
]
REFERENCES = [
    "A large red circle on the left.",
    "There is a small blue star at the top and a large red circle on the left.",
    "An image of a small green heart at the bottom.",
    "A cat sleeps on a sofa.",
    "A small orange square at the top with a large purple cross on the right.",
]


@pytest.fixture(scope="module")
def scorer6():
    return BertScorer(model="embedded", layer=6)


def check_against_package(ours: BertScorer, layer: int) -> None:
    bert_score = pytest.importorskip("bert_score")
    reference = bert_score.BERTScorer(model_type=minilm_dir(), num_layers=layer, idf=False,
                                      rescale_with_baseline=False, batch_size=8)
    _, _, F = reference.score(CANDIDATES, REFERENCES)
    assert torch.allclose(ours.f1(CANDIDATES, REFERENCES), F.float(), atol=1e-4)
    # Multi-reference: bert-score takes the max F1 over a candidate's references, as f1_max does.
    refs = [[REFERENCES[i], REFERENCES[(i + 1) % len(REFERENCES)]] for i in range(len(CANDIDATES))]
    _, _, F_multi = reference.score(CANDIDATES, refs)
    assert torch.allclose(ours.f1_max(CANDIDATES, refs), F_multi.float(), atol=1e-4)


def test_matches_bert_score_package_at_the_default_layer(scorer6):
    check_against_package(scorer6, 6)


@pytest.mark.slow
def test_matches_bert_score_package_at_another_layer():
    check_against_package(BertScorer(model="embedded", layer=3), 3)


def test_properties(scorer6):
    f = scorer6.f1(["a large red circle", "", "red circle"], ["a large red circle", "a red circle", ""])
    assert f[0] == pytest.approx(1.0, abs=1e-5) and f[1] == 0.0 and f[2] == 0.0  # identical; empty sides
    # F1 is symmetric in candidate and reference.
    a, b = "red circle large", "There is a large red circle on the left."
    assert float(scorer6.f1([a], [b])) == pytest.approx(float(scorer6.f1([b], [a])), abs=1e-6)


def test_rescaled_with_a_baseline(tmp_path):
    """(F1 − b) / (1 − b), b from a baseline file (bert-score's format: LAYER,P,R,F per layer)."""
    rows = "\n".join(f"{l},0.5,0.5,0.6" for l in range(7))
    path = tmp_path / "baseline.tsv"
    path.write_text("LAYER,P,R,F\n" + rows + "\n")
    raw = BertScorer(model="embedded", layer=6)
    scaled = BertScorer(model="embedded", layer=6, rescale_with_baseline=True, baseline_path=str(path))
    f_raw, f_scaled = raw.f1(CANDIDATES, REFERENCES), scaled.f1(CANDIDATES, REFERENCES)
    assert torch.allclose(f_scaled, (f_raw - 0.6) / 0.4, atol=1e-5)
    assert scaled.fingerprint()["scale"] == "baseline-rescaled F1" and raw.fingerprint()["scale"] == "raw F1"
    assert shipped_baseline("roberta-large") is not None  # the paper's scorer has bert-score's own baseline
    with pytest.raises(CoxlmmError, match="ships no baseline"):
        BertScorer(model="embedded", layer=6, rescale_with_baseline=True)


def test_fingerprint_and_errors(scorer6):
    fp = scorer6.fingerprint()
    assert fp["layer"] == 6 and fp["model"] == "embedded" and fp["path"] == minilm_dir()
    assert len(fp["weights_sha256"]) == 64 and fp == scorer6.fingerprint()
    assert "_L6_no-idf" in fp["bert_score_hash"]
    with pytest.raises(CoxlmmError, match="layer=7"):
        BertScorer(model="embedded", layer=7)
    with pytest.raises(CoxlmmError, match="not-a-model"):
        BertScorer(model="/nonexistent/not-a-model", layer=1)
