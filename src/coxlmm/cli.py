"""Hydra entry point: `coxlmm [overrides]`, `coxlmm -m ...` for sweeps (also `python -m coxlmm`)."""

from __future__ import annotations

import logging
import os
import sys
import warnings

import hydra
from omegaconf import DictConfig

from coxlmm.config import register_configs
from coxlmm.errors import CoxlmmError
from coxlmm.paths import CONF_DIR

log = logging.getLogger("coxlmm")
register_configs()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _app(cfg: DictConfig) -> float | None:
    import lightning.pytorch  # noqa: F401 - imported first so the level set below sticks

    from coxlmm.pipeline import run

    # Lightning sets its own logger to INFO on import (device lines, tips): keep warnings only.
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    try:
        metrics = run(cfg)
    except CoxlmmError as e:
        log.error("%s", e)
        print(f"\ncoxlmm: error: {e}", file=sys.stderr)
        sys.exit(2)
    # A scalar for Hydra sweepers (optimisers) that minimise a job's return value.
    return None if not metrics else metrics.get("recon_rel_error_test", metrics.get("recon_rel_error_train"))


def main() -> None:
    # W&B never reaches a server unless the user asks for it (WANDB_MODE=online).
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Lightning 2.6 on torch 2.13 warns about its own use of a deprecated pytree API on every predict.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    _app()


if __name__ == "__main__":
    main()
