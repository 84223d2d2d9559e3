"""The one random-direction function (coxlmm/directions.py): unit rows, seeded, and the same numbers as
the draws it replaced (Rnd-Words' float32 per seed, the dictionaries' float64 from a generator)."""

import torch

from coxlmm.directions import random_directions


def test_unit_rows_reproducible_per_seed_and_device_independent():
    R = random_directions(5, 64, seed=3)
    assert R.shape == (5, 64) and R.dtype == torch.float32 and R.device.type == "cpu"
    assert torch.allclose(R.norm(dim=1), torch.ones(5))
    assert torch.equal(R, random_directions(5, 64, 3)) and not torch.equal(R, random_directions(5, 64, 4))


def test_the_same_numbers_as_the_draws_it_replaced():
    old = torch.randn(4, 16, generator=torch.Generator().manual_seed(7))  # grounding/text.py, causal/plan.py
    assert torch.equal(random_directions(4, 16, 7), old / old.norm(dim=1, keepdim=True))
    g_old, g_new = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
    old = torch.randn(3, 8, generator=g_old, dtype=torch.float64)  # concepts/base.py random_unit_rows
    assert torch.equal(random_directions(3, 8, g_new, torch.float64), old / old.norm(dim=1, keepdim=True))
    # a generator advances as the old draw did: the next draw from it is the same too (planted world, SAE)
    assert torch.equal(torch.rand(5, generator=g_new), torch.rand(5, generator=g_old))
