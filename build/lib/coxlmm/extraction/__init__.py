"""The model stages: each fills (or finds) a feature-store entry, running the LMM only when it must.

    extract(model, dataset, token, ...)       selected samples of a split -> Z per layer
    extract_noise(model, parent, dataset, ...) the position-matched noise source of a split
    ensure_readout(model, root)              final norm + W_U + tokenizer of the model, once per model

`model` is a `ModelSpec` (built from the config: the model is loaded only if an entry must be filled)
or an LMM. Every entry is filled under its lock (`FeatureStore.lock`): of several jobs that need the
same entry, one runs the model and the others wait and read it. Each stage is a Lightning
`Trainer.predict` on the `trainer` config's devices (extraction/lightning.py).
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coxlmm.errors import CoxlmmError
from coxlmm.extraction.matching import validate_token
from coxlmm.extraction.store import STORE_VERSION, FeatureStore, entry_lock
from coxlmm.models.spec import model_handle

log = logging.getLogger(__name__)

__all__ = ["ExtractionSettings", "extract", "extract_noise", "ensure_readout", "FeatureStore", "stored_layers"]


@dataclass
class ExtractionSettings:
    batch_size: int = 8
    max_new_tokens: int = 50
    layers: str = "all"  # "all": every block and the final norm (one extraction serves any layer) | "requested"
    store_dtype: str = "float32"
    require_gt: bool = True  # paper: the token must also be in a ground-truth caption
    max_samples: int | None = None  # cap on candidate samples (after the ground-truth filter)
    num_workers: int = 0
    progress_every_s: float = 30.0


def stored_layers(num_layers: int, requested: list[int], mode: str) -> list[int]:
    """Layer indices an entry holds: every block plus the norm (index num_layers), or the requested ones."""
    return list(range(num_layers + 1)) if mode == "all" else sorted(set(requested))


def store_fields(model_key: dict[str, Any], dataset, token: str, stored: list[int], s: ExtractionSettings) -> dict:
    """Everything that changes the features (batch size and workers do not)."""
    return {
        "version": STORE_VERSION,
        "model": model_key,
        "data": dataset.fingerprint(),
        "token": token,
        "generation": {"decoding": "greedy", "max_new_tokens": s.max_new_tokens},
        "layers": stored,
        "store_dtype": s.store_dtype,
        "require_gt": s.require_gt,
        "max_samples": s.max_samples,
    }


def _rank_zero() -> bool:
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return rank_zero_only.rank == 0


def _filling(store: FeatureStore, what: str, wait_report_s: float):
    """The entry's lock, taken by global rank 0 only. The other ranks of a multi-device run (started by
    Lightning's launcher or by srun) run the same stages in step with rank 0 and must not wait on the
    lock rank 0 holds while it waits for them in `predict`."""
    return store.lock(what, wait_report_s) if _rank_zero() else nullcontext(store)


def make_trainer(trainer: Any, callbacks: list) -> Any:
    """A Lightning Trainer for a model stage from the `trainer` config node (`_target_`) or a dict of
    Trainer kwargs; no logger, checkpoints or summary; the progress bar only on a TTY."""
    import lightning as L
    from omegaconf import DictConfig, OmegaConf

    from coxlmm.progress import use_bar

    kwargs = OmegaConf.to_container(trainer, resolve=True) if isinstance(trainer, DictConfig) else dict(trainer or {})
    kwargs.pop("_target_", None)
    kwargs.setdefault("enable_progress_bar", use_bar())
    return L.Trainer(logger=False, enable_checkpointing=False, enable_model_summary=False, callbacks=callbacks,
                     **kwargs)


def _predict(lmm, module, store: FeatureStore, dataset, indices: list[int], settings: ExtractionSettings,
             trainer: Any, desc: str) -> None:
    """Run one model stage into `store` (every rank writes its own shards)."""
    from coxlmm.extraction.lightning import ExtractionDataModule, LogProgress, ShardWriter
    from coxlmm.progress import use_bar

    callbacks = [ShardWriter(store)]
    if not use_bar():
        callbacks.append(LogProgress(desc, len(indices), settings.progress_every_s))
    t = make_trainer(trainer, callbacks)
    if getattr(lmm, "device_map", None) is not None and t.world_size > 1:
        raise CoxlmmError(
            f"model.device_map={lmm.device_map!r} shards one model over the GPUs of one process, but the trainer "
            f"runs {t.world_size} processes ({t.strategy.__class__.__name__}): use one of the two, e.g. "
            "trainer=gpu with model.device_map=auto, or trainer=ddp without device_map."
        )
    t.predict(module, datamodule=ExtractionDataModule(dataset, indices, settings.batch_size, settings.num_workers),
              return_predictions=False)
    t.strategy.barrier()


def extract(model, dataset, token: str, requested_layers: list[Any], settings: ExtractionSettings,
            store_root: str, trainer: Any = None, wait_report_s: float = 30.0) -> FeatureStore:
    """Fill (or reuse) the feature store for (model, dataset, token). On non-zero ranks of a multi-device
    run the entry is returned unfinalized (rank 0 writes its manifest)."""
    from coxlmm.extraction.lightning import ExtractionModule

    model = model_handle(model)
    # as given (int, negative, "norm") or already resolved (num_layers = the norm's output)
    layers = [l if l == model.num_layers else model.resolve_layer(l) for l in requested_layers]
    stored = stored_layers(model.num_layers, layers, settings.layers)
    store = FeatureStore(store_root, store_fields(model.key, dataset, token, stored, settings))
    if store.complete:
        log.info("features cached: %s (%s, token %r)", store.dir, dataset.name, token)
        return store
    with _filling(store, f"the features of {dataset.name} for {token!r} ({store.key})", wait_report_s):
        if store.complete:  # filled by the job we waited for
            log.info("features cached by another job: %s", store.dir)
            return store
        lmm = model.get()
        token = validate_token(lmm.tokenizer, token)
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
            annotate = getattr(dataset, "annotate", None)
            module = ExtractionModule(lmm, token, stored, settings.max_new_tokens, settings.store_dtype,
                                      settings.require_gt, annotate=_sample_annotator(dataset) if annotate else None)
            _predict(lmm, module, store, dataset, todo, settings, trainer, f"extraction {dataset.name} {token!r}")
        seconds = time.perf_counter() - t0
        records = store.shard_records()  # every rank's shards: the ranks are past predict's barrier
        counts = Counter(r["status"] for r in records)
        if counts.get("selected", 0) == 0:  # every rank raises: none goes on to a stage the others skip
            words = Counter(w for r in records if r["caption"] for w in re.findall(r"[a-z]+", r["caption"].lower()))
            top = ", ".join(f"{w} ({n})" for w, n in words.most_common(15)) or "none"
            raise CoxlmmError(
                f"no sample selected for token {token!r}: {len(records)} captions were generated and none "
                f"contains {token!r} as a word. Most frequent words in the generated captions: {top}. "
                "Pick a token that the model generates."
            )
        if not _rank_zero():
            return store
        store.finalize({"seconds": seconds, "n_candidates": len(candidates), "n_dataset": len(dataset),
                        "n_extracted": len(todo), "model_fingerprint": lmm.fingerprint()})
        log.info(
            "extraction %s: %d samples in dataset, %d with %r in a ground-truth caption, %d captioned, "
            "%d selected, %d without the token in the caption, %d unreadable images; %.1f s, %.2f samples/s",
            dataset.name, len(dataset), len(candidates), token, len(records), counts.get("selected", 0),
            counts.get("token_not_generated", 0), counts.get("unreadable_image", 0), seconds,
            len(todo) / max(seconds, 1e-9),
        )
    return store


def _sample_annotator(dataset):
    """(sample, caption, prefix, token) -> dataset.annotate(record, caption, prefix, token)."""
    def annotate(sample, caption: str, prefix: str, token: str) -> dict:
        return dataset.annotate(dataset.records[sample.index], caption, prefix, token)

    return annotate


def noise_fields(parent: FeatureStore, images: str, seed: int) -> dict[str, Any]:
    return {"version": STORE_VERSION, "source": "noise_prefix", "parent": parent.key, "images": images,
            "seed": seed, "layers": parent.fields["layers"], "store_dtype": parent.fields["store_dtype"]}


def extract_noise(model, parent: FeatureStore, dataset, settings: ExtractionSettings, store_root: str,
                  images: str = "noise", seed: int = 0, trainer: Any = None,
                  wait_report_s: float = 30.0) -> FeatureStore:
    """The position-matched noise source of a split (extraction/lightning.py `NoisePrefixModule`): one row
    per selected sample of `parent`, in the same order. `images="real"` keeps each sample's own image
    (a check: it reproduces the extraction)."""
    from coxlmm.extraction.lightning import NoisePrefixModule

    if images not in ("noise", "real"):
        raise CoxlmmError(f"noise.images={images!r} is invalid: use noise (the baseline) or real (a check).")
    model = model_handle(model)
    store = FeatureStore(store_root, noise_fields(parent, images, seed))
    if store.complete:
        return store
    with _filling(store, f"the noise source of {parent.key} ({store.key})", wait_report_s):
        if store.complete:
            return store
        parent_recs = {r["index"]: r for r in parent.shard_records() if r["selected"]}
        if any("prefix_ids" not in r for r in parent_recs.values()):
            raise CoxlmmError(f"the feature-store entry {parent.dir} predates the noise source (no generated prefix "
                              "in its records): delete it and rerun.")
        todo = sorted(set(parent_recs) - store.done_indices())
        t0 = time.perf_counter()
        if todo:
            lmm = model.get()
            module = NoisePrefixModule(lmm, parent_recs, parent.fields["layers"], images, seed,
                                       parent.fields["store_dtype"])
            _predict(lmm, module, store, dataset, todo, settings, trainer,
                     f"noise source {dataset.name} {parent.fields.get('token')!r}")
        if not _rank_zero():
            return store
        store.finalize({"seconds": time.perf_counter() - t0, "n_extracted": len(todo)},
                       sample_keys=("index", "id", "position"))
    return store


def readout_dir(store_root: str | Path, model) -> Path:
    from coxlmm.extraction.store import store_key

    return Path(store_root).parent / "readout" / store_key({"version": STORE_VERSION, "model": model.key})


def ensure_readout(model, store_root: str, device: str = "cpu", wait_report_s: float = 30.0):
    """The model's `Readout` (final norm + W_U + tokenizer), saved once per model beside the features."""
    from coxlmm.models.readout import Readout

    model = model_handle(model)
    folder = readout_dir(store_root, model)
    if not Readout.exists(folder):
        with entry_lock(folder, f"the readout of {model.model_id}", wait_report_s):
            if not Readout.exists(folder):
                lmm = model.get()
                Readout.from_lmm(lmm).save(folder, lmm.fingerprint())
    return Readout.load(folder, device)
