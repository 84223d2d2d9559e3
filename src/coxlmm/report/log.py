"""Experiment loggers (Lightning's WandbLogger, CSVLogger, ...) built from the `logger` config group.

`cfg.logger` maps a name to a `_target_` config (conf/logger/*.yaml); `logger=none` is `{}`.
The pipeline writes the run's files first and logs afterwards, and every logger call here is
wrapped: a failing logger (W&B down, disk quota on its cache, a bad value) warns and is skipped
for the rest of the call, so logging never loses or breaks a run.

W&B specifics (filled in when the config leaves them empty):
    group  the multirun sweep dir in `-m` runs (all jobs of one sweep in one group), None otherwise
    name   the job's override dirname, or the run dir's name when there are no overrides
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from coxlmm.errors import CoxlmmError

if TYPE_CHECKING:
    from lightning.pytorch.loggers import Logger

    from coxlmm.grounding.concept_set import ConceptSet

TABLE_THUMB_PX = 128  # concept-table images: small, the full figure is logged too


# --- building ---------------------------------------------------------------------------------------

def sweep_group() -> str | None:
    """The sweep dir of the current Hydra multirun job (relative to the launch dir when inside it),
    or None in a single run or outside Hydra."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return None
    sweep = Path(str(hc.sweep.dir))
    cwd = Path(str(hc.runtime.cwd))
    if sweep.is_absolute() and sweep.is_relative_to(cwd):
        sweep = sweep.relative_to(cwd)
    return str(sweep)


def _is_wandb(target: str) -> bool:
    return target.rsplit(".", 1)[-1] == "WandbLogger"


def _fill_wandb_defaults(node: dict[str, Any]) -> dict[str, Any]:
    node = dict(node)
    if node.get("group") is None:
        node["group"] = sweep_group()
    if not node.get("name"):
        save_dir = node.get("save_dir")
        node["name"] = Path(str(save_dir)).resolve().name if save_dir else None
    return node


def resolve_logger_cfg(cfg_logger: Mapping[str, Any] | DictConfig | None) -> dict[str, dict[str, Any]]:
    """`cfg.logger` as plain dicts, interpolations resolved, W&B group/name filled in; loggers
    switched off (`logger.wandb=null`) left out. A config without `_target_` is a CoxlmmError."""
    if not cfg_logger:
        return {}
    if isinstance(cfg_logger, DictConfig):
        cfg_logger = OmegaConf.to_container(cfg_logger, resolve=True)
    out = {}
    for name, node in cfg_logger.items():
        if not node:
            continue
        if not isinstance(node, Mapping) or "_target_" not in node:
            raise CoxlmmError(
                f"logger {name!r} has no `_target_` (got {node!r}): each entry of `logger` must be a "
                "logger config such as `{_target_: lightning.pytorch.loggers.CSVLogger, save_dir: ...}`; "
                "see conf/logger/*.yaml, or use `logger=none`."
            )
        out[name] = _fill_wandb_defaults(node) if _is_wandb(node["_target_"]) else dict(node)
    return out


def build_loggers(cfg_logger: Mapping[str, Any] | DictConfig | None) -> list["Logger"]:
    """Instantiate every logger of `cfg.logger` ({name: {_target_: ..., ...}}); `{}` / None -> [].

    A logger that fails to build (e.g. wandb not installed) warns and is left out.
    """
    from hydra.utils import instantiate

    loggers = []
    for name, node in resolve_logger_cfg(cfg_logger).items():
        try:
            loggers.append(instantiate(node))
        except Exception as e:  # noqa: BLE001 - a logger must never stop the run
            warnings.warn(f"logger {name!r} ({node['_target_']}) could not be built and is skipped: "
                          f"{type(e).__name__}: {e}", RuntimeWarning, stacklevel=2)
    return loggers


# --- logging ----------------------------------------------------------------------------------------

def _safely(logger: "Logger", what: str, fn: Callable[[], Any]) -> bool:
    """Run one logger call; on any error warn and return False (the caller skips this logger)."""
    try:
        fn()
        return True
    except Exception as e:  # noqa: BLE001
        warnings.warn(f"{type(logger).__name__} failed to log {what} ({type(e).__name__}: {e}); it is "
                      "skipped for the rest of this step. The run's files on disk are unaffected.",
                      RuntimeWarning, stacklevel=3)
        return False


def _is_wandb_logger(logger: "Logger") -> bool:
    """WandbLogger of `lightning` or `pytorch_lightning`, or a subclass (no wandb import needed)."""
    return any(c.__name__ == "WandbLogger" for c in type(logger).__mro__)


def concept_table(
    concept_set: "ConceptSet",
    dataset: Any = None,
    row_to_index: Sequence[int] | Mapping[int, int] | None = None,
    image: Callable[[Any], Any] = lambda im: im,
) -> tuple[list[str], list[list[Any]]]:
    """(columns, rows) of the concepts table: id, words, top sample ids, then one column per
    X_k,MAS image (`image(PIL)` wraps each, e.g. `wandb.Image`; None where a concept has fewer)."""
    cs = concept_set
    n_mas = max([len(r) for r in cs.top_indices] + [0]) if dataset is not None and row_to_index is not None else 0
    columns = ["concept", "words", "top_samples"] + [f"mas_{j + 1}" for j in range(n_mas)]
    rows = []
    for k in range(cs.n_concepts):
        row: list[Any] = [k, ", ".join(cs.words[k]), ", ".join(cs.top_samples[k])]
        for j in range(n_mas):
            cell = None
            if j < len(cs.top_indices[k]):
                pil = dataset[int(row_to_index[cs.top_indices[k][j]])].image
                if pil is not None:
                    pil = pil.convert("RGB")
                    pil.thumbnail((TABLE_THUMB_PX, TABLE_THUMB_PX))
                    cell = image(pil)
            row.append(cell)
        rows.append(row)
    return columns, rows


def log_run(
    loggers: Sequence["Logger"],
    metrics: Mapping[str, float],
    concept_set: "ConceptSet | None",
    images: Mapping[str, str | Path],
    resolved_cfg: Mapping[str, Any],
    *,
    dataset: Any = None,
    row_to_index: Sequence[int] | Mapping[int, int] | None = None,
    step: int | None = None,
) -> None:
    """Send one run's results to every logger; failures warn and never raise.

    metrics:      flat {name: float} (as in metrics.json)
    concept_set:  logged to W&B as the table `concepts/layer_<L>` (words, sample ids, and X_k,MAS
                  images when `dataset` and `row_to_index` — Z_train row -> dataset index — are given)
    images:       {name: PNG path}, logged to loggers that take images (W&B)
    resolved_cfg: the resolved config, attached with `log_hyperparams`
    """
    for logger in loggers:
        ok = _safely(logger, "the config", lambda: logger.log_hyperparams(dict(resolved_cfg)))
        ok = ok and _safely(logger, "metrics", lambda: logger.log_metrics(dict(metrics), step))
        if ok and _is_wandb_logger(logger):
            ok = _log_wandb_media(logger, concept_set, images, dataset, row_to_index, step)
        if ok:
            _safely(logger, "its files (save)", logger.save)


@contextmanager
def _artifact_staging_in(run_dir: str | Path):
    """W&B logs a table holding images as an artifact whose files it first copies to a staging
    area, by default under ~/.local/share/wandb, outside the run dir, where an offline run's
    `wandb sync` later reads them. Stage them inside the W&B run dir instead, so that a run dir is
    self-contained (cluster scratch, copied results). Only WANDB_DATA_DIR sets that place; it is
    set for this call only, and a user's own WANDB_DATA_DIR is respected."""
    if "WANDB_DATA_DIR" in os.environ:
        yield
        return
    os.environ["WANDB_DATA_DIR"] = str(run_dir)
    try:
        yield
    finally:
        os.environ.pop("WANDB_DATA_DIR", None)


def _log_wandb_media(logger, concept_set, images, dataset, row_to_index, step) -> bool:
    import wandb

    if concept_set is not None:
        def table() -> None:
            columns, rows = concept_table(concept_set, dataset, row_to_index, image=wandb.Image)
            with _artifact_staging_in(Path(logger.experiment.dir).parent):
                logger.log_table(key=f"concepts/layer_{concept_set.layer}", columns=columns, data=rows,
                                 step=step)

        if not _safely(logger, "the concepts table", table):
            return False
    for name, path in images.items():
        if not _safely(logger, f"image {name!r}", lambda: logger.log_image(key=name, images=[str(path)], step=step)):
            return False
    return True


def finish(loggers: Sequence["Logger"], status: str = "success") -> None:
    """Finalize every logger and close W&B runs (the next Hydra job in this process starts a new one)."""
    for logger in loggers:
        _safely(logger, "finalize", lambda: logger.finalize(status))
        run = getattr(logger, "_experiment", None) if _is_wandb_logger(logger) else None
        if run is not None and hasattr(run, "finish"):
            _safely(logger, "finish", lambda: run.finish(exit_code=0 if status == "success" else 1))
