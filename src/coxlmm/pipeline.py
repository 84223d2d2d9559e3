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

import dataclasses
import json
import logging
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from coxlmm.config import build, check_extraction, check_noise
from coxlmm.errors import CoxlmmError
from coxlmm.extraction import ExtractionSettings, FeatureStore, ensure_readout, extract, extract_noise
from coxlmm.layer import Layer
from coxlmm.metrics.base import NOISE_TEST, NOISE_TRAIN, EvalInput, MetricResult, Services, Split
from coxlmm.metrics.run import run_facts
from coxlmm.metrics.schema import Schema
from coxlmm.models.spec import ModelSpec
from coxlmm.process import seed_everything
from coxlmm.progress import duration
from coxlmm.scorers.cache import CachedImages

log = logging.getLogger(__name__)


# --- configuration helpers ---------------------------------------------------------------------------------
def settings(cfg: DictConfig, split: str) -> ExtractionSettings:
    from coxlmm.threads import sweep_jobs_at_once

    e = cfg.extraction
    return ExtractionSettings(batch_size=e.batch_size, max_new_tokens=e.max_new_tokens, layers=e.layers,
                              store_dtype=e.store_dtype, require_gt=e.require_gt, num_workers=e.num_workers,
                              max_samples=e.max_samples_train if split == "train" else e.max_samples_test,
                              progress_every_s=e.progress_every_s, tokens=tuple(e.tokens or ()),
                              share=sweep_jobs_at_once())


def resolve_layers(spec, layers: list[Any]) -> list[Layer]:
    """The requested layers as distinct `Layer`s, in the order given; a layer named twice (-1 and 29 on a
    30-block model, or [0, 0]) is analysed once, with a note."""
    if not layers:
        raise CoxlmmError("layers=[] is empty: give at least one layer, e.g. layers=[-1].")
    resolved = [Layer.of(l, spec.num_layers, spec.model_id) for l in layers]
    distinct = list(dict.fromkeys(resolved))
    if len(distinct) < len(resolved):
        log.warning("layers=%s names the same block more than once; analysing %s once each", list(layers),
                    [l.name for l in distinct])
    return distinct


def provenance(spec, layer: int, token: str) -> dict[str, Any]:
    """What a dictionary was fitted on: recorded in dictionary.safetensors, checked by `dictionary_path`."""
    from coxlmm.io import content_key

    return {"model": content_key(spec.key), "model_id": spec.model_id, "layer": layer, "token": token}


def check_saved_dictionary(cfg: DictConfig, spec, layers: list[int]) -> None:
    """`dictionary_path` must come from the same model and layer as this run's features: checked from the
    file's recorded provenance before any model runs."""
    from coxlmm.concepts.io import read_provenance

    if not cfg.dictionary_path:
        return
    prov = read_provenance(cfg.dictionary_path)
    want = provenance(spec, layers[0], token_name(cfg.token))
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
    """seed -> a fresh unfitted dictionary of the run's method and K (the method config's `_target_`), on the
    run's `device`: the seed and the device are given here, at call time; the method files name neither."""
    node = cfg.method
    if node.get("_partial_", False):
        make = build(node, device=cfg.device)
        return lambda seed: make(seed=seed)
    return lambda seed: build(node, seed=seed, device=cfg.device)


def bootstrap_rows(n: int, seed: int) -> torch.Tensor:
    """(n,) row indices drawn with replacement, seeded: the training rows of one refit (`fit.resample`)."""
    return torch.randint(0, n, (n,), generator=torch.Generator().manual_seed(10_007 * seed + 1))


def fitter(cfg: DictConfig):
    """(Z, seed) -> a fitted dictionary of the run's method and K: every fit of a run goes through it
    (the dictionary, the stability refit, the Noise-Imgs dictionaries). With `fit.resample` each fit
    sees a bootstrap resample of its rows drawn from its seed, so the seeds of a sweep are replicates
    of the fit for every method, the deterministic ones (Semi-NMF's SVD start, PCA, Simple) included.

    Fits are cached by the content of the Z they see, the method config and the seed (concepts/cache.py):
    a fit an earlier job made is loaded, not redone (`dictionary_cache=false`: always fit)."""
    from coxlmm.concepts.cache import FitCache

    method = {**OmegaConf.to_container(cfg.method, resolve=True), "device": cfg.device}  # what the factory builds
    cache = FitCache(Path(cfg.paths.cache_dir) / "dictionaries", method, dictionary_factory(cfg),
                     enabled=cfg.dictionary_cache, wait_report_s=cfg.extraction.progress_every_s)
    resample = bool(cfg.fit.resample)

    def fit(Z: torch.Tensor, seed: int):
        return cache.fit(Z[bootstrap_rows(len(Z), seed)] if resample else Z, seed)

    return fit


def build_scorer(cfg: DictConfig):
    """The run's scorers (the `scorer` group: a `Scorers` of `clip` and `bert` nodes), each part built on the
    run's `device`, given here as the seed is to the dictionaries: the scorer files do not name it."""
    parts = {k: {"device": cfg.device} for k, v in cfg.scorer.items() if isinstance(v, DictConfig) and "_target_" in v}
    return build(cfg.scorer, **parts)


def token_list(token: Any) -> list[str]:
    """`token` as a list of distinct words: one word (`token=dog`) or several (`token=[circle,triangle]`:
    one dictionary over the states that predict any of them)."""
    words = [token] if isinstance(token, str) or token is None else list(token)
    if not words or any(w is None or (isinstance(w, str) and not w.strip()) for w in words):
        raise CoxlmmError("token is empty: set `token=<word>` to a word that the model generates, e.g. token=dog "
                          "(or a list of words, token=[circle,triangle]).")
    if not all(isinstance(w, str) for w in words):
        raise CoxlmmError(f"token={token!r} is invalid: give a word (token=dog) or a list of words "
                          "(token=[circle,triangle]).")
    return list(dict.fromkeys(w.strip() for w in words))


def token_name(token: Any) -> str:
    """The run's target as one string: the word, or the words joined by '+'."""
    return "+".join(token_list(token))


# --- model stages ------------------------------------------------------------------------------------------
@dataclass
class Stores:
    """The run's store entries, one per target word (the union's parts) and noise seed."""

    words: list[str]
    train: list[FeatureStore]
    test: list[FeatureStore]  # [] without test features
    noise_train: list[list[FeatureStore]]  # per noise seed, one per word, when a metric requested it
    noise_test: list[list[FeatureStore]]


def model_stages(cfg: DictConfig, spec: ModelSpec, layers: list[int], train_ds, test_ds, requests: set
                 ) -> Stores | None:
    """Fill (or find) every feature-store entry the run needs. None on non-zero ranks of a DDP launch:
    every rank runs every stage (each is a collective `Trainer.predict`); only rank 0 goes on."""
    from coxlmm.process import global_rank

    root = str(Path(cfg.paths.cache_dir) / "features")
    wait = cfg.extraction.progress_every_s
    words = token_list(cfg.token)
    train = [extract(spec, train_ds, w, layers, settings(cfg, "train"), root, cfg.trainer, wait) for w in words]
    test = []
    if test_ds is not None:
        try:
            test = [extract(spec, test_ds, w, layers, settings(cfg, "test"), root, cfg.trainer, wait) for w in words]
        except CoxlmmError as e:
            log.warning("no test features (%s); test metrics are skipped", e)
            test = []
    noise = dict(images=cfg.noise.images, trainer=cfg.trainer, wait_report_s=wait)
    seeds = list(cfg.noise.seeds)

    def noise_of(parents: list[FeatureStore], ds, split: str) -> list[list[FeatureStore]]:
        return [[extract_noise(spec, p, ds, settings(cfg, split), root, seed=s, **noise) for p in parents] for s in seeds]

    noise_train = noise_of(train, train_ds, "train") if NOISE_TRAIN in requests else []
    noise_test = noise_of(test, test_ds, "test") if NOISE_TEST in requests and test else []
    if global_rank() != 0:
        return None
    return Stores(words, train, test, noise_train, noise_test)


# --- tensor stages -----------------------------------------------------------------------------------------
@dataclass
class Features:
    """One split's selected samples: Z per layer (M, B), the store's records, and the noise draws."""

    dataset: Any
    Z: dict[int, torch.Tensor]
    records: list[dict[str, Any]]  # row i of every Z[l] <-> records[i] (index, id, caption, ...)
    noise: dict[int, tuple[torch.Tensor, ...]] = None  # layer -> one (M, B) per noise seed

    @classmethod
    def read(cls, dataset, stores: list[FeatureStore], words: list[str], layers: list[int],
             noise: list[list[FeatureStore]] = (), readout: Any = None) -> "Features":
        """The rows of every word's entry, in word order (each record gets its `word`; with several words
        its id becomes `<id>:<word>`, since an image can hold two target shapes); the noise draws alike."""
        Zs: dict[int, list[torch.Tensor]] = {l: [] for l in layers}
        records: list[dict[str, Any]] = []
        draws: dict[int, list[list[torch.Tensor]]] = {l: [[] for _ in noise] for l in layers}
        for w, (store, word) in enumerate(zip(stores, words)):
            Z, recs = store.load(layers)
            for l in layers:
                Zs[l].append(Z[l].float())
            for s, per_word in enumerate(noise):
                Zn, noise_records = per_word[w].load(layers)
                if [r["index"] for r in noise_records] != [r["index"] for r in recs]:
                    raise CoxlmmError(f"the noise source {per_word[w].dir} does not hold the samples of {store.dir}: "
                                      "delete it.")
                for l in layers:
                    draws[l][s].append(Zn[l].float())
            if readout is not None:
                recs = reannotate(dataset, recs, readout, word)
            records += [{**r, "word": word, **({"id": f"{r['id']}:{word}"} if len(words) > 1 else {})} for r in recs]
        return cls(dataset, {l: torch.cat(z) for l, z in Zs.items()}, records,
                   {l: tuple(torch.cat(d) for d in per_seed) for l, per_seed in draws.items()})

    def split(self, layer: int, V: torch.Tensor) -> Split:
        return Split(self.Z[layer], V, self.records, self.dataset, self.noise.get(layer, ()) if self.noise else ())


def reannotate(dataset, records: list[dict[str, Any]], readout: Any, token: str) -> list[dict[str, Any]]:
    """Each record's `annotation` recomputed from its caption and generated prefix (`dataset.annotate`):
    the annotation is a function of the data and the generated text, a tensor-stage fact, so a fix to
    it applies to cached features without extracting again. The prefix is the record's `prefix_text`; the
    readout's tokenizer (loaded on first use) decodes the `prefix_ids` of entries stored before it was kept."""
    annotate = getattr(dataset, "annotate", None)
    if annotate is None:
        return records
    out = []
    for r in records:
        if "prefix_ids" not in r or r.get("caption") is None:
            out.append(r)
            continue
        prefix = r["prefix_text"] if "prefix_text" in r else readout.tokenizer.decode(list(r["prefix_ids"]),
                                                                                      skip_special_tokens=True)
        out.append({**r, "annotation": annotate(dataset.records[int(r["index"])], r["caption"], prefix, token)})
    return out


@dataclass
class LayerResult:
    layer: Layer
    out_dir: Path
    concepts: Any  # ConceptSet
    dictionary: Any
    metrics: dict[str, float]
    artifacts: dict[str, Any]
    figures: dict[str, str]  # name -> PNG path
    schema: Schema
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


def analyse_layer(cfg: DictConfig, layer: Layer, spec, train: Features, test: Features | None,
                  readout, scorer, metrics: dict[str, Any], out_dir: Path, stores: Stores | None = None,
                  multi: bool = False) -> LayerResult:
    """Decompose Z at one layer, ground the concepts, evaluate, and write the layer's files.

    A metric whose `plan` asks for model-stage sources from the layer's tensors (the causal
    interventions) gets them filled here, its own plan each, before it runs (`fill_requests`).
    `multi`: one of several layers of the run (its page links the run's page of layers)."""
    from coxlmm.grounding.concept_set import ConceptSet
    from coxlmm.grounding.text import concept_words, keep_words
    from coxlmm.grounding.visual import top_samples

    out_dir.mkdir(parents=True, exist_ok=True)
    refit = fitter(cfg)
    ix = layer.index

    t0 = time.perf_counter()
    Z_train = train.Z[ix]
    if cfg.dictionary_path:  # a saved dictionary (checked against the features before the model stages)
        from coxlmm.concepts.io import load_dictionary

        dictionary = load_dictionary(cfg.dictionary_path, device=cfg.device)
        if dictionary.U.shape[1] != Z_train.shape[1]:
            raise CoxlmmError(f"dictionary_path={cfg.dictionary_path!r} has atoms of width {dictionary.U.shape[1]}, "
                              f"the features {Z_train.shape[1]}: it belongs to another model.")
        V_train = dictionary.encode(Z_train)
    elif cfg.fit.stream and stores is not None:  # from the store's shards, block by block (docs/methods.md)
        from coxlmm.extraction.reader import ShardRows

        if len(stores.train) > 1 or cfg.fit.resample:
            raise CoxlmmError(f"fit.stream=true reads one word's store entry in blocks: it takes one token (this run "
                              f"has {stores.words}) and no fit.resample (a bootstrap needs the rows in memory).")
        dictionary = dictionary_factory(cfg)(cfg.seed).fit_stream(ShardRows(stores.train[0], ix), cfg.fit.block_rows)
        V_train = dictionary.encode(Z_train)
    else:
        dictionary = refit(Z_train, cfg.seed)
        # A resampled fit saw some rows twice and others not at all: code every training row.
        V_train = dictionary.encode(Z_train) if cfg.fit.resample else dictionary.V_train
    V_test = dictionary.encode(test.Z[ix]) if test is not None else None
    log.info("layer %s: %s, K = %d, fitted on %d x %d%s in %s", layer.name, dictionary.name,
             dictionary.n_concepts, *Z_train.shape, " (bootstrap rows)" if cfg.fit.resample else "",
             duration(time.perf_counter() - t0))
    note = dead_concepts_note(dictionary, Z_train, V_train)
    if note:
        log.warning("layer %s: %s", layer.name, note)

    factors = train.dataset.factor_values()
    g = cfg.grounding
    lens = readout.at(ix)
    keep = keep_words(factors)

    def ground(U: torch.Tensor) -> list[list[str]]:
        return concept_words(lens, U.detach().float(), n_top=g.n_top, n_words=g.n_words, keep=keep)

    top_rows = top_samples(V_train, g.n_mas)
    concepts = ConceptSet(U=dictionary.U, V=V_train, words=ground(dictionary.U),
                          top_samples=[[train.records[i]["id"] for i in rows] for rows in top_rows],
                          top_indices=top_rows, method=dictionary.name, layer=ix, token=token_name(cfg.token),
                          extra={"n_top": g.n_top, "n_words": g.n_words, "n_mas": g.n_mas,
                                 "layer_name": layer.name,
                                 "method_display": getattr(dictionary, "display_name", dictionary.name)})
    inp = EvalInput(train=train.split(ix, V_train), test=test.split(ix, V_test) if test is not None else None,
                    dictionary=dictionary, concepts=concepts,
                    services=Services(lens=lens, ground=ground, refit=refit, scorer=scorer),
                    token=token_name(cfg.token), layer=ix, seed=cfg.seed, factors=factors, n_top=g.n_top,
                    n_words=g.n_words)
    result = MetricResult()
    for name, metric in metrics.items():
        t1 = time.perf_counter()
        sources = fill_requests(cfg, spec, stores, test, layer, metric.plan(inp))
        res: MetricResult = metric(dataclasses.replace(inp, sources=sources) if sources else inp)
        result = result.merge(res)
        log.info("metric %s: %d scores in %s", name, len(res.scores), duration(time.perf_counter() - t1))
    write_layer_files(cfg, out_dir, spec, ix, dictionary, concepts, result)
    figures: dict[str, str] = {}
    for name, art in result.artifacts.items():
        if hasattr(art, "savefig") and cfg.figures:
            figures[name] = str(out_dir / f"{name}.png")
            art.savefig(figures[name], dpi=110, bbox_inches="tight")
    if cfg.figures:
        figures |= _figures(cfg, concepts, dictionary, inp, out_dir)
    if cfg.report:
        _report(out_dir, inp, keep, result, up=multi, cache_dir=cfg.paths.cache_dir)
    return LayerResult(layer, out_dir, concepts, dictionary, result.scores,
                       result.artifacts, figures, result.schema, train.records, train.dataset, note)


def write_layer_files(cfg: DictConfig, out_dir: Path, spec, layer: int, dictionary, concepts, result: MetricResult
                      ) -> None:
    """concepts.json (with each concept's per-concept scores), the dictionary, samples.safetensors (the
    per-unit scores), metrics_schema.json, and each JSON artefact: written before any logger runs, so a
    logger failure never loses them."""
    from safetensors.torch import save_file

    from coxlmm.concepts.io import save_dictionary

    doc = concepts.to_json()
    for c in doc["concepts"]:
        scores = {key: values[c["id"]] for key, values in result.concepts.items()
                  if c["id"] < len(values) and values[c["id"]] is not None}
        if scores:
            c["scores"] = scores
    (out_dir / "concepts.json").write_text(json.dumps(doc, indent=1, default=_json_default))
    save_dictionary(dictionary, out_dir / "dictionary.safetensors", provenance(spec, layer, token_name(cfg.token)))
    if result.samples:
        tensors = {name: torch.tensor(np.asarray(values, dtype=np.float64))
                   for name, (_, values) in result.samples.items()}
        save_file(tensors, str(out_dir / "samples.safetensors"),
                  metadata={f"ids:{name}": json.dumps(list(ids)) for name, (ids, _) in result.samples.items()})
    (out_dir / "metrics_schema.json").write_text(json.dumps(result.schema.to_json(), indent=1))
    for name, art in result.artifacts.items():
        if not hasattr(art, "savefig"):  # tables and dicts are results, not figures: always written
            (out_dir / f"{name}.json").write_text(json.dumps(art, indent=1, default=_json_default))


def fill_requests(cfg: DictConfig, spec, stores: Stores | None, test: Features | None, layer: Layer, requests
                  ) -> dict[Any, Any]:
    """Run the model stages a metric's plan asks for (each request knows its stage, cached in the store;
    the model is loaded only when a result is missing) and return {request: result}."""
    if not requests or stores is None or not stores.test or test is None:
        return {}
    if len(stores.test) > 1:
        raise CoxlmmError(f"the model stages of a metric's plan (the causal checks) run on one target word; this run has "
                          f"token={stores.words}: run them with one token (token={stores.words[0]}).")
    root = str(Path(cfg.paths.cache_dir) / "features")
    context = dict(model=spec, parent=stores.test[0], dataset=test.dataset, layer=layer.index, root=root,
                   settings=settings(cfg, "test"), trainer=cfg.trainer)
    out = {}
    for request in requests:
        t0 = time.perf_counter()
        out[request] = request.run(**context)
        log.info("%s of layer %s in %s", request.describe(), layer.name,
                 duration(time.perf_counter() - t0))
    return out


def _report(out_dir: Path, inp: EvalInput, keep: set[str], result: MetricResult, up: bool = False,
            cache_dir: str | Path | None = None) -> None:
    """The concept browser's report.json + report.html (report/browser), its thumbnails drawn once into
    `<cache_dir>/thumbs`; a failure only warns."""
    from coxlmm.report.browser.page import thumb_cache_dirs, write_run_report

    def rows(split: Split | None) -> list[dict]:
        return [] if split is None else [{**r, "captions": c} for r, c in zip(split.records, split.references)]

    def image(split: str, index: int):
        return (inp.train if split == "train" else inp.test).dataset[index].image

    t0 = time.perf_counter()
    splits = {"train": inp.train, "test": inp.test}
    thumbs = thumb_cache_dirs(Path(cache_dir) / "thumbs" if cache_dir is not None else None,
                              {name: part.dataset.fingerprint() for name, part in splits.items() if part is not None})
    try:
        write_run_report(out_dir, concepts=inp.concepts, V_train=inp.train.V,
                         V_test=inp.test.V if inp.test is not None else None, train=rows(inp.train),
                         test=rows(inp.test), lens=inp.services.lens, n_top=inp.n_top, n_words=inp.n_words,
                         keep_words=keep, metrics=result.scores, schema=result.schema, concept_scores=result.concepts,
                         image=image, up=up, thumb_cache=thumbs)
    except Exception as e:  # noqa: BLE001 - the report is a view: it must never lose the run's results
        log.warning("the concept browser's report could not be written (%s: %s); the run's files are unaffected",
                    type(e).__name__, e)
        return
    log.info("report.html written in %s", duration(time.perf_counter() - t0))


def _layers_page(run_dir: Path, layers: list[Layer]) -> None:
    """The run's report.html linking the pages of the layers done so far; a failure only warns."""
    from coxlmm.report.browser import write_layers_page

    try:
        write_layers_page(run_dir, layers)
    except Exception as e:  # noqa: BLE001 - the report is a view: it must never lose the run's results
        log.warning("the run's page of layers could not be written (%s: %s)", type(e).__name__, e)


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
    seed_everything(cfg.seed)  # Lightning's, without importing Lightning (coxlmm/process.py)
    check_extraction(cfg.extraction)
    check_noise(cfg.noise)
    token_list(cfg.token)
    spec = ModelSpec(cfg.model)
    layers = resolve_layers(spec, list(cfg.layers))
    check_saved_dictionary(cfg, spec, [l.index for l in layers])
    dictionary_factory(cfg)(cfg.seed)  # a bad method setting (e.g. method.v_solver) fails here, before any model runs
    metrics = {name: build(node) for name, node in (cfg.metrics or {}).items() if node}
    check_metrics(metrics)
    requests = set().union(*(m.requests() for m in metrics.values()))
    train_ds = build(cfg.data, split=cfg.train_split)
    test_ds = build(cfg.data, split=cfg.test_split) if cfg.test_split else None
    style, references = spec.key.get("caption_style"), getattr(train_ds, "caption_style", None)
    if style and references and references not in (style, "both"):
        log.warning("model.prompt asks for %s captions but data.caption_style=%s: BERTScore and require_gt compare "
                    "them with references of the other grammar (set data.caption_style=%s)", style, references, style)

    t0 = time.perf_counter()
    stores = model_stages(cfg, spec, [l.index for l in layers], train_ds, test_ds, requests)
    if stores is None:  # a non-zero rank of a multi-device extraction: rank 0 does the rest
        return {}
    model_seconds = time.perf_counter() - t0
    readout = ensure_readout(spec, str(Path(cfg.paths.cache_dir) / "features"), device=cfg.device)
    if job is not None:
        job.log_stages(stores_summary(stores), model_seconds, spec.loaded)
    if not spec.loaded:
        log.info("all features cached: no model weights loaded")

    t1 = time.perf_counter()
    indices = [l.index for l in layers]
    train = Features.read(train_ds, stores.train, stores.words, indices, stores.noise_train, readout)
    test = Features.read(test_ds, stores.test, stores.words, indices, stores.noise_test, readout) \
        if stores.test else None
    scorer = build_scorer(cfg) if cfg.scorer else None
    if getattr(scorer, "clip", None) is not None:  # every job of a sweep embeds an image once (scorers/cache.py)
        scorer.clip = CachedImages(scorer.clip, Path(cfg.paths.cache_dir) / "scorer")
    flat: dict[str, float] = {}
    results: list[LayerResult] = []
    for layer in layers:
        sub = out_dir if len(layers) == 1 else out_dir / layer.dir
        res = analyse_layer(cfg, layer, spec, train, test, readout, scorer, metrics, sub, stores, len(layers) > 1)
        if cfg.report and len(layers) > 1:
            _layers_page(out_dir, [r.layer for r in results] + [layer])
        prefix = "" if len(layers) == 1 else layer.prefix
        flat.update({prefix + k: v for k, v in res.metrics.items()})
        results.append(res)
        if job is not None:
            job.log_layer(res, multi=len(layers) > 1)
    facts = run_facts(len(train.records), len(test.records) if test is not None else 0, model_seconds,
                      time.perf_counter() - t1)
    flat |= facts.scores
    flat = {k: float(v) for k, v in flat.items() if _is_number(v)}
    schema = facts.schema.merge(*(r.schema for r in results))
    (out_dir / "metrics.json").write_text(json.dumps(flat, indent=1, sort_keys=True))
    # The layers' schemas and the run facts' in one place (the sweep tables, the sweeper's objective).
    (out_dir / "metrics_schema.json").write_text(json.dumps(schema.to_json(), indent=1))
    if job is not None:
        job.log_summary(flat)
    if cfg.print_summary:
        print(summary(out_dir, results, flat, schema))
    return flat


def check_metrics(metrics: dict[str, Any]) -> None:
    """Every configured metric is a `coxlmm.metrics.base.Metric` (it declares its requests and plan)."""
    from coxlmm.metrics.base import Metric

    bad = {name: type(m).__name__ for name, m in metrics.items() if not isinstance(m, Metric)}
    if bad:
        raise CoxlmmError(f"metrics {bad} are not coxlmm metrics: subclass coxlmm.metrics.base.Metric (name, "
                          "__call__(inp) -> MetricResult; `requests`/`plan` when they need the model).")


def stores_summary(stores: Stores) -> dict[str, dict[str, Any]]:
    """Per filled entry: counts and time from its manifest (what the loggers record of the model stages)."""
    tag = (lambda w: "") if len(stores.words) == 1 else (lambda w: f"_{w}")
    entries = {f"train{tag(w)}": e for w, e in zip(stores.words, stores.train)}
    entries |= {f"test{tag(w)}": e for w, e in zip(stores.words, stores.test)}
    for split in ("noise_train", "noise_test"):
        for i, per_word in enumerate(getattr(stores, split)):
            entries |= {f"{split}_{i}{tag(w)}": e for w, e in zip(stores.words, per_word)}
    out = {}
    for name, store in entries.items():
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


def summary(out_dir: Path, results: list[LayerResult], metrics: dict[str, float], schema: Schema) -> str:
    """A short human summary: where the outputs are, the top words of each concept, the headline scores
    (the ones their metrics mark `summary`, under their labels), and warnings."""
    lines = [f"\ncoxlmm: outputs in {out_dir}"]
    for res in results:
        c = res.concepts
        lines.append(f"  {c.method}, token {c.token!r}, layer {res.layer.name}: {c.n_concepts} concepts "
                     f"from {len(res.train_records)} training samples")
        for k in range(c.n_concepts):
            lines.append(f"    {k:>2}: {', '.join(c.words[k][:6]) or '(no words)'}")
        if res.dead_note:
            lines.append(f"  warning: {res.dead_note}")
        head = [f"{s.label}{f' ({s.row})' if s.row and s.row != s.label else ''} = {res.metrics[s.key]:.{s.digits}f}"
                for s in schema.headline() if _is_number(res.metrics.get(s.key))]
        if head:
            lines.append("  " + " · ".join(head))
    return "\n".join(lines)


def resolved_config(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
