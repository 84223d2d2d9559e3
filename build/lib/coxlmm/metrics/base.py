"""The metric interface: a metric is a function of a small typed input that returns scores and artefacts.

    metric(inp: EvalInput) -> MetricResult(scores={name: float}, artifacts={name: rows | dict | Figure})

It never drives the model and never writes into shared state: the pipeline writes the scores to
`metrics.json` and the loggers, and each artefact to `<name>.json` (or `<name>.png` for a figure).
A metric that needs an extraction-side source (the position-matched noise states) says so in `needs`
("noise:train", "noise:test"); the pipeline's model stages fill those sources before any metric runs.
A metric that needs "interventions" (metrics/causal.py) also has `plan(inp)`: it says from cached
tensors which edits to run; the pipeline runs them as model stages and hands the results back in
`inp.interventions`.

A user adds a metric by writing such a class and listing it with `_target_` in a conf/metrics/*.yaml.

Shapes: Z (M, B), V (M, K), U (K, B); row i of a split's Z, V and noise belongs to its records[i].
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch

if TYPE_CHECKING:  # imported for types only: metrics stay importable without models
    from PIL import Image

    from coxlmm.concepts.base import Dictionary
    from coxlmm.grounding.concept_set import ConceptSet

NOISE_TRAIN, NOISE_TEST = "noise:train", "noise:test"


@dataclass(frozen=True)
class Split:
    """One split at one layer: the selected samples' features, codes and store records.

    records[i]: index (dataset index), id, caption (generated), position, token_ids (the generated
    pieces of t), prefix_ids, and `annotation` (dataset.annotate: e.g. the target object's factors)."""

    Z: torch.Tensor  # (M, B)
    V: torch.Tensor  # (M, K) the dictionary's codes of Z
    records: list[dict[str, Any]]
    dataset: Any  # CaptionDataset: images and reference captions
    noise: torch.Tensor | None = None  # (M, B) position-matched noise-image states, when a metric needs them

    def __len__(self) -> int:
        return int(self.Z.shape[0])

    @property
    def indices(self) -> list[int]:
        return [int(r["index"]) for r in self.records]

    @property
    def references(self) -> list[list[str]]:
        """Each sample's reference captions."""
        return [list(self.dataset.records[i].captions) for i in self.indices]

    @property
    def annotations(self) -> list[dict[str, Any]]:
        return [r.get("annotation") or {} for r in self.records]

    def image(self, row: int) -> "Image.Image | None":
        return self.dataset[self.indices[row]].image


@dataclass(frozen=True)
class Services:
    """What metrics may call: the layer's logit lens, grounding with the run's settings, a refit."""

    lens: Any  # .unembed(h (n, B)) -> (n, vocab), .tokenizer, .hidden_size
    ground: Callable[[torch.Tensor], list[list[str]]]  # U (K, B) -> T_k, the run's grounding settings
    refit: Callable[[torch.Tensor, int], "Dictionary"]  # (Z, seed) -> a fitted dictionary of the run's method and K
    scorer: Any = None  # coxlmm.scorers.Scorers (clip, bert), or None


@dataclass(frozen=True)
class EvalInput:
    train: Split
    test: Split | None
    dictionary: "Dictionary"
    concepts: "ConceptSet"
    services: Services
    token: str
    layer: int
    seed: int
    factors: dict[str, list[str]] = field(default_factory=dict)  # the dataset's declared factor values
    n_top: int = 50  # grounding settings the concepts' words were read with
    n_words: int = 10
    interventions: Any = None  # (plan, results) of the causal model stages, for a metric that needs them

    @property
    def eval_split(self) -> Split:
        """The test split when there is one, else the training split."""
        return self.test if self.test is not None and len(self.test) else self.train


@dataclass
class MetricResult:
    scores: dict[str, float] = field(default_factory=dict)
    artifacts: dict[str, Any] = field(default_factory=dict)  # name -> JSON-able rows/dict, or a matplotlib Figure


class Metric(Protocol):
    name: str
    needs: frozenset[str]

    def __call__(self, inp: EvalInput) -> MetricResult: ...
