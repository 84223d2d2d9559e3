"""TopK sparse autoencoder (Gao et al. 2024): each sample keeps its k largest latents.

    c = TopK_k(ReLU((x − b_dec) W_encᵀ + b_enc)),   x̂ = c U + b_dec,   ‖u_k‖ = 1
    Z (M, B), U (K, B) decoder rows, V (M, K) = codes >= 0 (in the units of Z)

K = `n_concepts` latents, k = `k` active per sample (the L0), trained as in `concepts/sae.py`
(FVU loss, AuxK for dead latents, unit-norm decoder rows, Lightning `Trainer.fit`). Encoding
is the same TopK as training, sample by sample.
"""

from __future__ import annotations

import torch

from coxlmm.concepts.sae import SparseAutoencoder, topk_codes


class TopKSAE(SparseAutoencoder):
    """TopK SAE: K latents, exactly (at most) k active per sample."""

    method = "topk_sae"

    def sparsify(self, a: torch.Tensor) -> torch.Tensor:
        return topk_codes(a, self.k)

    def activate(self, a: torch.Tensor) -> torch.Tensor:
        return topk_codes(a, self.k)
