"""Experiment loggers (Lightning's WandbLogger, CSVLogger, ...) built from the `logger` config group.

`cfg.logger` maps a name to a `_target_` config (conf/logger/*.yaml); `logger=none` is `{}`.
`JobLog` holds a job's loggers from its first second to its end: the CLI opens it with the composed
config before any stage runs, the pipeline logs the model stages (counts, throughput, whether the
model was loaded), each layer's metrics (a multi-layer run on a `layer` x-axis, so a layer ablation
is one chart), its tables (concepts with images, recovery, grounding points) and its dictionary (an
artifact), and the CLI closes it as `success` or `failed` (with the error). The pipeline writes the
run's files before it logs, and every logger call here is wrapped: a failing logger (W&B down, disk
quota on its cache, a bad value) warns and is skipped, so logging never loses or breaks a run.

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


class JobLog:
    """One job's loggers, from its start to its end (see the module doc). Only global rank 0 logs."""

    def __init__(self, cfg_logger: Mapping[str, Any] | DictConfig | None, resolved_cfg: Mapping[str, Any]):
        from lightning.fabric.utilities.rank_zero import rank_zero_only

        self.loggers = build_loggers(cfg_logger) if rank_zero_only.rank == 0 else []
        self._layer_axis = False
        for logger in list(self.loggers):
            if not _safely(logger, "the config", lambda: logger.log_hyperparams(dict(resolved_cfg))):
                self.loggers.remove(logger)

    def _each(self, what: str, fn: Callable[["Logger"], Any], wandb_only: bool = False) -> None:
        for logger in self.loggers:
            if wandb_only and not _is_wandb_logger(logger):
                continue
            _safely(logger, what, lambda: fn(logger))

    def log_stages(self, stages: Mapping[str, Mapping[str, Any]], seconds: float, model_loaded: bool) -> None:
        """The model stages: per feature-store entry its counts, time and throughput."""
        flat = {"stages/model_seconds": seconds, "stages/model_loaded": float(model_loaded)}
        for name, info in stages.items():
            for k, v in info.items():
                if isinstance(v, (int, float)):
                    flat[f"stages/{name}/{k}"] = v
            if info.get("seconds") and info.get("extracted"):
                flat[f"stages/{name}/samples_per_s"] = info["extracted"] / info["seconds"]
        self._each("the model stages", lambda lg: lg.log_metrics(flat))

    def log_layer(self, res: Any, multi: bool) -> None:
        """A layer's metrics (on the `layer` axis when the run has several), tables, figures, dictionary."""
        import wandb

        prefix = f"layer_{res.name}/" if multi else ""
        if multi:
            def wandb_axis(lg) -> None:
                run = lg.experiment
                if not self._layer_axis:
                    run.define_metric("layer")
                    run.define_metric("by_layer/*", step_metric="layer")
                run.log({"layer": res.layer, **{f"by_layer/{k}": v for k, v in res.metrics.items()}})

            self._each("the layer's metrics", wandb_axis, wandb_only=True)
            self._layer_axis = True
            for lg in self.loggers:
                if not _is_wandb_logger(lg):
                    _safely(lg, "the layer's metrics", lambda: lg.log_metrics(dict(res.metrics), step=res.layer))
        else:
            self._each("metrics", lambda lg: lg.log_metrics(dict(res.metrics)))

        def media(lg) -> None:
            run_dir = Path(lg.experiment.dir).parent
            with _artifact_staging_in(run_dir):
                columns, data = concept_table(res.concepts, res.dataset, [r["index"] for r in res.train_records],
                                              image=wandb.Image)
                lg.log_table(key=f"{prefix}concepts", columns=columns, data=data)
                for name, art in res.artifacts.items():
                    if isinstance(art, list) and art and isinstance(art[0], dict):
                        cols = list(dict.fromkeys(k for row in art for k in row))
                        lg.log_table(key=f"{prefix}{name}", columns=cols,
                                     data=[[_cell(row.get(c)) for c in cols] for row in art])
                for name, path in res.figures.items():
                    lg.log_image(key=f"{prefix}{name}", images=[str(path)])
                if (res.out_dir / "report.html").is_file():  # the concept browser, assets inlined
                    from coxlmm.report.browser import inline_report_html

                    lg.experiment.log({f"{prefix}report": wandb.Html(inline_report_html(res.out_dir), inject=False,
                                                                       data_is_not_path=True)})
                artifact = wandb.Artifact(f"dictionary-{lg.experiment.id}-{res.name}", type="dictionary",
                                          metadata={"method": res.concepts.method, "layer": res.name,
                                                    "token": res.concepts.token})
                artifact.add_file(str(res.out_dir / "dictionary.safetensors"))
                lg.experiment.log_artifact(artifact)

        self._each("the layer's tables, figures and dictionary", media, wandb_only=True)

    def log_summary(self, metrics: Mapping[str, float]) -> None:
        """The job's whole metrics.json, once, in the run summary (W&B) and the CSV."""
        def summarise(lg) -> None:
            if _is_wandb_logger(lg):
                lg.experiment.summary.update(dict(metrics))
            else:
                lg.log_metrics({k: v for k, v in metrics.items() if "/" not in k})

        self._each("the summary", summarise)

    def finish(self, status: str = "success", error: str | None = None) -> None:
        """Close every logger; W&B runs end with exit code 0 (success) or 1, `coxlmm/status` and the error."""
        for logger in self.loggers:
            if _is_wandb_logger(logger):
                def mark(lg=logger) -> None:
                    lg.experiment.summary["coxlmm/status"] = status
                    if error:
                        lg.experiment.summary["coxlmm/error"] = error[:2000]

                _safely(logger, "the status", mark)
        finish(self.loggers, status)
        self.loggers = []


def _cell(x: Any) -> Any:
    """A W&B table cell: lists as text, numbers and strings as they are."""
    return ", ".join(map(str, x)) if isinstance(x, (list, tuple)) else x


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


def finish(loggers: Sequence["Logger"], status: str = "success") -> None:
    """Finalize every logger and close W&B runs (the next Hydra job in this process starts a new one)."""
    for logger in loggers:
        _safely(logger, "finalize", lambda: logger.finalize(status))
        run = getattr(logger, "_experiment", None) if _is_wandb_logger(logger) else None
        if run is not None and hasattr(run, "finish"):
            _safely(logger, "finish", lambda: run.finish(exit_code=0 if status == "success" else 1))


# --- reading an offline W&B run (tests, debugging) ---------------------------------------------------
def read_offline_run(run_file: str | Path) -> list[Any]:
    """The records of an offline W&B run file (`wandb/offline-run-*/run-*.wandb`) as protobuf `Record`s.

    The file is W&B's record log: a 7-byte header, then LevelDB-log blocks of 32 KiB whose chunks
    (7-byte header: crc, length, type FULL/FIRST/MIDDLE/LAST) carry serialized records."""
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(run_file).read_bytes()
    block, pos, buf, out = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer: padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0 and length == 0:
            continue
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            out.append(rec)
            buf = b""
    return out


def offline_run(run_dir: str | Path, timeout_s: float = 30.0) -> dict[str, Any]:
    """{"config", "summary", "exit_code", "history"} of the one offline W&B run under `run_dir`/wandb,
    waiting (up to `timeout_s`) for its exit record: W&B's service may still be writing the file
    when `finish` returns. The config comes from the run record and every config update."""
    import json
    import time

    (run_file,) = Path(run_dir).glob("wandb/offline-run-*/run-*.wandb")
    deadline = time.monotonic() + timeout_s
    while True:
        records = read_offline_run(run_file)
        exits = [r.exit.exit_code for r in records if r.WhichOneof("record_type") == "exit"]
        if exits or time.monotonic() > deadline:
            break
        time.sleep(0.2)

    def items(updates) -> dict[str, Any]:
        return {(u.key or "/".join(u.nested_key)): json.loads(u.value_json) for u in updates}

    config: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    history: list[dict[str, Any]] = []
    for r in records:
        kind = r.WhichOneof("record_type")
        if kind == "run":
            config |= items(r.run.config.update)
        elif kind == "config":
            config |= items(r.config.update)
        elif kind == "summary":
            summary |= items(r.summary.update)
        elif kind == "history":
            history.append(items(r.history.item))
    return {"config": config, "summary": summary, "exit_code": exits[0] if exits else None, "history": history}
