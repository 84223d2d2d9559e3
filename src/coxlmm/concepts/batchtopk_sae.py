"""BatchTopK sparse autoencoder (Bussmann, Leask & Nanda 2024): k active latents per sample on
average over a batch, one threshold at inference.

    a = ReLU((x − b_dec) W_encᵀ + b_enc),   c = BatchTopK_k(a)   (the k·n largest over a batch)
    Z (M, B), U (K, B) decoder rows (unit norm), V (M, K) codes >= 0 (in the units of Z)

A batch of n samples keeps its k·n largest activations, so a sample may use more or fewer than
k latents while the batch averages k (SynthSAEBench ranks it above TopK at recovering planted
features). At inference a sample cannot see a batch: a latent fires when its activation exceeds
one threshold θ, set after training so that the training features average exactly k active
latents per sample (the k·M-th largest training activation, found in three streamed passes,
`sae.kth_largest`), as BatchTopK's JumpReLU inference does. Training as in `concepts/sae.py`.
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch

from coxlmm.concepts.sae import SparseAutoencoder, batch_topk_codes, kth_largest


class BatchTopKSAE(SparseAutoencoder):
    """BatchTopK SAE: K latents, k active per sample on average; a threshold at inference."""

    method = "batchtopk_sae"
    _state_names = SparseAutoencoder._state_names + ("threshold",)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.threshold: torch.Tensor | None = None  # (1,) θ of inference, in training units

    def sparsify(self, a: torch.Tensor) -> torch.Tensor:
        return batch_topk_codes(a, self.k)

    def activate(self, a: torch.Tensor) -> torch.Tensor:
        return a * (a > self.threshold.to(a.device))

    def calibrate(self, activations: Callable[[], Iterator[torch.Tensor]], n_rows: int) -> None:
        """θ = the (k·M + 1)-th largest training activation: exactly k·M activations exceed it."""
        theta = kth_largest(activations, self.k * n_rows + 1)
        self.threshold = torch.tensor([theta], dtype=torch.float32)
