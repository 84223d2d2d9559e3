"""Capture decoder-block outputs during greedy generation, one (B, H) row per forward call.

The prefill call's last position predicts generated token g_0; decode call j predicts g_j. So after
generation, stacking the captured rows gives, for each hooked layer, a (B, T, H) tensor whose [:, j]
is the state that predicts g_j. Only the last position is kept, so memory is O(T·B·H) per layer,
and everything stays on the model's device until the selected rows are gathered.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def capture_last_position(blocks: list[nn.Module], layers: list[int]):
    """Yield {l: list of (B, H)} filled by forward hooks on `blocks[l]` while the context is open."""
    store: dict[int, list[torch.Tensor]] = {l: [] for l in layers}

    def hook(l):
        def fn(_module, _inputs, output):
            h = output[0] if isinstance(output, (tuple, list)) else output
            store[l].append(h[:, -1, :].detach())

        return fn

    handles = [blocks[l].register_forward_hook(hook(l)) for l in layers]
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


def generate_with_states(lmm, inputs: dict[str, torch.Tensor], layers: list[int], max_new_tokens: int):
    """Greedy generation plus {l: (B, T, H)} states aligned with the generated ids (B, T)."""
    with torch.inference_mode(), capture_last_position(lmm.hook_points(), layers) as rows:
        out = lmm.generate(inputs, max_new_tokens=max_new_tokens)
    T = out.sequences.shape[1]
    states = {l: torch.stack(r[:T], dim=1) for l, r in rows.items()}
    return out, states
