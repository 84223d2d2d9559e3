"""Lightning Trainers and learning-rate schedules: the one place each is built.

`build_trainer(trainer, **overrides)`: every Lightning Trainer of coxlmm (the model stages, the SAEs' fits,
the training recipes) comes from the `trainer` config group (where models run: accelerator, devices,
strategy, num_nodes, precision), given as its config node or a dict of the same keys, with the stage's
own loop on top (`overrides`: max_steps, callbacks, logger, ...).

`warmup_cosine(optimizer, warmup_steps, max_steps, min_lr_ratio)`: the training recipes' schedule, torch's
own schedulers chained: linear warm-up (step s < w: lr·(s + 1)/w), then cosine decay from lr to
lr·min_lr_ratio at max_steps (step s ≥ w: lr·(m + (1 − m)·½(1 + cos(π (s − w)/(max_steps − w))))).
"""

from __future__ import annotations

from typing import Any

import torch

from coxlmm.errors import CoxlmmError

TRAINER_TARGETS = ("lightning.pytorch.Trainer", "lightning.Trainer", "lightning.pytorch.trainer.trainer.Trainer")


def trainer_kwargs(trainer: Any) -> dict[str, Any]:
    """The Trainer arguments of a `trainer` config node (resolved, `_target_` checked and dropped) or dict."""
    from omegaconf import DictConfig, OmegaConf

    kwargs = OmegaConf.to_container(trainer, resolve=True) if isinstance(trainer, DictConfig) else dict(trainer or {})
    target = kwargs.pop("_target_", TRAINER_TARGETS[0])
    if target not in TRAINER_TARGETS:
        raise CoxlmmError(f"trainer._target_={target!r} is not supported: coxlmm's stages run on Lightning's "
                          f"Trainer ({TRAINER_TARGETS[0]}).")
    return kwargs


def build_trainer(trainer: Any = None, **overrides: Any):
    """A Lightning Trainer: the `trainer` config node (or dict) with `overrides` on top."""
    import lightning as L

    return L.Trainer(**{**trainer_kwargs(trainer), **overrides})


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, max_steps: int,
                  min_lr_ratio: float = 0.0) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warm-up over `warmup_steps`, then cosine decay to `min_lr_ratio`·lr at `max_steps` (module doc);
    stepped once per optimizer step. The optimizer's single learning rate sets the floor."""
    from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR

    lrs = {g["lr"] for g in optimizer.param_groups}
    if len(lrs) != 1:
        raise CoxlmmError(f"warmup_cosine needs one learning rate for every parameter group, got {sorted(lrs)}.")
    cosine = CosineAnnealingLR(optimizer, T_max=max(1, max_steps - warmup_steps), eta_min=lrs.pop() * min_lr_ratio)
    if warmup_steps <= 0:
        return cosine
    warmup = LinearLR(optimizer, start_factor=1 / warmup_steps, end_factor=1.0, total_iters=warmup_steps - 1)
    return SequentialLR(optimizer, [warmup, cosine], milestones=[warmup_steps])
