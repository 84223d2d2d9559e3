"""coxlmm.trainer: the recipes' learning-rate curve is the one they had (the hand-written LambdaLR formulas
they replaced), and every Trainer comes from the one builder, the trainer config with overrides on top."""

import math

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from coxlmm.errors import CoxlmmError
from coxlmm.trainer import build_trainer, warmup_cosine


def old_connector(step: int, warmup: int, max_steps: int, min_lr_ratio: float) -> float:
    """train/connector.py's LambdaLR factor before coxlmm.trainer (commit be93da0)."""
    if step < warmup:
        return (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def old_scorer(step: int, warm: int, total: int) -> float:
    """train/scorer.py's LambdaLR factor before coxlmm.trainer (commit be93da0)."""
    if step < warm:
        return (step + 1) / warm
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))


def lr_sequence(configure_optimizers, steps: int) -> list[float]:
    """The learning rate of each optimizer step, stepping the scheduler as Lightning does (interval: step)."""
    conf = configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    assert conf["lr_scheduler"]["interval"] == "step"
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("warmup,max_steps,ratio", [(5, 40, 0.1), (50, 1200, 0.1), (1, 10, 0.0), (0, 8, 0.25)])
def test_warmup_cosine_is_the_old_curve(warmup, max_steps, ratio):
    opt = torch.optim.AdamW([nn.Parameter(torch.zeros(2))], lr=1e-3)
    sched = warmup_cosine(opt, warmup, max_steps, ratio)
    for step in range(max_steps):
        assert opt.param_groups[0]["lr"] == pytest.approx(1e-3 * old_connector(step, warmup, max_steps, ratio),
                                                          rel=1e-12, abs=1e-18), step
        opt.step()
        sched.step()


def test_the_recipes_keep_their_learning_rate_curves():
    from coxlmm.scorers.embedded import ProjectionHeads
    from coxlmm.train.connector import ConnectorModule
    from coxlmm.train.scorer import HeadsModule

    stub = nn.Module()
    stub.connector = nn.Linear(3, 2)
    module = ConnectorModule(stub, lr=1e-3, weight_decay=0.01, warmup_steps=10, max_steps=60)
    got = lr_sequence(module.configure_optimizers, 60)
    assert got == pytest.approx([1e-3 * old_connector(s, 10, 60, 0.1) for s in range(60)], rel=1e-12)

    optim = OmegaConf.create({"lr": 2e-3, "weight_decay": 0.01, "warmup_steps": 7, "max_steps": 50})
    heads = HeadsModule(ProjectionHeads(dim=8, cell_dim=4, text_hidden=8), {}, optim)
    got = lr_sequence(heads.configure_optimizers, 50)
    assert got == pytest.approx([2e-3 * old_scorer(s, 7, 50) for s in range(50)], rel=1e-12, abs=1e-18)
    assert got[0] == pytest.approx(2e-3 / 7) and got[-1] > 0  # warm-up starts at lr/w, not at 0


def test_build_trainer_takes_the_config_node_and_overrides_win():
    node = OmegaConf.create({"_target_": "lightning.pytorch.Trainer", "accelerator": "cpu", "devices": 1,
                             "precision": "32-true", "max_steps": 3})
    t = build_trainer(node, max_steps=7, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    assert t.max_steps == 7 and type(t.accelerator).__name__ == "CPUAccelerator" and t.logger is None
    with pytest.raises(CoxlmmError, match="trainer._target_='torch.nn.Linear'"):
        build_trainer({"_target_": "torch.nn.Linear"})


def test_the_saes_fit_through_the_builder(monkeypatch):
    import coxlmm.concepts.sae as sae
    from coxlmm.concepts.topk_sae import TopKSAE

    seen = []

    def spy(trainer=None, **overrides):
        seen.append((dict(trainer), overrides))
        return build_trainer(trainer, **overrides)

    monkeypatch.setattr(sae, "build_trainer", spy)
    Z = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
    TopKSAE(n_concepts=4, k=2, max_epochs=1, batch_size=32, accelerator="cpu", devices=1, precision="32-true").fit(Z)
    assert seen and seen[0][0] == {"accelerator": "cpu", "devices": 1, "strategy": "auto", "precision": "32-true"}
    assert seen[0][1]["max_epochs"] == 1 and seen[0][1]["logger"] is False
