"""How well the dictionary reconstructs the features: relative error and explained variance.

    recon_rel_error      = ‖Z − Z_hat‖² / ‖Z‖²              (train, and test when present)
    explained_variance   = 1 − ‖Z − Z_hat‖² / ‖Z − mean(Z)‖²  (same splits)

Z_hat = dictionary.decode(V): V U for Semi-NMF and NMF, plus the mean for PCA, the most active
centroid for k-means and Simple. Computed in float64.
"""

from __future__ import annotations

import torch

from coxlmm.metrics.base import EvalInput, Metric, MetricResult
from coxlmm.metrics.schema import Schema, Score, TableSpec

DICTIONARY_TABLE = TableSpec("dictionary", "The dictionaries: reconstruction, sparsity, stability", order=60)
SCHEMA = Schema(
    scores=[Score("recon_rel_error_train", "Recon. err. train", ("dictionary",), better=-1, curve=True),
            Score("recon_rel_error_test", "Recon. err. test", ("dictionary",), better=-1, summary=True, curve=True,
                  objective=True),
            Score("explained_variance", "Expl. var. train", ("dictionary",), better=1),
            Score("explained_variance_test", "Expl. var. test", ("dictionary",), better=1)],
    tables=[DICTIONARY_TABLE])


def _sq(X: torch.Tensor) -> float:
    return float(X.to(torch.float64).pow(2).sum())


def relative_error(Z: torch.Tensor, Z_hat: torch.Tensor) -> float:
    """‖Z − Z_hat‖² / ‖Z‖² for Z, Z_hat (M, B); 0 for Z = 0 reconstructed exactly."""
    den = _sq(Z)
    num = _sq(Z.to(torch.float64) - Z_hat.to(torch.float64))
    return num / den if den > 0 else (0.0 if num == 0 else float("inf"))


def explained_variance(Z: torch.Tensor, Z_hat: torch.Tensor) -> float:
    """1 − ‖Z − Z_hat‖² / ‖Z − mean(Z)‖², the mean taken over rows."""
    Z64 = Z.to(torch.float64)
    den = _sq(Z64 - Z64.mean(0))
    num = _sq(Z64 - Z_hat.to(torch.float64))
    return 1.0 - num / den if den > 0 else (1.0 if num == 0 else float("-inf"))


class Reconstruction(Metric):
    """recon_rel_error_train/_test and explained_variance(_test)."""

    name = "recon"

    def __call__(self, inp: EvalInput) -> MetricResult:
        tr = inp.train
        Z_hat = inp.dictionary.decode(tr.V)
        out = {"recon_rel_error_train": relative_error(tr.Z, Z_hat), "explained_variance": explained_variance(tr.Z, Z_hat)}
        if inp.test is not None and len(inp.test):
            Z_hat_test = inp.dictionary.decode(inp.test.V)
            out["recon_rel_error_test"] = relative_error(inp.test.Z, Z_hat_test)
            out["explained_variance_test"] = explained_variance(inp.test.Z, Z_hat_test)
        return MetricResult(out, schema=SCHEMA)
