"""A job's W&B and CSV loggers without Lightning: the `logger` group's defaults (conf/logger/*.yaml).

Lightning's `WandbLogger` and `CSVLogger` take 4 s to import (Lightning itself, torchmetrics, ...), a
quarter of a cached job (bench/cached_job.py); a job whose model stages are cached never needs Lightning
otherwise. These two keep the methods `report.log.JobLog` calls on a logger and the same constructor
arguments and files as Lightning's:

    WandbLogger   one W&B run (`wandb.init`, offline by default) under `<save_dir>/wandb/`
    CSVLogger     `<save_dir>/<name>/<version>/metrics.csv` (one row per `log_metrics`, a `step` column)
                  and `hparams.yaml` (the job's resolved config)

Any Lightning logger still works as a `_target_` (TensorBoardLogger, MLflowLogger, ...). The training apps
hand their loggers to a Lightning Trainer, which needs Lightning's own: `lightning()` gives the
Lightning logger built from the same arguments (`report.log.trainer_loggers`).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from coxlmm.io import atomic_write


class WandbLogger:
    """One W&B run per job, started on first use (`experiment`); the arguments are Lightning's `WandbLogger`'s:
    `save_dir` is W&B's `dir`, `offline=True` is `mode="offline"`, anything else goes to `wandb.init`."""

    def __init__(self, project: str = "coxlmm", name: str | None = None, save_dir: str | Path = ".",
                 offline: bool = False, group: str | None = None, tags: Sequence[str] = (), **init_kwargs: Any):
        self.kwargs = {"project": project, "name": name, "save_dir": str(save_dir), "offline": offline,
                       "group": group, "tags": list(tags), **init_kwargs}
        self._run = None

    @property
    def experiment(self):
        """The `wandb.Run` (started here the first time)."""
        if self._run is None:
            import wandb

            k = dict(self.kwargs)
            save_dir = Path(k.pop("save_dir"))
            save_dir.mkdir(parents=True, exist_ok=True)
            mode = "offline" if k.pop("offline") else k.pop("mode", None)
            self._run = wandb.init(dir=str(save_dir), mode=mode, **k)
        return self._run

    def log_hyperparams(self, params: Mapping[str, Any]) -> None:
        self.experiment.config.update(dict(params), allow_val_change=True)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        row = dict(metrics) if step is None else {**metrics, "trainer/global_step": step}
        self.experiment.log(row)

    def log_table(self, key: str, columns: Sequence[str], data: Sequence[Sequence[Any]]) -> None:
        import wandb

        self.experiment.log({key: wandb.Table(columns=list(columns), data=[list(r) for r in data])})

    def log_image(self, key: str, images: Sequence[Any]) -> None:
        import wandb

        self.experiment.log({key: [wandb.Image(im) for im in images]})

    def finalize(self, status: str) -> None:
        """Nothing to flush: `report.log.finish` ends the run with its exit code."""

    def lightning(self):
        """Lightning's `WandbLogger` with the same arguments (for a Trainer)."""
        from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger

        return LightningWandbLogger(**self.kwargs)


class CSVLogger:
    """metrics.csv (a row per `log_metrics` call, columns the union of their keys plus `step`) and
    hparams.yaml, in `<save_dir>/<name>/<version>/`; both rewritten whole on each call (a job logs a
    handful of rows), so a crashed job still leaves what it logged."""

    def __init__(self, save_dir: str | Path, name: str = "lightning_logs", version: int | str | None = ""):
        self.kwargs = {"save_dir": str(save_dir), "name": name, "version": version}
        self.log_dir = Path(save_dir) / (name or "") / ("" if version is None else str(version))
        self.rows: list[dict[str, Any]] = []

    def log_hyperparams(self, params: Mapping[str, Any]) -> None:
        from omegaconf import OmegaConf

        atomic_write(self.log_dir / "hparams.yaml", OmegaConf.to_yaml(OmegaConf.create(dict(params))))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.rows.append({**metrics, "step": len(self.rows) if step is None else step})
        self._save()

    def _save(self) -> None:
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=sorted({k for row in self.rows for k in row}))
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write(self.log_dir / "metrics.csv", text.getvalue())

    def finalize(self, status: str) -> None:
        """Every row is on disk already."""

    def lightning(self):
        """Lightning's `CSVLogger` with the same arguments (for a Trainer)."""
        from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger

        return LightningCSVLogger(**self.kwargs)
