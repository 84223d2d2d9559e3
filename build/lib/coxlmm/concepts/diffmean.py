"""DiffMean: the supervised reference direction of each labelled value (AxBench's difference of means).

    u_j = normalise(mean of Z over the samples with value j − mean of Z over the others)   (F, B)

It uses the labels, which no unsupervised dictionary sees: a reference row, not a competitor.
"""

from __future__ import annotations

import torch


def diff_mean(Z: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """Z (M, B), Y (M, F) bool -> U (F, B) unit rows; every column of Y needs both classes."""
    Z = Z.to(torch.float64)
    Y = Y.to(torch.bool)
    pos = Y.sum(0)
    if bool(((pos == 0) | (pos == len(Y))).any()):
        raise ValueError("diff_mean: every label column needs a positive and a negative sample")
    Yf = Y.to(torch.float64)
    mean_pos = (Yf.T @ Z) / pos[:, None]
    mean_neg = ((1 - Yf).T @ Z) / (len(Y) - pos)[:, None]
    D = mean_pos - mean_neg
    return (D / D.norm(dim=1, keepdim=True).clamp_min(1e-300)).to(torch.float32)
