"""A metric that exists only for the tests: one score, one per-concept column, its own table.

It is registered only in tests/conf/metrics/toy.yaml; the tests show that its numbers reach the sweep
tables and the concept browser with no edit anywhere else."""

from __future__ import annotations

from coxlmm.metrics.base import EvalInput, Metric, MetricResult
from coxlmm.metrics.schema import ConceptColumn, Schema, Score, TableSpec


class ToyMetric(Metric):
    """toy_norm_ratio: mean ‖u_k‖ over K (1 for unit atoms); per concept, ‖u_k‖."""

    name = "toy"

    def __call__(self, inp: EvalInput) -> MetricResult:
        norms = inp.dictionary.U.float().norm(dim=1)
        schema = Schema(scores=[Score("toy_norm_ratio", "Toy atom norm", ("toy",), summary=True)],
                        concepts=[ConceptColumn("toy_atom_norm", "toy ‖u_k‖", sortable=True)],
                        tables=[TableSpec("toy", "Toy table: the atoms' norms")])
        return MetricResult({"toy_norm_ratio": float(norms.mean())}, schema=schema,
                            concepts={"toy_atom_norm": norms.tolist()})
