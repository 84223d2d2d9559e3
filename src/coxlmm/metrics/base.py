"""The metric interface: every metric is a small object called with one `EvalContext`.

A metric returns a flat dict of floats (they go to `metrics.json` and the logger) and may add
artefacts (tables, figures) to `ctx.artifacts`. A user adds a metric by writing such a class and
listing it with `_target_` in a `conf/metrics/*.yaml` file; the pipeline never changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch

if TYPE_CHECKING:  # imported for types only: metrics stay importable without models
    from coxlmm.concepts.base import Dictionary
    from coxlmm.data.base import SampleRecord
    from coxlmm.grounding.concept_set import ConceptSet
    from coxlmm.models.base import LMM


@dataclass
class EvalContext:
    """Everything a metric may read. Shapes: Z_* (M, B); V_* (M, K); U (K, B)."""

    dictionary: "Dictionary"
    concepts: "ConceptSet"
    Z_train: torch.Tensor
    V_train: torch.Tensor
    Z_test: torch.Tensor | None = None
    V_test: torch.Tensor | None = None
    train_records: list["SampleRecord"] = field(default_factory=list)  # row i of Z_train <-> record i
    test_records: list["SampleRecord"] = field(default_factory=list)
    train_dataset: Any = None  # CaptionDataset, for images (scorers)
    test_dataset: Any = None
    train_indices: list[int] = field(default_factory=list)  # dataset index of each row of Z_train
    test_indices: list[int] = field(default_factory=list)
    lmm: "LMM | None" = None  # for unembedding-based metrics (random-words baseline ...)
    scorer: Any = None  # CLIPScore / BERTScore backend, when configured
    make_dictionary: Any = None  # callable(seed) -> fresh unfitted Dictionary (stability)
    token: str = ""
    layer: int = -1
    seed: int = 0
    artifacts: dict[str, Any] = field(default_factory=dict)  # name -> matplotlib Figure | rows


class Metric(Protocol):
    name: str

    def __call__(self, ctx: EvalContext) -> dict[str, float]: ...
