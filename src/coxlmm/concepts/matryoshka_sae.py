"""Matryoshka BatchTopK sparse autoencoder (Bussmann et al. 2025; Nabeshima 2024).

    a = ReLU((x − b_dec) W_encᵀ + b_enc),   c = BatchTopK_k(a)   (the k·n largest over a batch)
    loss = mean over prefixes m_1 < … < m_G = K of  ‖x − (c[:, :m_g] U[:m_g] + b_dec)‖² / ‖x − x̄‖²
    Z (M, B), U (K, B) decoder rows (unit norm), V (M, K) codes >= 0 (in the units of Z)

The latents are nested groups: the first m_1 must reconstruct x on their own, the first m_2 a
little better, and so on, so early latents learn general concepts and later ones refinements
instead of absorbing them (SynthSAEBench finds this architecture best at recovering planted
features). `group_sizes` lists the group sizes (summing to K); by default they double, K/8,
K/8, K/4, K/2 (rounded, at least 1). BatchTopK lets a sample use more or fewer than k latents
while the batch averages k. At inference a sample cannot see a batch: latents fire when their
activation exceeds one threshold θ, set after training so that the training features average
exactly k active latents per sample (the k·M-th largest training activation), as BatchTopK's
JumpReLU inference does (`batchtopk_sae.BatchTopKSAE`, which this class extends with the nested
loss). Training otherwise as in `concepts/sae.py` (AuxK on the full reconstruction, unit-norm
decoder, Lightning `Trainer.fit`).
"""

from __future__ import annotations

from typing import Any, Sequence

from coxlmm.concepts.batchtopk_sae import BatchTopKSAE
from coxlmm.errors import CoxlmmError


def default_group_sizes(K: int) -> list[int]:
    """Doubling groups: prefixes at about K/8, K/4, K/2, K (each group >= 1 latent)."""
    ends = sorted({max(1, round(K * f)) for f in (1 / 8, 1 / 4, 1 / 2)} | {K})
    return [e - s for s, e in zip([0] + ends[:-1], ends)]


class MatryoshkaSAE(BatchTopKSAE):
    """Matryoshka BatchTopK SAE: nested groups of latents, k active per sample on average."""

    method = "matryoshka_sae"

    def __init__(self, n_concepts: int, *args: Any, group_sizes: Sequence[int] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(n_concepts, *args, **kwargs)
        sizes = default_group_sizes(self.n_concepts) if group_sizes is None else [int(g) for g in group_sizes]
        if sum(sizes) != self.n_concepts or min(sizes) < 1:
            raise CoxlmmError(
                f"matryoshka_sae: group_sizes={group_sizes!r} must be positive and sum to "
                f"n_concepts={self.n_concepts} (e.g. null for the doubling default "
                f"{default_group_sizes(self.n_concepts)})."
            )
        self.group_sizes = sizes

    def params(self) -> dict[str, Any]:
        return {**super().params(), "group_sizes": list(self.group_sizes)}

    def squared_errors(self, base, c, Pq, G):
        """The full model's errors, and the mean over prefixes m_g of their FVU (nested groups)."""
        total, r2, start = 0.0, base, 0
        for size in self.group_sizes:  # add group g: r2 of the prefix m_g = start + size
            end = start + size
            cg = c[:, start:end]
            r2 = r2 - 2 * (cg * Pq[:, start:end]).sum(1) \
                + 2 * ((c[:, :start] @ G[:start, start:end]) * cg).sum(1) \
                + ((cg @ G[start:end, start:end]) * cg).sum(1)
            total = total + r2.mean()
            start = end
        return r2, total / len(self.group_sizes)

    def direct_errors(self, xc, c, U):
        """The full model's residual and errors, and the mean over prefixes of their FVU, each
        prefix's residual formed by taking its group's reconstruction off the last one."""
        total, resid, start = 0.0, xc, 0
        for size in self.group_sizes:
            end = start + size
            resid = resid - c[:, start:end] @ U[start:end]
            r2 = resid.pow(2).sum(1)
            total = total + r2.mean()
            start = end
        return r2, total / len(self.group_sizes), resid
