"""`ConceptSet`: a concept dictionary grounded in words and in images.

Notation (row-major, one row per training sample):
    U   (K, B)   concept dictionary, one concept u_k per row
    V   (M, K)   concept activations of the M training samples
    T_k          words of concept k: top tokens of W_U · norm(u_k), filtered (grounding/text.py)
    X_k,MAS      the N_MAS training samples with the largest v_k (grounding/visual.py)

`to_json()` is the `concepts.json` contract of DESIGN.md: per concept `id`, `words`,
`top_samples` (sample ids), plus `method`, `layer`, `token` at the top level.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class ConceptSet:
    U: torch.Tensor  # (K, B)
    V: torch.Tensor  # (M, K) activations on the training samples (rows of Z_train)
    words: list[list[str]]  # T_k, K lists of at most n_words words
    top_samples: list[list[str]]  # X_k,MAS as sample ids, K lists of at most N_MAS ids
    top_indices: list[list[int]]  # X_k,MAS as row indices into Z_train / V
    method: str = ""
    layer: int = -1
    token: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # free-form (e.g. word-filter settings)

    def __post_init__(self) -> None:
        K = self.U.shape[0]
        lengths = {"V.shape[1]": self.V.shape[1], "words": len(self.words),
                   "top_samples": len(self.top_samples), "top_indices": len(self.top_indices)}
        bad = {k: n for k, n in lengths.items() if n != K}
        if bad:
            raise ValueError(f"ConceptSet with K={K} concepts (rows of U) got mismatched sizes {bad}")

    @property
    def n_concepts(self) -> int:
        return self.U.shape[0]

    def top_activations(self, k: int) -> list[float]:
        """v_k of each sample in X_k,MAS, in the same order as `top_indices[k]`."""
        return [float(self.V[i, k]) for i in self.top_indices[k]]

    def label(self, k: int, n_words: int = 5) -> str:
        """Short human label, e.g. 'c3: red, circle, round' (or 'c3: (no words)')."""
        words = ", ".join(self.words[k][:n_words]) or "(no words)"
        return f"c{k}: {words}"

    def to_json(self) -> dict[str, Any]:
        """The `concepts.json` document: JSON-serialisable, no tensors."""
        return {
            "method": self.method,
            "layer": self.layer,
            "token": self.token,
            "n_concepts": self.n_concepts,
            "concepts": [
                {
                    "id": k,
                    "words": list(self.words[k]),
                    "top_samples": list(self.top_samples[k]),
                    "top_activations": [round(a, 6) for a in self.top_activations(k)],
                }
                for k in range(self.n_concepts)
            ],
            **({"extra": self.extra} if self.extra else {}),
        }
