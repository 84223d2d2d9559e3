"""The stages in order: data -> model -> extraction (cached) -> dictionary -> grounding -> metrics
-> files, figures and loggers. Each stage's output that is expensive to make (the features) is
cached and shared by every run that needs the same one.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from coxlmm.errors import CoxlmmError
from coxlmm.extraction import ExtractionSettings, extract

log = logging.getLogger(__name__)


def _settings(cfg: DictConfig, split: str) -> ExtractionSettings:
    e = cfg.extraction
    return ExtractionSettings(batch_size=e.batch_size, max_new_tokens=e.max_new_tokens, layers=e.layers,
                              store_dtype=e.store_dtype, require_gt=e.require_gt, num_workers=e.num_workers,
                              max_samples=e.max_samples_train if split == "train" else e.max_samples_test)


def _trainer_kwargs(cfg: DictConfig) -> dict[str, Any]:
    return dict(OmegaConf.to_container(cfg.trainer, resolve=True))


def _instantiate(node, **kwargs):
    """`hydra.utils.instantiate`, re-raising our own user-facing errors unwrapped."""
    try:
        return instantiate(node, **kwargs)
    except Exception as e:
        cause = e
        while cause is not None and not isinstance(cause, CoxlmmError):
            cause = cause.__cause__
        raise (cause or e)


def extract_features(cfg: DictConfig, lmm):
    """Train (required) and test (optional) feature stores; None on non-zero DDP ranks.

    Every rank runs both extractions (each is a collective `Trainer.predict`); only rank 0 goes on.
    """
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    root = str(Path(cfg.paths.cache_dir) / "features")
    train_ds = _instantiate(cfg.data, split=cfg.train_split)
    store_train = extract(lmm, train_ds, cfg.token, list(cfg.layers), _settings(cfg, "train"), root, _trainer_kwargs(cfg))
    test_ds, store_test = None, None
    if cfg.test_split:
        test_ds = _instantiate(cfg.data, split=cfg.test_split)
        try:
            store_test = extract(lmm, test_ds, cfg.token, list(cfg.layers), _settings(cfg, "test"), root,
                                 _trainer_kwargs(cfg))
        except CoxlmmError as e:
            log.warning("no test features (%s); test metrics are skipped", e)
    if store_train is None or rank_zero_only.rank != 0:  # ranks > 0 of a DDP launch stop here
        return None
    return train_ds, store_train, test_ds, store_test


@dataclass
class Features:
    """One split's selected samples: Z per requested layer (M, B) and the store's records, read once."""

    dataset: Any
    Z: dict[int, torch.Tensor]
    records: list[dict[str, Any]]  # row i of every Z[l] <-> records[i] (index, id, caption, ...)

    @classmethod
    def read(cls, dataset, store, layers: list[int]) -> "Features":
        Z, records = store.load(layers)
        return cls(dataset, {l: z.float() for l, z in Z.items()}, records)

    @property
    def indices(self) -> list[int]:
        return [r["index"] for r in self.records]


@dataclass
class LayerResult:
    layer: int
    out_dir: Path
    concepts: Any  # ConceptSet
    metrics: dict[str, float]
    figures: dict[str, str]  # name -> PNG path
    train_indices: list[int]  # dataset index of each row of Z_train


def analyse_layer(cfg: DictConfig, lmm, layer: int, train: Features, test: Features | None, out_dir: Path,
                  scorer=None) -> LayerResult:
    """Decompose Z at one layer, ground the concepts, interpret test samples, evaluate, write files."""
    from coxlmm.concepts.io import save_dictionary
    from coxlmm.grounding.concept_set import ConceptSet
    from coxlmm.grounding.text import concept_words
    from coxlmm.grounding.visual import top_samples
    from coxlmm.metrics.base import EvalContext

    out_dir.mkdir(parents=True, exist_ok=True)
    Z_train, train_recs = train.Z[layer], train.records
    Z_test, test_recs, V_test = (test.Z[layer], test.records, None) if test is not None else (None, [], None)

    make = _instantiate(cfg.method)  # `_partial_: true` in every conf/method file: a callable

    def make_dictionary(seed: int):
        return make(seed=seed)  # a fresh, unfitted Dictionary

    dictionary = make_dictionary(cfg.seed).fit(Z_train)
    V_train = dictionary.V_train
    if Z_test is not None:
        V_test = dictionary.encode(Z_test)

    g = cfg.grounding
    words = concept_words(lmm, dictionary.U, lmm.tokenizer, n_top=g.n_top, n_words=g.n_words)
    top_rows = top_samples(V_train, g.n_mas)
    concepts = ConceptSet(U=dictionary.U, V=V_train, words=words,
                          top_samples=[[train_recs[i]["id"] for i in rows] for rows in top_rows],
                          top_indices=top_rows, method=dictionary.name, layer=layer, token=cfg.token,
                          extra={"n_top": g.n_top, "n_words": g.n_words, "n_mas": g.n_mas})

    ctx = EvalContext(
        dictionary=dictionary, concepts=concepts, Z_train=Z_train, V_train=V_train, Z_test=Z_test, V_test=V_test,
        train_records=[train.dataset.records[i] for i in train.indices],
        test_records=[test.dataset.records[i] for i in test.indices] if test is not None else [],
        train_dataset=train.dataset, test_dataset=test.dataset if test is not None else None,
        train_indices=train.indices, test_indices=test.indices if test is not None else [],
        lmm=lmm, scorer=scorer, make_dictionary=make_dictionary, token=cfg.token, layer=layer, seed=cfg.seed,
    )
    metrics: dict[str, float] = {}
    for name, node in (cfg.metrics or {}).items():
        metric = _instantiate(node)
        log.info("metric %s", name)
        metrics.update(metric(ctx))

    # Files first (a logger failure must never lose them), then figures, then loggers.
    (out_dir / "concepts.json").write_text(json.dumps(concepts.to_json(), indent=1))
    save_dictionary(dictionary, out_dir / "dictionary.safetensors")  # concepts.io.load_dictionary reads it back
    figures = _figures(cfg, concepts, train.dataset, ctx, out_dir)
    return LayerResult(layer, out_dir, concepts, metrics, figures, ctx.train_indices)


def _figures(cfg, concepts, train_ds, ctx, out_dir: Path) -> dict[str, str]:
    if not cfg.figures:
        return {}
    from coxlmm.report.figures import concept_grid, local_interpretation

    paths = {"concept_grid": str(out_dir / "concept_grid.png")}
    concept_grid(concepts, train_ds, ctx.train_indices, paths["concept_grid"])
    if ctx.Z_test is not None and len(ctx.test_indices):
        paths["local_interpretation"] = str(out_dir / "local_interpretation.png")
        local_interpretation(ctx.dictionary, concepts, ctx.Z_test[: cfg.grounding.n_local], ctx.test_dataset,
                             ctx.test_indices[: cfg.grounding.n_local], train_ds, ctx.train_indices,
                             paths["local_interpretation"])
    for name, fig in ctx.artifacts.items():
        if hasattr(fig, "savefig"):
            paths[name] = str(out_dir / f"{name}.png")
            fig.savefig(paths[name], dpi=110, bbox_inches="tight")
        elif isinstance(fig, (list, dict)):
            (out_dir / f"{name}.json").write_text(json.dumps(fig, indent=1, default=float))
    return paths


def run(cfg: DictConfig) -> dict[str, float]:
    """Run one experiment; returns the flat metrics also written to `metrics.json`."""
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    lmm = _instantiate(cfg.model)
    layers = [lmm.resolve_layer(l) for l in cfg.layers]
    stores = extract_features(cfg, lmm)
    if stores is None:  # a non-zero rank of a multi-device extraction: rank 0 does the rest
        return {}
    train_ds, store_train, test_ds, store_test = stores
    train = Features.read(train_ds, store_train, layers)
    test = Features.read(test_ds, store_test, layers) if store_test is not None else None
    scorer = _instantiate(cfg.scorer) if cfg.scorer else None

    metrics: dict[str, float] = {}
    results: list[LayerResult] = []
    for layer in layers:
        sub = out_dir if len(layers) == 1 else out_dir / f"layer_{layer}"
        res = analyse_layer(cfg, lmm, layer, train, test, sub, scorer)
        prefix = "" if len(layers) == 1 else f"layer_{layer}/"
        metrics.update({prefix + k: v for k, v in res.metrics.items()})
        results.append(res)
    metrics["n_train"] = len(train.records)
    metrics["n_test"] = len(test.records) if test is not None else 0
    metrics = {k: float(v) for k, v in metrics.items() if _is_number(v)}
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))

    _log(cfg, metrics, results, train_ds)
    if cfg.print_summary:
        print(summary(out_dir, results, metrics))
    return metrics


def _is_number(v) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def _log(cfg: DictConfig, metrics: dict[str, float], results: list[LayerResult], train_ds) -> None:
    """Send everything to the configured loggers; a logger failure only warns (files are written)."""
    from coxlmm.report.log import build_loggers, finish, log_run

    loggers = build_loggers(cfg.logger)
    if not loggers:
        return
    resolved = OmegaConf.to_container(cfg, resolve=True)
    for res in results:
        prefix = "" if len(results) == 1 else f"layer_{res.layer}/"
        log_run(loggers, {k: v for k, v in metrics.items() if k.startswith(prefix) or "/" not in k},
                res.concepts, {prefix + k: v for k, v in res.figures.items()}, resolved,
                dataset=train_ds, row_to_index=res.train_indices)
    finish(loggers)


def summary(out_dir: Path, results: list[LayerResult], metrics: dict[str, float]) -> str:
    """A short human summary: where the outputs are and the top words of each concept."""
    lines = [f"\ncoxlmm: outputs in {out_dir}"]
    for res in results:
        c = res.concepts
        lines.append(f"  {c.method}, token {c.token!r}, layer {res.layer}: {c.n_concepts} concepts "
                     f"from {int(metrics.get('n_train', 0))} training samples")
        for k in range(c.n_concepts):
            lines.append(f"    {k:>2}: {', '.join(c.words[k][:6]) or '(no words)'}")
    keys = [k for k in ("overlap", "recon_rel_error_train", "recon_rel_error_test", "cs_top1_mean",
                        "bs_top1_mean", "recovery_matched") if k in metrics]
    if keys:
        lines.append("  " + "  ".join(f"{k}={metrics[k]:.3f}" for k in keys))
    return "\n".join(lines)
