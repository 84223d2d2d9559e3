"""The metric interface: a metric is a function of a small typed input that returns its numbers and
what they mean.

    metric(inp: EvalInput) -> MetricResult(scores, artifacts, schema, samples, concepts)

    scores     {key: float}: the run's metrics.json
    artifacts  {name: rows | dict | matplotlib Figure}: <name>.json / <name>.png
    schema     metrics/schema.py: what every score, per-sample array and per-concept column is,
               which table it belongs to and how it is shown; the views render from it
    samples    {name: (ids, (M,) or (M, R) array)}: per-unit scores (samples.safetensors), what the
               sweep tables pair across jobs and methods
    concepts   {key: K values}: per-concept columns (concepts.json, the concept browser)

A metric never drives the model and never writes into shared state. What it needs from the model
stages it *requests* with typed values (`NoiseStates`; the causal package adds its own): the
pipeline fills every request before the metric runs and hands the result back in the input
(`Split.noise`). A user adds a metric by writing such a class, naming it with `_target_` in one
conf/metric/<name>.yaml file and adding that to a set's defaults list (conf/metrics/*.yaml); its numbers
then appear in the tables and the browser with no other edit.

Shapes: Z (M, B), V (M, K), U (K, B); row i of a split's Z, V and noise draws belongs to its records[i].
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from coxlmm.metrics.schema import Schema

if TYPE_CHECKING:  # imported for types only: metrics stay importable without models
    from PIL import Image

    from coxlmm.concepts.base import Dictionary
    from coxlmm.grounding.concept_set import ConceptSet


@dataclass(frozen=True)
class NoiseStates:
    """Request: the position-matched noise source of a split (each selected sample's own caption prefix
    teacher-forced after a noise image; the state that predicts t), one draw per `noise.seeds` entry."""

    split: str  # "train" | "test"


NOISE_TRAIN, NOISE_TEST = NoiseStates("train"), NoiseStates("test")


@dataclass(frozen=True)
class Split:
    """One split at one layer: the selected samples' features, codes and store records.

    records[i]: index (dataset index), id, caption (generated), position, token_ids (the generated
    pieces of t), prefix_ids, and `annotation` (dataset.annotate: e.g. the target object's factors)."""

    Z: torch.Tensor  # (M, B)
    V: torch.Tensor  # (M, K) the dictionary's codes of Z
    records: list[dict[str, Any]]
    dataset: Any  # CaptionDataset: images and reference captions
    noise: tuple[torch.Tensor, ...] = ()  # (M, B) per noise draw: the position-matched noise states, when requested

    def __len__(self) -> int:
        return int(self.Z.shape[0])

    @property
    def ids(self) -> list[str]:
        return [str(r["id"]) for r in self.records]

    def words(self, default: str) -> list[str]:
        """Each sample's target word (a run over several words records it per sample; else `default`)."""
        return [str(r.get("word") or default) for r in self.records]

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
    sources: dict[Any, Any] = field(default_factory=dict)  # request -> result: the model stages of this metric's plan

    @property
    def eval_split(self) -> Split:
        """The test split when there is one, else the training split."""
        return self.test if self.test is not None and len(self.test) else self.train


@dataclass
class MetricResult:
    scores: dict[str, float] = field(default_factory=dict)
    artifacts: dict[str, Any] = field(default_factory=dict)  # name -> JSON-able rows/dict, or a matplotlib Figure
    schema: Schema = field(default_factory=Schema)
    samples: dict[str, tuple[list[str], np.ndarray]] = field(default_factory=dict)  # name -> (unit ids, (M,) / (M, R))
    concepts: dict[str, list[float | None]] = field(default_factory=dict)  # column key -> one value per concept

    def merge(self, other: "MetricResult") -> "MetricResult":
        """Both results in one (the pipeline gathers a layer's metrics); a key produced twice is an error."""
        for mine, theirs, what in ((self.scores, other.scores, "score"), (self.artifacts, other.artifacts, "artefact"),
                                   (self.samples, other.samples, "per-sample array"),
                                   (self.concepts, other.concepts, "per-concept column")):
            clash = set(mine) & set(theirs)
            if clash:
                raise ValueError(f"two metrics write the same {what} {sorted(clash)}: rename one")
        return MetricResult({**self.scores, **other.scores}, {**self.artifacts, **other.artifacts},
                            self.schema.merge(other.schema), {**self.samples, **other.samples},
                            {**self.concepts, **other.concepts})


class Metric:
    """Base of every metric: `name`, the model-stage sources it requests, and the call.

    Subclass it, set `name`, implement `__call__`; override `requests` when the metric reads a
    model-stage source (e.g. `frozenset({NOISE_TRAIN})`)."""

    name: str = "metric"

    def requests(self) -> frozenset:
        """The typed model-stage sources this metric reads, filled before the tensor stages."""
        return frozenset()

    def plan(self, inp: EvalInput) -> tuple:
        """Model stages this metric needs from the layer's tensors (e.g. interventions): typed requests,
        each with `run(**context)` and `describe()`; their results reach `__call__` in `inp.sources`."""
        return ()

    def __call__(self, inp: EvalInput) -> MetricResult:
        raise NotImplementedError
