"""Capture hook-point outputs during greedy generation, one (B, H) row per forward call.

The prefill call's last position predicts generated token g_0; decode call j predicts g_j. So after
generation, stacking the captured rows gives, for each hooked layer, a (B, T, H) tensor whose [:, j]
is the state that predicts g_j. Only the last position is kept (`models.hooks.capture_last`), so memory
is O(T·B·H) per layer, and everything stays on the model's device until the selected rows are gathered.
"""

from __future__ import annotations

import torch

from coxlmm.models.hooks import capture_last


def generate_with_states(lmm, inputs: dict[str, torch.Tensor], layers: list[int], max_new_tokens: int):
    """Greedy generation plus {l: (B, T, H)} states aligned with the generated ids (B, T)."""
    points = lmm.hook_points()
    with torch.inference_mode(), capture_last({l: points[l] for l in layers}) as rows:
        out = lmm.generate(inputs, max_new_tokens=max_new_tokens)
    T = out.sequences.shape[1]
    states = {l: torch.stack(r[:T], dim=1) for l, r in rows.items()}
    return out, states
