"""Hydra entry point: `coxlmm [overrides]`, `coxlmm -m ...` for sweeps (also `python -m coxlmm`).

Each Hydra job opens its loggers (one W&B run, offline by default) with the composed config before any
stage runs and closes them when it ends: `success`, or `failed` with its error, so a job that crashes
still leaves its record.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

import hydra
from omegaconf import DictConfig, OmegaConf

from coxlmm.config import register_configs
from coxlmm.errors import CoxlmmError
from coxlmm.paths import CONF_PACKAGE

log = logging.getLogger("coxlmm")
register_configs()


@hydra.main(version_base="1.3", config_path=CONF_PACKAGE, config_name="config")
def _app(cfg: DictConfig) -> float | None:
    import lightning.pytorch  # noqa: F401 - imported first so the level set below sticks

    from coxlmm.pipeline import run
    from coxlmm.report.log import JobLog

    # Lightning sets its own logger to INFO on import (device lines, tips): keep warnings only.
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("lightning.fabric").setLevel(logging.WARNING)
    try:
        resolved = OmegaConf.to_container(cfg, resolve=True)
    except Exception as e:  # an interpolation that cannot resolve: the user's config, said plainly
        print(f"\ncoxlmm: error: the config does not resolve ({type(e).__name__}: {e})", file=sys.stderr)
        sys.exit(2)
    job = JobLog(cfg.logger, resolved)
    try:
        metrics = run(cfg, job)
    except CoxlmmError as e:
        job.finish("failed", str(e))
        failed_page(cfg, str(e))
        log.error("%s", e)
        print(f"\ncoxlmm: error: {e}", file=sys.stderr)
        sys.exit(2)
    except BaseException as e:  # a crash or Ctrl-C: the W&B run says so, then the error goes on
        job.finish("failed", f"{type(e).__name__}: {e}")
        failed_page(cfg, f"{type(e).__name__}: {e}")
        raise
    job.finish("success")
    return objective(cfg, metrics)


def objective(cfg: DictConfig, metrics: dict[str, float]) -> float | None:
    """A scalar for Hydra sweepers (optimisers) that minimise a job's return value: the score the metrics
    mark `objective` (metrics_schema.json of the run)."""
    import json
    from pathlib import Path

    from coxlmm.metrics.schema import Schema

    path = Path(cfg.paths.output_dir) / "metrics_schema.json"
    if not metrics or not path.is_file():
        return None
    return Schema.from_json(json.loads(path.read_text())).objective(metrics)


def failed_page(cfg: DictConfig, error: str) -> None:
    """The run dir of a failed job still gets a report.html saying what is missing (never raises)."""
    from pathlib import Path

    try:
        if not cfg.report:
            return
        from coxlmm.report.browser import write_failed_report

        out = Path(cfg.paths.output_dir)
        write_failed_report(out, error, [str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()])
    except Exception as e:  # noqa: BLE001 - the page is a courtesy; the error itself is what matters
        log.warning("no failed-run page (%s)", e)


def main() -> None:
    # W&B never reaches a server unless the user asks for it (WANDB_MODE=online).
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Lightning 2.6 on torch 2.13 warns about its own use of a deprecated pytree API on every predict.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    _app()


if __name__ == "__main__":
    main()
