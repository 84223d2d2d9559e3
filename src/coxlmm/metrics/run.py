"""The numbers a run records about itself (sample counts, stage times), described like any metric's."""

from __future__ import annotations

from coxlmm.metrics.base import MetricResult
from coxlmm.metrics.schema import Schema, Score

SCHEMA = Schema(scores=[Score("n_train", "training samples", digits=0), Score("n_test", "test samples", digits=0),
                        Score("seconds_model_stages", "model stages (s)", digits=1),
                        Score("seconds_tensor_stages", "tensor stages (s)", digits=1)])


def run_facts(n_train: int, n_test: int, seconds_model: float, seconds_tensor: float) -> MetricResult:
    return MetricResult({"n_train": float(n_train), "n_test": float(n_test), "seconds_model_stages": seconds_model,
                         "seconds_tensor_stages": seconds_tensor}, schema=SCHEMA)
