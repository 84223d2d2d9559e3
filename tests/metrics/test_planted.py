"""SynthSAEBench-style recovery metrics on hand-made cases, and the planted-feature generator."""

from __future__ import annotations

import pytest
import torch

from coxlmm.metrics.planted import (firing_scores, mcc, planted_features, planted_scores,
                                    uniqueness)


def test_generator_shapes_seed_and_sparsity():
    Z, A, D = planted_features(M=500, B=20, T=6, p_fire=0.2, seed=3)
    assert Z.shape == (500, 20) and A.shape == (500, 6) and D.shape == (6, 20)
    torch.testing.assert_close(D.norm(dim=1), torch.ones(6))
    assert (A >= 0).all() and abs(float((A > 0).float().mean()) - 0.2) < 0.03
    Z2, _, _ = planted_features(M=500, B=20, T=6, p_fire=0.2, seed=3)
    assert torch.equal(Z, Z2)
    Zn, _, _ = planted_features(M=500, B=20, T=6, p_fire=0.2, noise=0.0, seed=3)
    torch.testing.assert_close(Zn, A @ D)


def test_perfect_recovery_scores_one_whatever_the_order_sign_and_scale():
    _, A, D = planted_features(M=300, B=16, T=5, seed=0)
    perm = torch.tensor([3, 0, 4, 1, 2])
    U = -2.0 * D[perm]  # permuted, flipped, rescaled: the same directions
    V = A[:, perm]
    s = planted_scores(U, V, D, A)
    assert s == {"mcc": pytest.approx(1.0), "uniqueness": 1.0, "precision": 1.0, "recall": 1.0,
                 "f1": 1.0, "dead": 0}


def test_duplicated_latents_lose_uniqueness_not_mcc_of_their_match():
    D = torch.eye(4)
    U = torch.stack([D[0], D[0], D[1], D[1]])
    assert uniqueness(U, D) == 0.5
    # Hungarian: two latents can be matched to d0, d1 only once; the others to d2, d3 at cos 0.
    assert mcc(U, D) == pytest.approx(0.5)


def test_mcc_hand_computed():
    D = torch.eye(2)
    c = 0.6
    U = torch.tensor([[c, (1 - c * c) ** 0.5], [0.0, 1.0]])  # u0 leans on d0 (0.6), u1 = d1
    # Matching u0-d0 (0.6) + u1-d1 (1.0) beats u0-d1 (0.8) + u1-d0 (0.0): mean 0.8.
    assert mcc(U, D) == pytest.approx(0.8)


def test_firing_precision_and_recall_hand_computed():
    D = torch.eye(2)
    U = torch.eye(2)
    A = torch.tensor([[1.0, 0], [1.0, 0], [0, 1.0], [0, 0]])
    V = torch.tensor([[1.0, 0], [0, 0], [1.0, 1.0], [0, 0]])
    # latent 0 fires on rows 0, 2; feature 0 is active on rows 0, 1: precision 1/2, recall 1/2.
    # latent 1 fires on row 2; feature 1 is active on row 2: precision 1, recall 1.
    s = firing_scores(V, A, U, D)
    assert s.precision == pytest.approx(0.75) and s.recall == pytest.approx(0.75)
    assert s.f1 == pytest.approx((0.5 + 1.0) / 2) and s.dead == 0


def test_dead_latents_are_counted_and_left_out():
    D = torch.eye(2)
    A = torch.tensor([[1.0, 0], [0, 1.0]])
    V = torch.tensor([[1.0, 0], [0, 0]])  # latent 1 never fires
    s = firing_scores(V, A, torch.eye(2), D)
    assert s.dead == 1 and s.precision == 1.0 and s.recall == 1.0
