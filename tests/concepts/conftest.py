"""Shared fixtures for the dictionary tests: small features shaped like LLM hidden states."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: these problems are tiny, and on a shared 2-core machine a second
    thread only adds waiting. Restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def hidden_states(M: int, B: int, n_directions: int = 6, seed: int = 0) -> torch.Tensor:
    """Z (M, B) float32: a sparse non-negative mixture of unit directions, a large shared
    offset, one outlier dimension and a little noise (the structure of LLM hidden states)."""
    g = torch.Generator().manual_seed(seed)
    D = torch.randn(n_directions, B, generator=g)
    D /= D.norm(dim=1, keepdim=True)
    W = (torch.rand(M, n_directions, generator=g) < 0.4) * torch.rand(M, n_directions, generator=g) * 8
    offset = torch.randn(B, generator=g)
    Z = W @ D + 6 * offset / offset.norm() + 0.3 * torch.randn(M, B, generator=g)
    Z[:, 0] += 10.0
    return Z


@pytest.fixture
def make_features():
    """The `hidden_states` generator, for tests that need their own sizes."""
    return hidden_states


@pytest.fixture
def Z() -> torch.Tensor:
    """Training features (60, 16)."""
    return hidden_states(85, 16)[:60]


@pytest.fixture
def Z_test() -> torch.Tensor:
    """Held-out features (25, 16) from the same distribution."""
    return hidden_states(85, 16)[60:]
