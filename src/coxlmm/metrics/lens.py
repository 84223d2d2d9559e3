"""Logit-lens readability of a layer: can the lens read the model's own next token here at all?

For each sample, the state z at layer L predicts the target t (the extraction selected it so). The
lens `W_U · norm(z)` returns t as its top-1 token for a share of the samples (`lens_top1_t`), and
among its top 10 for another (`lens_top10_t`). Where both are near 0 (the early and middle layers of
most LMs), the words of *any* direction read through the lens say little about what the layer
encodes: a layer claim about grounded words holds only where the lens can read the layer.
"""

from __future__ import annotations

import torch

from coxlmm.metrics.base import EvalInput, Metric, MetricResult
from coxlmm.metrics.schema import Schema, Score


def lens_hits(unembed, Z: torch.Tensor, target_ids: torch.Tensor, k: int = 10, chunk: int = 256
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(M,) bools: the lens top-1 is the target id; the target id is in the lens top-k."""
    top1, topk = [], []
    for start in range(0, len(Z), chunk):
        logits = unembed(Z[start:start + chunk])
        ids = logits.topk(k, dim=-1).indices
        t = target_ids[start:start + chunk, None]
        top1.append(ids[:, :1].eq(t).any(1))
        topk.append(ids.eq(t).any(1))
    return torch.cat(top1), torch.cat(topk)


class LensReadability(Metric):
    """lens_top1_t, lens_top<k>_t on the test samples (else the training samples)."""

    name = "lens"

    def __init__(self, k: int = 10):
        self.k = k

    def __call__(self, inp: EvalInput) -> MetricResult:
        split = inp.eval_split
        if not len(split):
            return MetricResult()
        ids = torch.tensor([r["token_ids"][0] for r in split.records])
        top1, topk = lens_hits(inp.services.lens.unembed, split.Z, ids, self.k)
        schema = Schema(scores=[Score("lens_top1_t", "Lens top-1 = t", curve=True),
                                Score(f"lens_top{self.k}_t", f"Lens top-{self.k} ∋ t", curve=True)])
        return MetricResult({"lens_top1_t": float(top1.float().mean()), f"lens_top{self.k}_t": float(topk.float().mean())},
                            schema=schema)
