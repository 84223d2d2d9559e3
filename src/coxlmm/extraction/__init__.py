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
import math
import re
import time
from collections import Counter
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coxlmm.errors import CoxlmmError
from coxlmm.extraction.matching import validate_token
from coxlmm.extraction.store import STORE_VERSION, FeatureStore
from coxlmm.io import content_key, entry_lock
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
    num_workers: int | None = 0
    progress_every_s: float = 30.0
    # More target tokens harvested from the same greedy captions (extraction.tokens), each into its own
    # entry; `share`: jobs of the launcher running at once, among which the tokens are divided.
    tokens: tuple[str, ...] = ()
    share: int = 1


def stored_layers(num_layers: int, requested: list[int], mode: str) -> list[int]:
    """Layer indices an entry holds: every block plus the norm (index num_layers), or the requested ones."""
    return list(range(num_layers + 1)) if mode == "all" else sorted(set(requested))


def store_fields(model_key: dict[str, Any], dataset, token: str, stored: list[int], s: ExtractionSettings) -> dict:
    """Everything that changes the features (batch size, workers and the tokens harvested alongside do not)."""
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
    from coxlmm.process import global_rank

    return global_rank() == 0


def _filling(store: FeatureStore, what: str, wait_report_s: float):
    """The entry's lock, taken by global rank 0 only. The other ranks of a multi-device run (started by
    Lightning's launcher or by srun) run the same stages in step with rank 0 and must not wait on the
    lock rank 0 holds while it waits for them in `predict`."""
    return store.lock(what, wait_report_s) if _rank_zero() else nullcontext(store)


def _stage(trainer: Any, settings: ExtractionSettings):
    """A model stage's Trainer (the `trainer` config node or a dict of its keys; no logger, checkpoints or
    summary; the progress bar only on a TTY unless the node says), its shard writer and its progress lines
    (targets set by `_predict`)."""
    from coxlmm.extraction.lightning import LogProgress, ShardWriter
    from coxlmm.progress import use_bar
    from coxlmm.trainer import build_trainer, trainer_kwargs

    writer = ShardWriter()
    progress = None if use_bar() else LogProgress("", 0, settings.progress_every_s)
    kwargs = {"enable_progress_bar": use_bar(), **trainer_kwargs(trainer)}
    t = build_trainer(kwargs, logger=False, enable_checkpointing=False, enable_model_summary=False,
                      callbacks=[writer] + ([progress] if progress else []))
    return t, writer, progress


def _predict(lmm, module, store: FeatureStore | dict[str, FeatureStore], dataset, indices: list[int],
             settings: ExtractionSettings, trainer: Any, desc: str, stage=None) -> None:
    """Run one model stage into `store` (or, per token, into `{token: store}`); every rank writes its own shards."""
    from coxlmm.extraction.lightning import ExtractionDataModule

    t, writer, progress = stage or _stage(trainer, settings)
    if isinstance(store, dict):
        writer.stores = store
    else:
        writer.store = store
    if progress is not None:
        progress.desc, progress.total = desc, len(indices)
    if getattr(lmm, "device_map", None) is not None and t.world_size > 1:
        raise CoxlmmError(
            f"model.device_map={lmm.device_map!r} shards one model over the GPUs of one process, but the trainer "
            f"runs {t.world_size} processes ({t.strategy.__class__.__name__}): use one of the two, e.g. "
            "trainer=gpu with model.device_map=auto, or trainer=ddp without device_map."
        )
    t.predict(module, datamodule=ExtractionDataModule(dataset, indices, settings.batch_size, settings.num_workers),
              return_predictions=False)
    t.strategy.barrier()


def _candidates(dataset, token: str, settings: ExtractionSettings) -> list[int]:
    """The dataset indices a token's entry covers: those whose reference captions say it (require_gt), capped."""
    candidates = dataset.indices_with_word(token) if settings.require_gt else list(range(len(dataset)))
    return candidates[: settings.max_samples] if settings.max_samples is not None else candidates


def _claim_others(model, lmm, dataset, token: str, stored: list[int], settings: ExtractionSettings, store_root: str,
                  claims: ExitStack) -> dict[str, FeatureStore]:
    """The entries of `settings.tokens` that this job's generation also fills: those not complete, whose lock
    no other job holds (taken here, without waiting: a job that holds one fills it), with candidates, at most
    this job's share of the tokens (the launcher's jobs at once divide them)."""
    others = [t for t in dict.fromkeys(settings.tokens) if t != token]
    limit = math.ceil((len(others) + 1) / max(1, settings.share)) - 1
    claimed: dict[str, FeatureStore] = {}
    for word in others:
        if len(claimed) >= limit:
            break
        try:
            word = validate_token(lmm.tokenizer, word)
        except CoxlmmError as e:
            log.warning("extraction.tokens: %s; it is not harvested", e)
            continue
        entry = FeatureStore(store_root, store_fields(model.key, dataset, word, stored, settings))
        if entry.complete or not _candidates(dataset, word, settings) or not claims.enter_context(entry.try_lock()):
            continue
        if not entry.complete:  # (it may have been completed between the check and the lock)
            claimed[word] = entry
    return claimed


def extract(model, dataset, token: str, requested_layers: list[Any], settings: ExtractionSettings,
            store_root: str, trainer: Any = None, wait_report_s: float = 30.0) -> FeatureStore:
    """Fill (or reuse) the feature store for (model, dataset, token). On non-zero ranks of a multi-device
    run the entry is returned unfinalized (rank 0 writes its manifest).

    One generation for several tokens: with `settings.tokens`, the same greedy captions also fill the
    entries of those tokens that no other job is filling (their own entries, the same as a job of that
    token would write), so a sweep over tokens captions each image once. Only in a one-process model
    stage: the ranks of a multi-device run extract their own token."""
    model = model_handle(model)
    # as given (int, negative, "norm") or already resolved (num_layers = the norm's output)
    layers = [l if l == model.num_layers else model.resolve_layer(l) for l in requested_layers]
    stored = stored_layers(model.num_layers, layers, settings.layers)
    store = FeatureStore(store_root, store_fields(model.key, dataset, token, stored, settings))
    if store.complete:
        log.info("features cached: %s (%s, token %r)", store.dir, dataset.name, token)
        return store
    with _filling(store, f"the features of {dataset.name} for {token!r} ({store.key})", wait_report_s), \
            ExitStack() as claims:
        if store.complete:  # filled by the job we waited for
            log.info("features cached by another job: %s", store.dir)
            return store
        lmm = model.get()
        token = validate_token(lmm.tokenizer, token)
        candidates = _candidates(dataset, token, settings)
        if not candidates:
            raise CoxlmmError(
                f"no sample of {dataset.name} ({len(dataset)} samples) has a ground-truth caption containing "
                f"the word {token!r}: pick a token that the captions use, or set extraction.require_gt=false."
            )
        harvest, stage = {token: store}, None
        if any(t != token for t in settings.tokens) and _rank_zero():
            stage = _stage(trainer, settings)
            if stage[0].world_size == 1:
                harvest |= _claim_others(model, lmm, dataset, token, stored, settings, store_root, claims)
            else:
                log.info("extraction.tokens: the model stage runs in %d processes; only %r is extracted",
                         stage[0].world_size, token)
        todo: dict[str, set[int]] = {}
        for t, entry in harvest.items():
            done = entry.done_indices()
            todo[t] = {i for i in (candidates if t == token else _candidates(dataset, t, settings)) if i not in done}
            if done:
                log.info("resuming extraction in %s: %d samples already done", entry.dir, len(done))
        union = sorted(set().union(*todo.values()))
        wanted = {i: [t for t in harvest if i in todo[t]] for i in union}
        if len(harvest) > 1:
            log.info("one generation for %d tokens (%s): %d images captioned for %d token-samples",
                     len(harvest), ", ".join(harvest), len(union), sum(map(len, todo.values())))
        t0 = time.perf_counter()
        if union:
            from coxlmm.extraction.lightning import ExtractionModule  # Lightning: only when a model stage runs

            annotate = getattr(dataset, "annotate", None)
            module = ExtractionModule(lmm, token, stored, settings.max_new_tokens, settings.store_dtype,
                                      settings.require_gt, annotate=_sample_annotator(dataset) if annotate else None,
                                      tokens=list(harvest), wanted=wanted)
            _predict(lmm, module, harvest, dataset, union, settings, trainer,
                     f"extraction {dataset.name} {'/'.join(harvest)!r}", stage)
        seconds = time.perf_counter() - t0
        for t in [*list(harvest)[1:], token]:  # the other tokens first: the run's own may raise
            _finish_entry(harvest[t], t, t == token, dataset, len(todo[t]), seconds, lmm, list(harvest), settings)
    return store


def _finish_entry(store: FeatureStore, token: str, own: bool, dataset, n_extracted: int, seconds: float, lmm,
                  harvested: list[str], settings: ExtractionSettings) -> None:
    """Check one filled entry and write its manifest (rank 0). A token of `extraction.tokens` that no caption
    says is left unfinalized: its own job reports it."""
    records = store.shard_records()  # every rank's shards: the ranks are past predict's barrier
    counts = Counter(r["status"] for r in records)
    if counts.get("selected", 0) == 0:
        if not own:
            log.info("extraction.tokens: no generated caption says %r; its entry is left to its own job", token)
            return
        # every rank raises: none goes on to a stage the others skip
        words = Counter(w for r in records if r["caption"] for w in re.findall(r"[a-z]+", r["caption"].lower()))
        top = ", ".join(f"{w} ({n})" for w, n in words.most_common(15)) or "none"
        raise CoxlmmError(
            f"no sample selected for token {token!r}: {len(records)} captions were generated and none "
            f"contains {token!r} as a word. Most frequent words in the generated captions: {top}. "
            "Pick a token that the model generates."
        )
    if not _rank_zero():
        return
    n_candidates = len(_candidates(dataset, token, settings))
    store.finalize({"seconds": seconds, "n_candidates": n_candidates, "n_dataset": len(dataset),
                    "n_extracted": n_extracted, "model_fingerprint": lmm.fingerprint(), "harvested_with": harvested})
    log.info(
        "extraction %s: %d samples in dataset, %d with %r in a ground-truth caption, %d captioned, "
        "%d selected, %d without the token in the caption, %d unreadable images; %.1f s, %.2f samples/s",
        dataset.name, len(dataset), n_candidates, token, len(records), counts.get("selected", 0),
        counts.get("token_not_generated", 0), counts.get("unreadable_image", 0), seconds,
        n_extracted / max(seconds, 1e-9),
    )


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
            from coxlmm.extraction.lightning import NoisePrefixModule  # Lightning: only when a model stage runs

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
    return Path(store_root).parent / "readout" / content_key({"version": STORE_VERSION, "model": model.key})


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
