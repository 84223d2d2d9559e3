"""Extraction stage: selected samples -> Z per layer in a feature store (see `extract`)."""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from coxlmm.errors import CoxlmmError
from coxlmm.extraction.matching import validate_token
from coxlmm.extraction.store import FeatureStore

log = logging.getLogger(__name__)

__all__ = ["ExtractionSettings", "extract", "FeatureStore"]


@dataclass
class ExtractionSettings:
    batch_size: int = 8
    max_new_tokens: int = 50
    layers: str = "all"  # "all": every block (one extraction serves any layer) | "requested"
    store_dtype: str = "float32"
    require_gt: bool = True  # paper: the token must also be in a ground-truth caption
    max_samples: int | None = None  # cap on candidate samples (after the ground-truth filter)
    num_workers: int = 0


def store_fields(lmm, dataset, token: str, stored_layers: list[int], s: ExtractionSettings) -> dict[str, Any]:
    """Everything that changes the features (batch size and workers do not)."""
    return {
        "model": lmm.fingerprint(),
        "data": dataset.fingerprint(),
        "token": token,
        "generation": {"decoding": "greedy", "max_new_tokens": s.max_new_tokens},
        "layers": stored_layers,
        "store_dtype": s.store_dtype,
        "require_gt": s.require_gt,
        "max_samples": s.max_samples,
    }


def extract(lmm, dataset, token: str, requested_layers: list[int], settings: ExtractionSettings,
            store_root: str, trainer_kwargs: dict[str, Any] | None = None) -> FeatureStore | None:
    """Fill (or reuse) the feature store for (lmm, dataset, token). Returns None on non-zero DDP ranks."""
    import lightning as L

    from coxlmm.extraction.lightning import ExtractionDataModule, ExtractionModule, ShardWriter

    token = validate_token(lmm.tokenizer, token)
    layers = [lmm.resolve_layer(l) for l in requested_layers]
    stored = list(range(lmm.num_layers)) if settings.layers == "all" else sorted(set(layers))
    store = FeatureStore(store_root, store_fields(lmm, dataset, token, stored, settings))
    if store.complete:
        log.info("features cached: %s", store.dir)
        return store

    candidates = dataset.indices_with_word(token) if settings.require_gt else list(range(len(dataset)))
    if not candidates:
        raise CoxlmmError(
            f"no sample of {dataset.name} ({len(dataset)} samples) has a ground-truth caption containing "
            f"the word {token!r}: pick a token that the captions use, or set extraction.require_gt=false."
        )
    if settings.max_samples is not None:
        candidates = candidates[: settings.max_samples]
    done = store.done_indices()
    todo = [i for i in candidates if i not in done]
    if done:
        log.info("resuming extraction in %s: %d of %d samples already done", store.dir, len(done), len(candidates))

    t0 = time.perf_counter()
    if todo:
        trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_model_summary=False,
                            callbacks=[ShardWriter(store)], **(trainer_kwargs or {}))
        module = ExtractionModule(lmm, token, stored, settings.max_new_tokens, settings.store_dtype, settings.require_gt)
        dm = ExtractionDataModule(dataset, todo, settings.batch_size, settings.num_workers)
        trainer.predict(module, datamodule=dm, return_predictions=False)
        trainer.strategy.barrier()
        if trainer.global_rank != 0:
            return None
    seconds = time.perf_counter() - t0
    manifest = store.finalize({"seconds": seconds, "n_candidates": len(candidates),
                               "n_dataset": len(dataset)})
    counts = manifest["counts"]
    log.info(
        "extraction %s: %d samples in dataset, %d with %r in a ground-truth caption, %d captioned, "
        "%d selected, %d without the token in the caption, %d unreadable images; %.1f s, %.2f samples/s",
        dataset.name, len(dataset), len(candidates), token, counts["seen"], counts.get("selected", 0),
        counts.get("token_not_generated", 0), counts.get("unreadable_image", 0), seconds,
        len(todo) / max(seconds, 1e-9),
    )
    if counts.get("selected", 0) == 0:
        store_records = store.shard_records()
        words = Counter(w for r in store_records if r["caption"] for w in re.findall(r"[a-z]+", r["caption"].lower()))
        top = ", ".join(f"{w} ({n})" for w, n in words.most_common(15)) or "none"
        (store.dir / "manifest.json").unlink()  # an empty result is not a usable cache entry
        raise CoxlmmError(
            f"no sample selected for token {token!r}: {counts['seen']} captions were generated and none "
            f"contains {token!r} as a word. Most frequent words in the generated captions: {top}. "
            "Pick a token that the model generates."
        )
    return store
