"""One experiment, in two kinds of stages.

    model stages (the LMM runs; Lightning predict on the trainer's devices; results in the feature store)
        extraction of the train and test splits, and the noise sources the metrics ask for
    tensor stages (cached tensors only; no model weights loaded)
        dictionary (fit, encode) -> grounding (the cached readout: final norm + W_U) -> metrics
        -> files (metrics.json, concepts.json, dictionary, artefacts, figures, report) -> loggers

A model stage whose entry is cached does nothing, and the model is loaded only when one must run,
so a sweep job over cached features loads no model weights (`models/spec.py`).
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from coxlmm.config import build, check_extraction, check_noise
from coxlmm.errors import CoxlmmError
from coxlmm.extraction import ExtractionSettings, FeatureStore, ensure_readout, extract, extract_noise
from coxlmm.metrics.base import NOISE_TEST, NOISE_TRAIN, EvalInput, MetricResult, Services, Split
from coxlmm.metrics.causal import INTERVENTIONS
from coxlmm.models.base import layer_name
from coxlmm.models.spec import ModelSpec
from coxlmm.progress import duration
from coxlmm.scorers.cache import CachedImages

log = logging.getLogger(__name__)


# --- configuration helpers ---------------------------------------------------------------------------------
def settings(cfg: DictConfig, split: str) -> ExtractionSettings:
    e = cfg.extraction
    return ExtractionSettings(batch_size=e.batch_size, max_new_tokens=e.max_new_tokens, layers=e.layers,
                              store_dtype=e.store_dtype, require_gt=e.require_gt, num_workers=e.num_workers,
                              max_samples=e.max_samples_train if split == "train" else e.max_samples_test,
                              progress_every_s=e.progress_every_s)


def resolve_layers(spec, layers: list[Any]) -> list[int]:
    """The requested layers as distinct indices, in the order given; a layer named twice (-1 and 29 on a
    30-block model, or [0, 0]) is analysed once, with a note."""
    if not layers:
        raise CoxlmmError("layers=[] is empty: give at least one layer, e.g. layers=[-1].")
    resolved = [spec.resolve_layer(l) for l in layers]
    distinct = list(dict.fromkeys(resolved))
    if len(distinct) < len(resolved):
        log.warning("layers=%s names the same block more than once; analysing %s once each", list(layers),
                    [layer_name(l, spec.num_layers) for l in distinct])
    return distinct


def provenance(spec, layer: int, token: str) -> dict[str, Any]:
    """What a dictionary was fitted on: recorded in dictionary.safetensors, checked by `dictionary_path`."""
    from coxlmm.extraction.store import store_key

    return {"model": store_key(spec.key), "model_id": spec.model_id, "layer": layer, "token": token}


def check_saved_dictionary(cfg: DictConfig, spec, layers: list[int]) -> None:
    """`dictionary_path` must come from the same model and layer as this run's features: checked from the
    file's recorded provenance before any model runs."""
    from coxlmm.concepts.io import read_provenance

    if not cfg.dictionary_path:
        return
    prov = read_provenance(cfg.dictionary_path)
    want = provenance(spec, layers[0], cfg.token)
    if len(layers) != 1:
        raise CoxlmmError(f"dictionary_path={cfg.dictionary_path!r} is one layer's dictionary: run it with one layer "
                          f"(layers=[{prov.get('layer', -1)}]), not {list(cfg.layers)}.")
    if not prov:
        raise CoxlmmError(f"dictionary_path={cfg.dictionary_path!r} records no provenance (model, layer): it was not "
                          "written by a coxlmm run of this version; refit it.")
    for key, what in (("model", "model"), ("layer", "layer")):
        if prov.get(key) != want[key]:
            raise CoxlmmError(
                f"dictionary_path={cfg.dictionary_path!r} was fitted on another {what} than this run's features: it "
                f"records {key}={prov.get(key)!r} ({prov.get('model_id')}, layer {prov.get('layer')}), this run has "
                f"{key}={want[key]!r} ({spec.model_id}, layer {layers[0]}). Use the dictionary with the run's model and "
                "layer, or fit one here (drop dictionary_path).")


def dictionary_factory(cfg: DictConfig):
    """seed -> a fresh unfitted dictionary of the run's method and K (the method config's `_target_`)."""
    node = cfg.method
    if node.get("_partial_", False):
        make = build(node)
        return lambda seed: make(seed=seed)
    return lambda seed: build(node, seed=seed)


# --- model stages ------------------------------------------------------------------------------------------
@dataclass
class Stores:
    train: FeatureStore
    test: FeatureStore | None
    noise_train: FeatureStore | None
    noise_test: FeatureStore | None


def model_stages(cfg: DictConfig, spec: ModelSpec, layers: list[int], train_ds, test_ds, needs: set[str]
                 ) -> Stores | None:
    """Fill (or find) every feature-store entry the run needs. None on non-zero ranks of a DDP launch:
    every rank runs every stage (each is a collective `Trainer.predict`); only rank 0 goes on."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    root = str(Path(cfg.paths.cache_dir) / "features")
    wait = cfg.extraction.progress_every_s
    train = extract(spec, train_ds, cfg.token, layers, settings(cfg, "train"), root, cfg.trainer, wait)
    test = None
    if test_ds is not None:
        try:
            test = extract(spec, test_ds, cfg.token, layers, settings(cfg, "test"), root, cfg.trainer, wait)
        except CoxlmmError as e:
            log.warning("no test features (%s); test metrics are skipped", e)
    noise = dict(images=cfg.noise.images, seed=cfg.noise.seed, trainer=cfg.trainer, wait_report_s=wait)
    noise_train = extract_noise(spec, train, train_ds, settings(cfg, "train"), root, **noise) \
        if NOISE_TRAIN in needs else None
    noise_test = extract_noise(spec, test, test_ds, settings(cfg, "test"), root, **noise) \
        if NOISE_TEST in needs and test is not None else None
    if rank_zero_only.rank != 0:
        return None
    return Stores(train, test, noise_train, noise_test)


# --- tensor stages -----------------------------------------------------------------------------------------
@dataclass
class Features:
    """One split's selected samples: Z per layer (M, B), the store's records, and the noise source."""

    dataset: Any
    Z: dict[int, torch.Tensor]
    records: list[dict[str, Any]]  # row i of every Z[l] <-> records[i] (index, id, caption, ...)
    noise: dict[int, torch.Tensor] | None = None

    @classmethod
    def read(cls, dataset, store: FeatureStore, layers: list[int], noise: FeatureStore | None = None) -> "Features":
        Z, records = store.load(layers)
        Zn = None
        if noise is not None:
            Zn, noise_records = noise.load(layers)
            if [r["index"] for r in noise_records] != [r["index"] for r in records]:
                raise CoxlmmError(f"the noise source {noise.dir} does not hold the samples of {store.dir}: delete it.")
            Zn = {l: z.float() for l, z in Zn.items()}
        return cls(dataset, {l: z.float() for l, z in Z.items()}, records, Zn)

    def split(self, layer: int, V: torch.Tensor) -> Split:
        return Split(self.Z[layer], V, self.records, self.dataset, self.noise[layer] if self.noise else None)


@dataclass
class LayerResult:
    layer: int
    name: str  # "29", or "norm"
    out_dir: Path
    concepts: Any  # ConceptSet
    dictionary: Any
    metrics: dict[str, float]
    artifacts: dict[str, Any]
    figures: dict[str, str]  # name -> PNG path
    train_records: list[dict[str, Any]]
    dataset: Any  # the training split's dataset (images of the concepts table)
    dead_note: str = ""


def dead_concepts_note(dictionary, Z: torch.Tensor, V: torch.Tensor) -> str:
    """A warning when concepts of a non-negative dictionary never fire on the training samples: how
    many, the median ‖z‖, and an l1 weight that keeps them alive. '' when none is dead."""
    if not getattr(dictionary, "nonnegative", False):
        return ""
    dead = int((~(V.abs() > 0).any(0)).sum())
    if not dead:
        return ""
    median = statistics.median(Z.float().norm(dim=1).tolist())
    alpha = getattr(dictionary, "alpha", None)
    hint = ""
    if alpha is not None:
        hint = (f" method.alpha={alpha:g} is large against features of norm {median:.3g}: try method.alpha="
                f"{0.01 * median:.3g} (1 % of the median norm), or method.alpha_scale=relative method.alpha=0.01.")
    return (f"{dead} of {V.shape[1]} concepts are dead (never active on the {len(Z)} training samples; "
            f"median ‖z‖ = {median:.3g}): their words and top samples are empty.{hint}")


def analyse_layer(cfg: DictConfig, layer: int, spec, train: Features, test: Features | None,
                  readout, scorer, metrics: dict[str, Any], out_dir: Path, stores: Stores | None = None) -> LayerResult:
    """Decompose Z at one layer, ground the concepts, evaluate, and write the layer's files.

    A metric that needs interventions plans them here (from tensors); they run as model stages
    (`causal_stages`, cached) before the metrics, which read their results."""
    from coxlmm.grounding.concept_set import ConceptSet
    from coxlmm.grounding.text import concept_words, keep_words
    from coxlmm.grounding.visual import top_samples

    out_dir.mkdir(parents=True, exist_ok=True)
    num_layers = spec.num_layers
    make = dictionary_factory(cfg)

    def refit(Z: torch.Tensor, seed: int):
        return make(seed).fit(Z)

    t0 = time.perf_counter()
    Z_train = train.Z[layer]
    if cfg.dictionary_path:  # a saved dictionary (checked against the features before the model stages)
        from coxlmm.concepts.io import load_dictionary

        dictionary = load_dictionary(cfg.dictionary_path, device=cfg.device)
        if dictionary.U.shape[1] != Z_train.shape[1]:
            raise CoxlmmError(f"dictionary_path={cfg.dictionary_path!r} has atoms of width {dictionary.U.shape[1]}, "
                              f"the features {Z_train.shape[1]}: it belongs to another model.")
        V_train = dictionary.encode(Z_train)
    elif cfg.fit.stream and stores is not None:  # from the store's shards, block by block (issue 23)
        from coxlmm.extraction.reader import ShardRows

        dictionary = make(cfg.seed).fit_stream(ShardRows(stores.train, layer), cfg.fit.block_rows)
        V_train = dictionary.encode(Z_train)
    else:
        dictionary = refit(Z_train, cfg.seed)
        V_train = dictionary.V_train
    V_test = dictionary.encode(test.Z[layer]) if test is not None else None
    log.info("layer %s: %s, K = %d, fitted on %d x %d in %s", layer_name(layer, num_layers), dictionary.name,
             dictionary.n_concepts, *Z_train.shape, duration(time.perf_counter() - t0))
    note = dead_concepts_note(dictionary, Z_train, V_train)
    if note:
        log.warning("layer %s: %s", layer_name(layer, num_layers), note)

    factors = train.dataset.factor_values()
    g = cfg.grounding
    lens = readout.at(layer)
    keep = keep_words(factors)

    def ground(U: torch.Tensor) -> list[list[str]]:
        return concept_words(lens, U.detach().float(), n_top=g.n_top, n_words=g.n_words, keep=keep)

    top_rows = top_samples(V_train, g.n_mas)
    concepts = ConceptSet(U=dictionary.U, V=V_train, words=ground(dictionary.U),
                          top_samples=[[train.records[i]["id"] for i in rows] for rows in top_rows],
                          top_indices=top_rows, method=dictionary.name, layer=layer, token=cfg.token,
                          extra={"n_top": g.n_top, "n_words": g.n_words, "n_mas": g.n_mas,
                                 "layer_name": layer_name(layer, num_layers),
                                 "method_display": getattr(dictionary, "display_name", dictionary.name)})
    inp = EvalInput(train=train.split(layer, V_train), test=test.split(layer, V_test) if test is not None else None,
                    dictionary=dictionary, concepts=concepts,
                    services=Services(lens=lens, ground=ground, refit=refit, scorer=scorer),
                    token=cfg.token, layer=layer, seed=cfg.seed, factors=factors, n_top=g.n_top, n_words=g.n_words)
    if any(INTERVENTIONS in getattr(m, "needs", ()) for m in metrics.values()) and stores is not None:
        inp = causal_stages(cfg, spec, stores, test, layer, inp, metrics)
    scores: dict[str, float] = {}
    artifacts: dict[str, Any] = {}
    for name, metric in metrics.items():
        t1 = time.perf_counter()
        res: MetricResult = metric(inp)
        scores.update(res.scores)
        artifacts.update(res.artifacts)
        log.info("metric %s: %d scores in %s", name, len(res.scores), duration(time.perf_counter() - t1))

    # Files first (a logger failure must never lose them), then figures.
    doc = concepts.to_json()
    for c in doc["concepts"]:  # per-concept causal numbers beside the words, when computed
        if str(c["id"]) in (artifacts.get("causal") or {}):
            c["causal"] = artifacts["causal"][str(c["id"])]
    (out_dir / "concepts.json").write_text(json.dumps(doc, indent=1, default=_json_default))
    from coxlmm.concepts.io import save_dictionary

    save_dictionary(dictionary, out_dir / "dictionary.safetensors", provenance(spec, layer, cfg.token))
    figures: dict[str, str] = {}
    for name, art in artifacts.items():
        if hasattr(art, "savefig"):
            if cfg.figures:
                figures[name] = str(out_dir / f"{name}.png")
                art.savefig(figures[name], dpi=110, bbox_inches="tight")
        else:  # tables and dicts are results, not figures: always written
            (out_dir / f"{name}.json").write_text(json.dumps(art, indent=1, default=_json_default))
    if cfg.figures:
        figures |= _figures(cfg, concepts, dictionary, inp, out_dir)
    if cfg.report:
        _report(out_dir, inp, keep, scores, artifacts)
    return LayerResult(layer, layer_name(layer, num_layers), out_dir, concepts, dictionary, scores, artifacts,
                       figures, train.records, train.dataset, note)


def causal_stages(cfg: DictConfig, spec, stores: Stores, test: Features | None, layer: int, inp: EvalInput,
                  metrics: dict[str, Any]) -> EvalInput:
    """Run the interventions the causal metrics plan (extraction/interventions.py) and put the results in
    the input; the model is loaded only when a plan's results are not cached."""
    import dataclasses

    from coxlmm.extraction.interventions import run_steer, run_target
    from coxlmm.metrics.causal import CausalResults

    if test is None or stores.test is None:
        return inp
    root = str(Path(cfg.paths.cache_dir) / "features")
    for metric in metrics.values():
        if INTERVENTIONS not in getattr(metric, "needs", ()):
            continue
        plan = metric.plan(inp)
        if plan is None:
            continue
        t0 = time.perf_counter()
        rows = getattr(metric, "rows_per_forward", 32)
        target = run_target(spec, stores.test, test.dataset, plan.target, layer, root, settings(cfg, "test"),
                            cfg.trainer, rows)
        steer = run_steer(spec, stores.test, test.dataset, plan.steer, layer, root, settings(cfg, "test"), cfg.trainer,
                          rows) if plan.steer is not None else None
        log.info("causal stages of layer %s: %d samples x (%d edits, %d steering directions) in %s",
                 layer_name(layer, spec.num_layers), len(plan.rows), len(plan.target.variants),
                 len(plan.steer.directions) if plan.steer is not None else 0, duration(time.perf_counter() - t0))
        inp = dataclasses.replace(inp, interventions=(plan, CausalResults(target, steer)))
    return inp


def _report(out_dir: Path, inp: EvalInput, keep: set[str], scores: dict[str, float], artifacts: dict) -> None:
    """The concept browser's report.json + report.html (report/browser); a failure only warns."""
    from coxlmm.report.browser import write_run_report

    def rows(split: Split | None) -> list[dict]:
        return [] if split is None else [{**r, "captions": c} for r, c in zip(split.records, split.references)]

    def image(split: str, index: int):
        return (inp.train if split == "train" else inp.test).dataset[index].image

    t0 = time.perf_counter()
    try:
        write_run_report(out_dir, concepts=inp.concepts, V_train=inp.train.V,
                         V_test=inp.test.V if inp.test is not None else None, train=rows(inp.train),
                         test=rows(inp.test), lens=inp.services.lens, n_top=inp.n_top, n_words=inp.n_words,
                         keep_words=keep, metrics=scores, artifacts=artifacts, image=image)
    except Exception as e:  # noqa: BLE001 - the report is a view: it must never lose the run's results
        log.warning("the concept browser's report could not be written (%s: %s); the run's files are unaffected",
                    type(e).__name__, e)
        return
    log.info("report.html written in %s", duration(time.perf_counter() - t0))


def _json_default(x):
    if isinstance(x, torch.Tensor):
        return x.tolist()
    return float(x)


def _figures(cfg, concepts, dictionary, inp: EvalInput, out_dir: Path) -> dict[str, str]:
    from coxlmm.report.figures import concept_grid, local_interpretation

    train = inp.train
    paths = {"concept_grid": str(out_dir / "concept_grid.png")}
    concept_grid(concepts, train.dataset, train.indices, paths["concept_grid"])
    if inp.test is not None and len(inp.test):
        n = cfg.grounding.n_local
        paths["local_interpretation"] = str(out_dir / "local_interpretation.png")
        local_interpretation(dictionary, concepts, inp.test.Z[:n], inp.test.dataset, inp.test.indices[:n],
                             train.dataset, train.indices, paths["local_interpretation"], V_test=inp.test.V[:n])
    return paths


# --- the run -------------------------------------------------------------------------------------------
def run(cfg: DictConfig, job=None) -> dict[str, float]:
    """Run one experiment; returns the flat metrics also written to `metrics.json`.

    `job`: the job's loggers (`report.log.JobLog`), opened by the CLI at job start; None: no logging."""
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    check_extraction(cfg.extraction)
    check_noise(cfg.noise)
    spec = ModelSpec(cfg.model)
    layers = resolve_layers(spec, list(cfg.layers))
    check_saved_dictionary(cfg, spec, layers)
    metrics = {name: build(node) for name, node in (cfg.metrics or {}).items() if node}
    needs = set().union(*(getattr(m, "needs", frozenset()) for m in metrics.values()))
    train_ds = build(cfg.data, split=cfg.train_split)
    test_ds = build(cfg.data, split=cfg.test_split) if cfg.test_split else None
    style, references = spec.key.get("caption_style"), getattr(train_ds, "caption_style", None)
    if style and references and references not in (style, "both"):
        log.warning("model.prompt asks for %s captions but data.caption_style=%s: BERTScore and require_gt compare "
                    "them with references of the other grammar (set data.caption_style=%s)", style, references, style)

    t0 = time.perf_counter()
    stores = model_stages(cfg, spec, layers, train_ds, test_ds, needs)
    if stores is None:  # a non-zero rank of a multi-device extraction: rank 0 does the rest
        return {}
    model_seconds = time.perf_counter() - t0
    readout = ensure_readout(spec, str(Path(cfg.paths.cache_dir) / "features"), device=cfg.device)
    if job is not None:
        job.log_stages(stores_summary(stores), model_seconds, spec.loaded)
    if not spec.loaded:
        log.info("all features cached: no model weights loaded")

    t1 = time.perf_counter()
    train = Features.read(train_ds, stores.train, layers, stores.noise_train)
    test = Features.read(test_ds, stores.test, layers, stores.noise_test) if stores.test is not None else None
    scorer = build(cfg.scorer) if cfg.scorer else None
    if getattr(scorer, "clip", None) is not None:  # every job of a sweep embeds an image once (scorers/cache.py)
        scorer.clip = CachedImages(scorer.clip, Path(cfg.paths.cache_dir) / "scorer")
    flat: dict[str, float] = {}
    results: list[LayerResult] = []
    for layer in layers:
        name = layer_name(layer, spec.num_layers)
        sub = out_dir if len(layers) == 1 else out_dir / f"layer_{name}"
        res = analyse_layer(cfg, layer, spec, train, test, readout, scorer, metrics, sub, stores)
        prefix = "" if len(layers) == 1 else f"layer_{name}/"
        flat.update({prefix + k: v for k, v in res.metrics.items()})
        results.append(res)
        if job is not None:
            job.log_layer(res, multi=len(layers) > 1)
    flat["n_train"] = len(train.records)
    flat["n_test"] = len(test.records) if test is not None else 0
    flat["seconds_model_stages"] = model_seconds
    flat["seconds_tensor_stages"] = time.perf_counter() - t1
    flat = {k: float(v) for k, v in flat.items() if _is_number(v)}
    (out_dir / "metrics.json").write_text(json.dumps(flat, indent=1, sort_keys=True))
    if job is not None:
        job.log_summary(flat)
    if cfg.print_summary:
        print(summary(out_dir, results, flat))
    return flat


def stores_summary(stores: Stores) -> dict[str, dict[str, Any]]:
    """Per filled entry: counts and time from its manifest (what the loggers record of the model stages)."""
    out = {}
    for name in ("train", "test", "noise_train", "noise_test"):
        store = getattr(stores, name)
        if store is None:
            continue
        m = store.manifest()
        out[name] = {"key": store.key, **{f"count_{k}": v for k, v in m.get("counts", {}).items()},
                     "seconds": m.get("seconds", 0.0), "extracted": m.get("n_extracted", 0)}
    return out


def _is_number(v) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def summary(out_dir: Path, results: list[LayerResult], metrics: dict[str, float]) -> str:
    """A short human summary: where the outputs are, the top words of each concept, and warnings."""
    lines = [f"\ncoxlmm: outputs in {out_dir}"]
    for res in results:
        c = res.concepts
        lines.append(f"  {c.method}, token {c.token!r}, layer {res.name}: {c.n_concepts} concepts "
                     f"from {int(metrics.get('n_train', 0))} training samples")
        for k in range(c.n_concepts):
            lines.append(f"    {k:>2}: {', '.join(c.words[k][:6]) or '(no words)'}")
        if res.dead_note:
            lines.append(f"  warning: {res.dead_note}")
    keys = [k for k in ("overlap", "recon_rel_error_train", "recon_rel_error_test", "sparsity_l0_test",
                        "cs_top1_mean", "bs_top1_mean", "recovery_matched") if k in metrics]
    if keys:
        lines.append("  " + "  ".join(f"{k}={metrics[k]:.3f}" for k in keys))
    return "\n".join(lines)


def resolved_config(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)
