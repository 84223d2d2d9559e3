"""Random directions: the one place a random direction of the hidden space is drawn.

Every baseline and control that needs random directions (Rnd-Words, the random dictionary, the
random starts of Semi-NMF and the SAE, PCA's padding, the isotropic causal control, the planted
world) draws them here, so that "a random direction" means one thing: a standard Gaussian vector
normalised to unit length (uniform on the sphere), drawn on the CPU from a seeded generator, so a
seed gives the same directions on every compute device.
"""

from __future__ import annotations

import torch


def random_directions(n: int, B: int, seed: int | torch.Generator, dtype: torch.dtype = torch.float32
                      ) -> torch.Tensor:
    """(n, B) random unit rows on the CPU, in `dtype`. `seed`: an int (a fresh generator) or a generator
    to draw from (it advances, as any draw from it would). The dtype is part of the draw: float32 and
    float64 give different directions for one seed."""
    gen = torch.Generator().manual_seed(seed) if isinstance(seed, int) else seed
    R = torch.randn(n, B, generator=gen, dtype=dtype)
    return R / R.norm(dim=1, keepdim=True)
