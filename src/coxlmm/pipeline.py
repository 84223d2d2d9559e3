"""The stages in order: data -> model -> extraction (cached) -> dictionary -> grounding -> metrics
-> files, figures and loggers. Each stage's output that is expensive to make (the features) is
cached and shared by every run that needs the same one.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import save_file

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
    """Train (required) and test (optional) feature stores; None on non-zero DDP ranks."""
    root = str(Path(cfg.paths.cache_dir) / "features")
    train_ds = _instantiate(cfg.data, split=cfg.train_split)
    store_train = extract(lmm, train_ds, cfg.token, list(cfg.layers), _settings(cfg, "train"), root, _trainer_kwargs(cfg))
    if store_train is None:
        return None
    test_ds, store_test = None, None
    if cfg.test_split:
        test_ds = _instantiate(cfg.data, split=cfg.test_split)
        try:
            store_test = extract(lmm, test_ds, cfg.token, list(cfg.layers), _settings(cfg, "test"), root,
                                 _trainer_kwargs(cfg))
        except CoxlmmError as e:
            log.warning("no test features (%s); test metrics are skipped", e)
    return train_ds, store_train, test_ds, store_test


def run(cfg: DictConfig) -> dict[str, float]:
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    lmm = _instantiate(cfg.model)
    layers = [lmm.resolve_layer(l) for l in cfg.layers]
    stores = extract_features(cfg, lmm)
    if stores is None:  # a non-zero rank of a multi-device extraction: rank 0 does the rest
        return {}
    train_ds, store_train, test_ds, store_test = stores

    from coxlmm.stages import analyse_layer, write_summary

    metrics: dict[str, float] = {}
    results = []
    for layer in layers:
        sub = out_dir if len(layers) == 1 else out_dir / f"layer_{layer}"
        res = analyse_layer(cfg, lmm, layer, train_ds, store_train, test_ds, store_test, sub)
        prefix = "" if len(layers) == 1 else f"layer_{layer}/"
        metrics.update({prefix + k: v for k, v in res.metrics.items()})
        results.append(res)
    counts_train = store_train.manifest()["counts"]
    metrics["n_train"] = float(counts_train.get("selected", 0))
    metrics["n_test"] = float(store_test.manifest()["counts"].get("selected", 0)) if store_test else 0.0
    metrics = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))
    write_summary(cfg, out_dir, results, metrics, store_train, store_test)
    return metrics
