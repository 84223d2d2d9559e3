"""Hydra entry point: `coxlmm [overrides]`, `coxlmm -m ...` for sweeps (also `python -m coxlmm`).

Each Hydra job first sizes its threads (`threads.py`: the CPUs it is given, divided among the jobs its
launcher runs at once) and opens its loggers (one W&B run, offline by default) with the composed config,
in a process of their own (`report.log.JobLog`), so the stages do not wait for W&B; it closes them when it
ends: `success`, or `failed` with its error, so a job that crashes still leaves its record.
"""

from __future__ import annotations

import gc
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
    from coxlmm.report.log import JobLog

    quiet_lightning()
    try:
        resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    except Exception as e:  # an interpolation that cannot resolve: the user's config, said plainly
        print(f"\ncoxlmm: error: the config does not resolve ({type(e).__name__}: {e})", file=sys.stderr)
        sys.exit(2)
    job = JobLog(cfg.logger, resolved)  # its process starts W&B while this one imports torch and the stages
    try:
        from coxlmm.config import device_of
        from coxlmm.pipeline import run
        from coxlmm.threads import loader_workers, size_job

        if not gc.get_freeze_count():  # the first job of this process: see `main`
            gc.freeze()
        budget = size_job(cfg.threads)
        on_accelerator = device_of(cfg.trainer.get("accelerator", "cpu")) != "cpu"
        cfg.extraction.num_workers = loader_workers(cfg.extraction.num_workers, budget, on_accelerator)
        log.info("data-loader workers of the model stages: %d", cfg.extraction.num_workers)
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


def quiet_lightning() -> None:
    """Lightning's info lines (devices, tips) stay out of the job's log; its warnings stay in. Lightning sets its
    loggers to INFO when it is imported, which a job whose stages are cached never does (it costs seconds), so
    the filter sits on the handlers Hydra configured, not on Lightning's loggers."""
    def keep(record: logging.LogRecord) -> bool:
        lightning = record.name.startswith(("lightning.pytorch", "lightning.fabric"))
        return record.levelno >= logging.WARNING or not lightning

    for handler in logging.getLogger().handlers:
        handler.addFilter(keep)


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
    # OpenMP threads that wait for work sleep instead of spinning (read once, when torch loads OpenMP: torch is
    # not imported yet). On a machine that other processes share, spinning threads fight them for the cores: a
    # Semi-NMF fit with 2 threads took 457 s beside other jobs, 23 s with passive waiting (threads.py).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # Lightning 2.6 on torch 2.13 warns about its own use of a deprecated pytree API on every predict.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    # The objects the imports made (torch's, Hydra's: millions) are never garbage: frozen once, after the imports
    # of the first job, the cycle collector stops walking them on every full collection; frozen again at the end,
    # the interpreter's exit skips its last full collection (0.7 s of a cached job, bench/cached_job.py).
    try:
        _app()
    finally:
        gc.freeze()


if __name__ == "__main__":
    main()
