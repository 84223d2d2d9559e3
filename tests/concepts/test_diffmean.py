"""DiffMean, the supervised reference: one unit direction per label, codes = ReLU(Z Uᵀ)."""

from __future__ import annotations

import pytest
import torch

from coxlmm.concepts import load_dictionary, save_dictionary
from coxlmm.concepts.diffmean import DiffMean, diff_mean
from coxlmm.errors import CoxlmmError


def planted_direction(M=2000, B=48, seed=0):
    """Z = noise + common offset + 3 · d for the samples labelled 1; d a unit direction."""
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(B, generator=g)
    d /= d.norm()
    y = torch.rand(M, generator=g) < 0.3
    Z = torch.randn(M, B, generator=g) + 5 * torch.randn(B, generator=g) + 3 * y[:, None] * d
    return Z, y, d


def test_recovers_a_planted_direction():
    Z, y, d = planted_direction()
    U = diff_mean(Z, y[:, None])
    assert U.shape == (1, Z.shape[1])
    cos = float(U[0] @ d)
    assert cos > 0.99, f"cos(DiffMean, planted) = {cos:.4f}"


def test_is_the_difference_of_class_means():
    Z = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [0.0, 4.0]])
    Y = torch.tensor([[1, 0], [1, 0], [0, 1], [0, 1]], dtype=torch.bool)
    U = diff_mean(Z, Y)  # class means (2, 0) and (0, 3): differences ±(2, -3)
    u = torch.tensor([2.0, -3.0]) / 13 ** 0.5
    torch.testing.assert_close(U, torch.stack([u, -u]))


def test_dictionary_interface_and_round_trip(tmp_path):
    Z, y, d = planted_direction()
    Y = torch.stack([y, ~y], 1)
    dm = DiffMean(labels=["has d", "has not d"]).fit(Z, Y)
    assert dm.n_concepts == 2 and dm.U.shape == (2, Z.shape[1]) and dm.name == "diffmean"
    torch.testing.assert_close(dm.V_train, (Z @ dm.U.T).clamp_min(0))
    assert (dm.V_train >= 0).all()
    loaded = load_dictionary(save_dictionary(dm, tmp_path / "d.safetensors"))
    assert loaded.labels == ["has d", "has not d"]
    assert torch.equal(loaded.encode(Z), dm.encode(Z))


@pytest.mark.parametrize("Y, match", [
    (torch.ones(10, 1, dtype=torch.bool), r"label column\(s\) \[0\] hold only positive samples"),
    (torch.zeros(10, 2, dtype=torch.bool), r"hold no positive samples"),
    (torch.ones(9, 1, dtype=torch.bool), r"shape \(M=10, F\)"),
])
def test_bad_labels(Y, match):
    with pytest.raises(CoxlmmError, match=match):
        DiffMean().fit(torch.randn(10, 4), Y)


def test_needs_labels():
    with pytest.raises(CoxlmmError, match="supervised"):
        DiffMean().fit(torch.randn(10, 4))
