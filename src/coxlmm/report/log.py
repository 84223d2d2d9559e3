"""Experiment loggers (W&B, CSV: report/loggers.py; or any Lightning logger) built from the `logger` config group.

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

import gc
import os
import queue
import signal
import subprocess
import sys
import threading
import traceback
import warnings
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from coxlmm.errors import CoxlmmError
from coxlmm.layer import Layer

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
                "logger config such as `{_target_: coxlmm.report.loggers.CSVLogger, save_dir: ...}`; "
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


def trainer_loggers(cfg_logger: Mapping[str, Any] | DictConfig | None) -> list["Logger"] | bool:
    """The loggers of `cfg.logger` as a Lightning Trainer takes them (coxlmm's own W&B and CSV loggers become
    Lightning's, same arguments), or False when there are none."""
    loggers = [lg.lightning() if hasattr(lg, "lightning") else lg for lg in build_loggers(cfg_logger)]
    return loggers or False


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
    """coxlmm's WandbLogger, Lightning's (`lightning` or `pytorch_lightning`), or a subclass (no wandb import)."""
    return any(c.__name__ == "WandbLogger" for c in type(logger).__mro__)


def concept_table(
    concept_set: "ConceptSet",
    dataset: Any = None,
    row_to_index: Sequence[int] | Mapping[int, int] | None = None,
    image: Callable[[Any], Any] = lambda im: im,
    run_dir: Path | None = None,
) -> tuple[list[str], list[list[Any]]]:
    """(columns, rows) of the concepts table: id, words, top sample ids, then one column per
    X_k,MAS image (None where a concept has fewer). A sample's image is the concept browser's thumbnail
    (`<run_dir>/thumbs/train_<index>.jpg`, passed to `image` as a path) when there is one, else drawn from
    `dataset` (`image(PIL)`); `image` wraps each, e.g. `wandb.Image`."""
    from coxlmm.report.browser.export import thumb_name

    cs = concept_set
    n_mas = max([len(r) for r in cs.top_indices] + [0]) if dataset is not None and row_to_index is not None else 0
    columns = ["concept", "words", "top_samples"] + [f"mas_{j + 1}" for j in range(n_mas)]
    rows = []
    for k in range(cs.n_concepts):
        row: list[Any] = [k, ", ".join(cs.words[k]), ", ".join(cs.top_samples[k])]
        for j in range(n_mas):
            cell = None
            if j < len(cs.top_indices[k]):
                index = int(row_to_index[cs.top_indices[k][j]])
                thumb = Path(run_dir) / thumb_name("train", index) if run_dir is not None else None
                if thumb is not None and thumb.is_file():
                    cell = image(str(thumb))
                elif (pil := dataset[index].image) is not None:
                    pil = pil.convert("RGB")
                    pil.thumbnail((TABLE_THUMB_PX, TABLE_THUMB_PX))
                    cell = image(pil)
            row.append(cell)
        rows.append(row)
    return columns, rows


@dataclass
class LayerRecord:
    """What the loggers log of one layer: plain values and the paths of the layer's files, which the pipeline
    wrote before logging (a `LayerResult` holds the dataset and tensors; this travels to the loggers' process)."""

    layer: Layer
    multi: bool  # one of several layers of the run: metrics on the `layer` axis, keys prefixed
    metrics: dict[str, float]
    concepts: tuple[list[str], list[list[Any]]]  # `concept_table` (images: thumbnail paths or PIL images), W&B's
    tables: dict[str, list[dict[str, Any]]]  # the layer's table artefacts (recovery, grounding points, ...)
    figures: dict[str, str]  # name -> PNG path
    report_html: str | None  # the concept browser's page, thumbnails inlined (`inline_report_html`), for W&B
    out_dir: str
    method: str
    token: str

    @property
    def prefix(self) -> str:
        return self.layer.prefix if self.multi else ""

    @classmethod
    def of(cls, res: Any, multi: bool, media: bool = True) -> "LayerRecord":
        """From the pipeline's `LayerResult`; `media`: with the concept table's images and the page (W&B's)."""
        concepts = concept_table(res.concepts, res.dataset if media else None,
                                 [r["index"] for r in res.train_records], run_dir=Path(res.out_dir))
        tables = {name: art for name, art in res.artifacts.items()
                  if isinstance(art, list) and art and isinstance(art[0], dict)}
        page = None
        if media and (Path(res.out_dir) / "report.html").is_file():  # inlined here (30 ms): the browser imports torch
            from coxlmm.report.browser import inline_report_html

            page = inline_report_html(Path(res.out_dir))
        return cls(res.layer, multi, {k: float(v) for k, v in res.metrics.items()},
                   concepts, tables, {k: str(v) for k, v in res.figures.items()}, page, str(res.out_dir),
                   str(res.concepts.method), str(res.concepts.token))


class Loggers:
    """The loggers of one job and what it logs to them: runs in the loggers' process (`JobLog`), or in the
    caller's. Every call on a logger is wrapped (`_safely`): a failing logger warns and is skipped."""

    def __init__(self) -> None:
        self.loggers: list["Logger"] = []
        self._layer_axis = False

    def open(self, nodes: Mapping[str, Any], resolved_cfg: dict[str, Any]) -> None:
        loggers = build_loggers(nodes)
        for logger in list(loggers):
            if not _safely(logger, "the config", lambda: logger.log_hyperparams(resolved_cfg)):
                loggers.remove(logger)
        self.loggers = loggers
        if any(_is_wandb_logger(lg) for lg in loggers):
            # W&B's Table imports pandas (0.3 s) to check its data's type: imported now, while the job computes,
            # not once the layer's tables arrive at the end of the job
            try:
                import pandas  # noqa: F401
            except ImportError:
                pass

    def _each(self, what: str, fn: Callable[["Logger"], Any], wandb_only: bool = False) -> None:
        for logger in self.loggers:
            if wandb_only and not _is_wandb_logger(logger):
                continue
            _safely(logger, what, lambda: fn(logger))

    def stages(self, flat: dict[str, float]) -> None:
        self._each("the model stages", lambda lg: lg.log_metrics(flat))

    def layer(self, rec: LayerRecord) -> None:
        if not self.loggers:
            return
        import wandb

        if rec.multi:
            def wandb_axis(lg) -> None:
                run = lg.experiment
                if not self._layer_axis:
                    run.define_metric("layer")
                    run.define_metric("by_layer/*", step_metric="layer")
                run.log({"layer": rec.layer.index, **{f"by_layer/{k}": v for k, v in rec.metrics.items()}})

            self._each("the layer's metrics", wandb_axis, wandb_only=True)
            self._layer_axis = True
            for lg in self.loggers:
                if not _is_wandb_logger(lg):
                    _safely(lg, "the layer's metrics", lambda: lg.log_metrics(dict(rec.metrics), step=rec.layer.index))
        else:
            self._each("metrics", lambda lg: lg.log_metrics(dict(rec.metrics)))

        def media(lg) -> None:
            run_dir = Path(lg.experiment.dir).parent
            with _artifact_staging_in(run_dir):
                columns, rows = rec.concepts
                images = [c.startswith("mas_") for c in columns]  # `concept_table`'s X_k,MAS columns
                lg.log_table(key=f"{rec.prefix}concepts", columns=columns,
                             data=[[wandb.Image(c) if is_image and c is not None else c
                                    for is_image, c in zip(images, row)] for row in rows])
                for name, art in rec.tables.items():
                    cols = list(dict.fromkeys(k for row in art for k in row))
                    lg.log_table(key=f"{rec.prefix}{name}", columns=cols,
                                 data=[[_cell(row.get(c)) for c in cols] for row in art])
                for name, path in rec.figures.items():
                    lg.log_image(key=f"{rec.prefix}{name}", images=[path])
                if rec.report_html is not None:  # the concept browser, assets inlined
                    lg.experiment.log({f"{rec.prefix}report": wandb.Html(rec.report_html, inject=False,
                                                                           data_is_not_path=True)})
                artifact = wandb.Artifact(f"dictionary-{lg.experiment.id}-{rec.layer.name}", type="dictionary",
                                          metadata={"method": rec.method, "layer": rec.layer.name, "token": rec.token})
                artifact.add_file(str(Path(rec.out_dir) / "dictionary.safetensors"))
                lg.experiment.log_artifact(artifact)

        self._each("the layer's tables, figures and dictionary", media, wandb_only=True)

    def summary(self, metrics: dict[str, float]) -> None:
        def summarise(lg) -> None:
            if _is_wandb_logger(lg):
                lg.experiment.summary.update(dict(metrics))
            else:
                lg.log_metrics({k: v for k, v in metrics.items() if "/" not in k})

        self._each("the summary", summarise)

    def finish(self, status: str, error: str | None) -> None:
        for logger in self.loggers:
            if _is_wandb_logger(logger):
                def mark(lg=logger) -> None:
                    lg.experiment.summary["coxlmm/status"] = status
                    if error:
                        lg.experiment.summary["coxlmm/error"] = error[:2000]

                _safely(logger, "the status", mark)
        finish(self.loggers, status)
        self.loggers = []


def serve(requests: Any, replies: Any) -> None:
    """The loggers' process (`python -m coxlmm.report.log <requests fd> <replies fd>`): run the `Loggers` calls
    read from the `requests` connection in order until `finish`, answering `flush` on `replies`. The first
    message is the job's `sys.path` (a logger's `_target_` imports as in the job). The job's end of the pipe
    closing (the job was killed) ends the runs as failed. Ctrl-C reaches the whole process group: this process
    ignores it, so that the job can close its runs as failed."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    loggers = Loggers()
    sys.path[:] = requests.recv()
    while True:
        try:
            name, args = requests.recv()
        except EOFError:
            loggers.finish("failed", "the job's process ended before it closed its loggers")
            return
        if name == "flush":
            replies.send(args)
            continue
        try:
            getattr(loggers, name)(*args)
        except Exception:  # noqa: BLE001 - a bug here must not stop the job: it is printed, the job goes on
            traceback.print_exc()
        if name == "finish":
            return


class _Process:
    """The loggers' process seen from the job: `send` queues a call (a thread writes it to the pipe, so a large
    one never blocks the job while the process is still starting W&B), `wait` ends it."""

    def __init__(self) -> None:
        req_r, req_w = os.pipe()
        rep_r, rep_w = os.pipe()
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", "coxlmm.report.log", str(req_r), str(rep_w)],
                                         pass_fds=(req_r, rep_w))
        finally:
            os.close(req_r)
            os.close(rep_w)
        self.requests, self.replies = Connection(req_w, readable=False), Connection(rep_r, writable=False)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._writer = threading.Thread(target=self._write, name="coxlmm-loggers-pipe", daemon=True)
        self._writer.start()
        self.send(list(sys.path))

    def _write(self) -> None:
        while (item := self._queue.get()) is not None:
            try:
                self.requests.send(item)
            except OSError:  # the process is gone: `wait` says so; the job goes on
                return

    def send(self, item: Any) -> None:
        self._queue.put(item)

    def flush(self, timeout_s: float = 5.0) -> None:
        token = repr(object())
        self.send(("flush", token))
        try:
            while self.proc.poll() is None:
                if self.replies.poll(timeout_s) and self.replies.recv() == token:
                    return
        except EOFError:  # the process is gone: `wait` says so
            return

    def wait(self) -> int:
        """Close the pipe once every call is written, wait for the process; its exit code."""
        self._queue.put(None)
        self._writer.join()
        self.requests.close()
        code = self.proc.wait()
        self.replies.close()
        return code


class JobLog:
    """One job's loggers, from its start to its end (see the module doc). Only global rank 0 logs.

    Off the job's critical path: the loggers live in a process of their own (`serve`), which builds them (W&B's
    run started) and runs every call in the order made while the job goes on; `finish` waits for all of it,
    then closes the runs as `success` or `failed`. In a process, not a thread: importing and running W&B takes
    seconds of Python, which a thread would take from the job under the GIL (1.5 s of a cached job,
    bench/cached_job.py). A plain subprocess, not `multiprocessing`: a launcher's worker (joblib's loky) may
    hold a start method a fresh interpreter does not know. The calls carry plain values and file paths
    (`LayerRecord`). A bad `logger` config still fails at once, here. `background=False`, or a process that
    cannot start, runs every call in the caller's thread (`loggers` then holds the loggers)."""

    def __init__(self, cfg_logger: Mapping[str, Any] | DictConfig | None, resolved_cfg: Mapping[str, Any],
                 background: bool = True):
        from coxlmm.process import global_rank

        nodes = resolve_logger_cfg(cfg_logger) if global_rank() == 0 else {}
        self._media = any(_is_wandb(node["_target_"]) for node in nodes.values())  # only W&B logs images, pages
        self._here = Loggers()
        self._process: _Process | None = None
        if background and nodes:
            try:
                self._process = _Process()
            except (OSError, ValueError) as e:  # ValueError: no pass_fds (Windows)
                warnings.warn(f"the loggers' process could not start ({type(e).__name__}: {e}); the job logs from "
                              "its own process.", RuntimeWarning, stacklevel=2)
        self._call("open", nodes, dict(resolved_cfg))

    @property
    def loggers(self) -> list["Logger"]:
        """The loggers built in this process ([] while they live in the loggers' process)."""
        return self._here.loggers

    def _call(self, name: str, *args: Any) -> None:
        """`Loggers.<name>(*args)` in the loggers' process (queued, in order), or here without one."""
        if self._process is None:
            getattr(self._here, name)(*args)
        else:
            self._process.send((name, args))

    def flush(self) -> None:
        """Wait until every call made so far has run (or the loggers' process has ended)."""
        if self._process is not None:
            self._process.flush()

    def log_stages(self, stages: Mapping[str, Mapping[str, Any]], seconds: float, model_loaded: bool) -> None:
        """The model stages: per feature-store entry its counts, time and throughput."""
        flat = {"stages/model_seconds": seconds, "stages/model_loaded": float(model_loaded)}
        for name, info in stages.items():
            for k, v in info.items():
                if isinstance(v, (int, float)):
                    flat[f"stages/{name}/{k}"] = v
            if info.get("seconds") and info.get("extracted"):
                flat[f"stages/{name}/samples_per_s"] = info["extracted"] / info["seconds"]
        self._call("stages", flat)

    def log_layer(self, res: Any, multi: bool) -> None:
        """A layer's metrics (on the `layer` axis when the run has several), tables, figures, dictionary."""
        if self._process is not None or self.loggers:
            self._call("layer", LayerRecord.of(res, multi, self._media))

    def log_summary(self, metrics: Mapping[str, float]) -> None:
        """The job's whole metrics.json, once, in the run summary (W&B) and the CSV."""
        self._call("summary", dict(metrics))

    def finish(self, status: str = "success", error: str | None = None) -> None:
        """Wait for the calls made so far, then close every logger; W&B runs end with exit code 0 (success) or 1,
        `coxlmm/status` and the error."""
        self._call("finish", status, error)
        if self._process is not None:
            code = self._process.wait()
            self._process = None
            if code:
                warnings.warn(f"the loggers' process ended with exit code {code}: the W&B run may be incomplete "
                              "(its error is above)", RuntimeWarning, stacklevel=2)


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
        run = logger.experiment if _is_wandb_logger(logger) else None  # opened by `log_hyperparams` (JobLog._open)
        if run is not None and hasattr(run, "finish"):
            _safely(logger, "finish", lambda: run.finish(exit_code=0 if status == "success" else 1))


if __name__ == "__main__":  # the loggers' process of a job (`JobLog`)
    serve(Connection(int(sys.argv[1]), writable=False), Connection(int(sys.argv[2]), readable=False))
    gc.freeze()  # the exit skips its last full collection of W&B's and pandas' objects (0.3 s the job waits for)
