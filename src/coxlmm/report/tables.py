"""Aggregate sweeps into tables and figures: `coxlmm-tables <sweep dir> [...]`.

Nothing here knows a metric's keys: every table is rendered from the description the metrics wrote
beside their numbers (`metrics_schema.json`, metrics/schema.py), so a new metric's scores appear
with no edit here.

A job dir is any folder under the sweep holding `.hydra/config.yaml`; one with `metrics.json` gives
one *row* per layer (a multi-layer job's `layer_<name>/<key>` keys one row each, its layers read from
their concepts.json), one without is listed as failed or unfinished. Rows form one pandas DataFrame (`runs.csv`).

**Grouping.** Jobs are grouped by every config value except the seed (and paths and loggers): jobs
that differ in anything else (a swept `method.alpha`, the prompt, `data.n_train`) are never averaged.
A group's label is its method plus the keys that set it apart from the sweep's other groups of that
method, e.g. "Semi-NMF [method.alpha=0.5]". The seeds of a group are its replicates.

**Tables** (in the metrics' declared order):

    a table per TableSpec      the scores that name it, per (method, token[, row]); a `pivot` table
                               (paper Table 1, overlap) puts the methods in columns and the nulls
                               beside them (the nulls of one method's jobs, named in the note).
                               Mean over a group's seeds ± std across seeds (with one seed, the
                               score's own spread over test samples).
    paired                     each per-sample score minus each of its nulls (samples.safetensors),
                               with a hierarchical bootstrap 95 % CI over the seeds (refits), the
                               test samples and the null's draws (metrics/stats.py); * = excludes 0.
                               Every job of a group must hold the same sample ids (else an error).
    comparisons                the sweep's declared family (`compare.reference` against each other
                               method, on `compare.samples`): paired differences on the same test
                               samples (fits resampled independently), bootstrap CI and p-value,
                               Holm-corrected over the family.
    by layer / by K            the scores marked `curve`, when the sweep varies the layer or K.

Written into the sweep dir: tables.md, tables.csv (every cell, long format), runs.csv, figures
(curves by layer / K, per-concept scores against their nulls) and index.html (the concept browser's
sweep page). A missing value shows as "–". Bad input (a comparison naming a method the sweep lacks,
jobs of one group with different test samples) is an error before anything is written.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from coxlmm.errors import CoxlmmError
from coxlmm.layer import Layer
from coxlmm.metrics.schema import Schema, Score, TableSpec
from coxlmm.metrics.stats import bootstrap_diff, holm

DASH = "–"
ID_KEYS = ("job", "method", "method_display", "variant", "label", "token", "layer", "layer_name", "n_concepts", "seed",
           "model", "data")
_JOB_NUM = re.compile(r"^(\d+)_")
NOT_A_SETTING = ("seed", "paths", "logger", "hydra", "threads")  # config roots that never split a group (threads: how
# fast, not what: a job run with threads=1 beside other work is the same experiment)


# --- reading a sweep (I/O) -------------------------------------------------------------------------------
@dataclass
class Job:
    """One job dir of a sweep, as the sweep index shows it."""

    name: str
    overrides: str
    status: str  # ok | failed | unfinished
    error: str | None
    report: str | None  # the job's report.html, relative to the sweep dir


@dataclass
class Sweep:
    runs: pd.DataFrame  # one row per (job, layer)
    schema: Schema  # the jobs' descriptions, merged
    samples: dict[tuple[str, Any], dict[str, tuple[list[str], np.ndarray]]]  # (job, layer) -> name -> (ids, scores)
    points: pd.DataFrame  # per-concept scores, with job / method / token / layer
    compare: dict[str, Any] = field(default_factory=dict)  # the jobs' `compare` config
    unfinished: list[str] = field(default_factory=list)  # job dirs with a config but no metrics.json
    jobs: list[Job] = field(default_factory=list)


def read_sweep(sweep_dir: str | Path) -> Sweep:
    root = Path(sweep_dir)
    rows: list[dict[str, Any]] = []
    points: list[dict[str, Any]] = []
    samples: dict[tuple[str, Any], dict[str, tuple[list[str], np.ndarray]]] = {}
    schema = Schema()
    configs: dict[str, dict[str, Any]] = {}
    unfinished: list[str] = []
    jobs: list[Job] = []
    compare: dict[str, Any] = {}
    for job_dir in job_dirs(root):
        name = str(job_dir.relative_to(root))
        jobs.append(job_status(root, job_dir))
        if not (job_dir / "metrics.json").is_file():
            unfinished.append(name)
            continue
        config = _load_yaml(job_dir / ".hydra" / "config.yaml")
        configs[name] = config
        compare = compare or {k: v for k, v in (config.get("compare") or {}).items()}
        choices = ((_load_yaml(job_dir / ".hydra" / "hydra.yaml").get("hydra") or {}).get("runtime") or {}).get(
            "choices") or {}
        metrics = json.loads((job_dir / "metrics.json").read_text())
        concepts = {p.parent: _load_json(p) for p in [job_dir / "concepts.json", *job_dir.glob("layer_*/concepts.json")]
                    if p.is_file()}
        for path in [job_dir / "metrics_schema.json", *job_dir.glob("layer_*/metrics_schema.json")]:
            if path.is_file():
                schema = schema.merge(Schema.from_json(_load_json(path)))
        job = job_rows(name, config, choices, metrics, next(iter(concepts.values()), {}),
                       [layer for c in concepts.values() if (layer := Layer.from_json(c)) is not None])
        rows += job
        for sub, data in concepts.items():
            layer = data.get("layer")
            if (sub / "samples.safetensors").is_file():
                samples[(name, layer)] = read_samples(sub / "samples.safetensors")
            ids = {k: job[0][k] for k in ("job", "method", "method_display", "token")}
            points += [{**ids, "layer": layer, "concept": c["id"], **c["scores"]}
                       for c in data.get("concepts", []) if c.get("scores")]
    runs = pd.DataFrame(rows)
    for key in ID_KEYS:
        if key not in runs:
            runs[key] = None
    if not runs.empty:
        variants = group_variants(configs)
        runs["variant"] = runs["job"].map(variants).fillna("")
        runs["label"] = [d + (f" [{v}]" if v else "") for d, v in zip(runs["method_display"], runs["variant"])]
    points = pd.DataFrame(points)
    if not points.empty and not runs.empty:
        points = points.merge(runs[["job", "label"]].drop_duplicates(), on="job", how="left")
    return Sweep(runs, schema, samples, points, compare, unfinished, jobs)


def read_samples(path: Path) -> dict[str, tuple[list[str], np.ndarray]]:
    """samples.safetensors -> {name: (unit ids, (M,) or (M, R) scores)}."""
    from safetensors import safe_open

    out = {}
    with safe_open(str(path), framework="numpy") as f:
        meta = f.metadata() or {}
        for name in f.keys():
            out[name] = (json.loads(meta.get(f"ids:{name}", "[]")), f.get_tensor(name))
    return out


def job_status(root: Path, job_dir: Path) -> Job:
    """ok (metrics.json), failed (its Hydra log holds an ERROR line: the error) or unfinished."""
    overrides = _load_yaml_list(job_dir / ".hydra" / "overrides.yaml")
    report = job_dir / "report.html"
    rel = str(report.relative_to(root)) if report.is_file() else None
    if (job_dir / "metrics.json").is_file():
        return Job(str(job_dir.relative_to(root)), ",".join(overrides), "ok", None, rel)
    errors = [line.split("][ERROR] - ", 1)[1] for log in job_dir.glob("*.log")
              for line in log.read_text(errors="replace").splitlines() if "][ERROR] - " in line]
    return Job(str(job_dir.relative_to(root)), ",".join(overrides), "failed" if errors else "unfinished",
               errors[-1] if errors else None, rel)


def _load_yaml_list(path: Path) -> list[str]:
    if not path.is_file():
        return []
    from omegaconf import OmegaConf

    data = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    return [str(x) for x in data] if isinstance(data, list) else []


def collect(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """One dict per (job, layer) under `sweep_dir`, in job-number order."""
    return read_sweep(sweep_dir).runs.to_dict("records")


def job_dirs(root: Path) -> list[Path]:
    """Folders with a `.hydra/config.yaml` (not the sweep root's own, nor submitit's), by job number."""
    dirs = [p.parent.parent for p in root.rglob(".hydra/config.yaml")
            if ".submitit" not in p.parts and p.parent.parent != root]

    def order(p: Path) -> tuple[int, str]:
        m = _JOB_NUM.match(p.name)
        return (int(m.group(1)) if m else 1 << 30, str(p))

    return sorted(dirs, key=order)


def _load_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    from omegaconf import OmegaConf

    # resolve=False: the saved config holds ${hydra:...} interpolations that only resolve inside a run.
    data = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    return data if isinstance(data, dict) else {}


def _load_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def job_rows(job: str, config: dict[str, Any], choices: dict[str, Any], metrics: dict[str, Any],
             concepts: dict[str, Any] | None = None, layers: Sequence[Layer] = ()) -> list[dict[str, Any]]:
    """The rows of one job: its identity (config, concepts.json) and its metrics, split by layer.
    `layers`: the job's layers, from their concepts.json; a multi-layer job's keys of layer l are
    `l.prefix + key` (`layer_29/overlap`), one row per layer, index order (`norm` last)."""
    concepts = concepts or {}
    method_cfg = config.get("method") if isinstance(config.get("method"), dict) else {}
    extra = concepts.get("extra") or {}
    name = _first_str(method_cfg.get("name"), choices.get("method"), concepts.get("method"),
                      str(method_cfg.get("_target_", "?")).rsplit(".", 1)[-1].lower())
    ids = {"job": job, "method": name,
           "method_display": _first_str(method_cfg.get("display_name"), extra.get("method_display"), name),
           "token": "+".join(map(str, config["token"])) if isinstance(config.get("token"), list) else config.get("token"),
           "n_concepts": _int(method_cfg.get("n_concepts")),
           "seed": _int(config.get("seed")), "model": choices.get("model"), "data": choices.get("data")}
    per_layer = {l: {k[len(l.prefix):]: v for k, v in metrics.items() if k.startswith(l.prefix)}
                 for l in sorted(set(layers))}
    per_layer = {l: vals for l, vals in per_layer.items() if vals}
    if per_layer:
        shared = {k: v for k, v in metrics.items() if not any(k.startswith(l.prefix) for l in per_layer)}
        return [{**ids, "layer": l.index, "layer_name": l.name, **shared, **vals} for l, vals in per_layer.items()]
    shared = dict(metrics)
    layer = _int(concepts.get("layer")) if "layer" in concepts else _int((config.get("layers") or [None])[0])
    return [{**ids, "layer": layer, "layer_name": extra.get("layer_name", str(layer)), **shared}]


def _first_str(*xs: Any) -> str:
    return next((x for x in xs if isinstance(x, str) and x), "?")


def _int(x: Any) -> int | None:
    try:
        return int(x)
    except (TypeError, ValueError):
        return None


# --- grouping (pure) -----------------------------------------------------------------------------------
def flatten(config: Any, prefix: str = "") -> dict[str, str]:
    """A config as {dotted key: canonical JSON of the value} (lists are values)."""
    if isinstance(config, dict):
        out = {}
        for k, v in config.items():
            out |= flatten(v, f"{prefix}{k}.")
        return out
    return {prefix[:-1]: json.dumps(config, sort_keys=True, default=str)}


AXES = ("token", "layers", "method.n_concepts")  # rows and columns of the tables, not variants


def group_variants(configs: dict[str, dict[str, Any]]) -> dict[str, str]:
    """job -> the settings that set its group apart from the other groups of its method ("" for none).

    Every config value counts except the seed, paths, loggers and the table axes (token, layers, K); a
    method's own keys count only where they vary between jobs of that method (`method=pca` changes
    every method.* key, which the method's name already says)."""
    flat = {job: {k: v for k, v in flatten(c).items() if k.split(".", 1)[0] not in NOT_A_SETTING and k not in AXES}
            for job, c in configs.items()}
    method_of = {job: f.get("method.name", f.get("method._target_", "")) for job, f in flat.items()}
    keys = sorted({k for f in flat.values() for k in f})
    varying: dict[str, set[str] | None] = {}  # key -> the methods within which it varies (None: across the sweep)
    for k in keys:
        if k.startswith("method."):
            by_method: dict[str, set[str]] = {}
            for job, f in flat.items():
                by_method.setdefault(method_of[job], set()).add(f.get(k, "∅"))
            within = {m for m, values in by_method.items() if len(values) > 1}
            if within:
                varying[k] = within
        elif len({f.get(k, "∅") for f in flat.values()}) > 1:
            varying[k] = None
    return {job: ", ".join(f"{k}={json.loads(f[k]) if k in f else '∅'}" for k, within in varying.items()
                           if within is None or method_of[job] in within)
            for job, f in flat.items()}


# --- cells (pure) ------------------------------------------------------------------------------------------
def fmt(mean: Any, std: Any = None, digits: int = 3, mark: str = "") -> str:
    """'0.817 ± 0.012', '0.817', or '–'."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return DASH
    s = f"{float(mean):.{digits}f}"
    if std is not None and not (isinstance(std, float) and math.isnan(std)):
        s += f" ± {float(std):.{digits}f}"
    return s + mark


@dataclass
class Table:
    name: str  # key in tables.csv
    title: str
    frame: pd.DataFrame  # formatted cells (strings), index = row labels
    values: pd.DataFrame  # long format: row, column, mean, std (lo, hi, p where a test made them)
    note: str = ""


GROUP = ["token", "method", "variant"]


def representative(runs: pd.DataFrame, every_layer: bool = False) -> pd.DataFrame:
    """The rows the paper tables show: per group, the highest layer (every layer with `every_layer`),
    then K = 20 (the paper's) or the largest K; every seed of those."""
    if runs.empty:
        return runs
    out = []
    for _, g in runs.groupby(GROUP, sort=False, dropna=False):
        layer = g["layer"].max() if g["layer"].notna().any() else None
        g = g[g["layer"] == layer] if layer is not None and not every_layer else g
        ks = set(g["n_concepts"].dropna())
        k = 20 if 20 in ks else (max(ks) if ks else None)
        out.append(g[g["n_concepts"] == k] if k is not None else g)
    return pd.concat(out)


def across_seeds(rows: pd.DataFrame, score: Score) -> tuple[float | None, float | None]:
    """(mean, std) of a score over a group's seeds; with one seed, the std is the score's own spread
    over samples (its `spread` key) when it has one."""
    key = score.key
    if key not in rows or rows[key].isna().all():
        return None, None
    v = rows[key].dropna().astype(float)
    if len(v) > 1:
        return float(v.mean()), float(v.std(ddof=0))
    std = rows[score.spread].dropna().astype(float) if score.spread and score.spread in rows else pd.Series(dtype=float)
    return float(v.iloc[0]), float(std.iloc[0]) if len(std) else None


def interval(rows: pd.DataFrame, score: Score) -> tuple[float, float] | None:
    """(lo, hi) of a score with a CI when the group has one seed (its own interval), else None."""
    if not score.ci or score.key not in rows or rows[score.key].notna().sum() != 1:
        return None
    lo_key, hi_key = score.ci
    if lo_key not in rows or hi_key not in rows:
        return None
    lo, hi = rows[lo_key].dropna(), rows[hi_key].dropna()
    if not len(lo) or not len(hi) or not (_finite(lo.iloc[0]) and _finite(hi.iloc[0])):
        return None
    return float(lo.iloc[0]), float(hi.iloc[0])


def interval_mark(ci: tuple[float, float] | None, score: Score) -> str:
    """" [lo, hi]" of an `interval`, "" for None."""
    return "" if ci is None else f" [{ci[0]:+.{score.digits}f}, {ci[1]:+.{score.digits}f}]"


def _ordered(values: Sequence[Any]) -> list[Any]:
    return list(dict.fromkeys(v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))))


Cell = tuple  # (row labels, column, mean, std, mark[, extra columns for tables.csv])


def _build(name: str, title: str, cells: list[Cell], index_names: list[str], note: str = "", digits: dict | None = None,
           columns: list[str] | None = None) -> Table:
    """A Table from cells (row labels, column, mean, std, mark[, {lo, hi, p}]), columns in first-seen order."""
    digits = digits or {}
    values = pd.DataFrame([{"row": " / ".join(map(str, c[0])), "column": c[1], "mean": c[2], "std": c[3],
                            **(c[5] if len(c) > 5 else {})} for c in cells])
    if not cells:
        return Table(name, title, pd.DataFrame(), values, note)
    long = pd.DataFrame([{**dict(zip(index_names, c[0])), "column": c[1],
                          "cell": c[4] if isinstance(c[4], str) and c[2] is None and c[4] else
                          fmt(c[2], c[3], digits.get(c[1], 3), c[4])} for c in cells])
    frame = long.pivot(index=index_names, columns="column", values="cell")
    frame = frame.reindex(index=pd.MultiIndex.from_tuples(_ordered([tuple(c[0]) for c in cells]), names=index_names)
                          if len(index_names) > 1 else _ordered([c[0][0] for c in cells]),
                          columns=columns or _ordered([c[1] for c in cells])).fillna(DASH)
    if len(index_names) == 1:
        frame.index.name = index_names[0]
    return Table(name, title, frame, values, note)


# --- tables (pure) --------------------------------------------------------------------------------------------
def reference_method(runs: pd.DataFrame, compare: dict[str, Any]) -> str | None:
    """The method whose jobs give a pivoted table's nulls: compare.reference, else Semi-NMF, else the first."""
    methods = _ordered(runs["method"]) if not runs.empty else []
    for m in (compare.get("reference"), "semi_nmf"):
        if m in methods:
            return m
    return methods[0] if methods else None


def pivot_table(spec: TableSpec, scores: list[Score], runs: pd.DataFrame, compare: dict[str, Any]) -> Table:
    """Methods as columns, (token, row) as rows; the nulls' columns from the reference method's jobs."""
    rows = representative(runs)
    ref = reference_method(rows, compare)
    cells: list[Cell] = []
    digits = {}
    # Rows that have nulls beside them first (CS, BS), then the others (L0); columns: the nulls, the
    # methods in sweep order, then the references shown after them (GT-captions).
    row_labels = _ordered([s.row or s.label for s in scores])
    row_labels.sort(key=lambda r: not any(s.of for s in scores if (s.row or s.label) == r))
    groups = list(rows.groupby(GROUP, sort=False, dropna=False)) if not rows.empty else []
    order = _ordered([s.of for s in scores if s.of and not s.last]) + _ordered([g["label"].iloc[0] for _, g in groups]) \
        + _ordered([s.of for s in scores if s.of and s.last])
    per_token: dict[tuple[str, str], list[float]] = {}
    for token in _ordered(rows["token"]) if not rows.empty else []:
        of_token = [(key, g) for key, g in groups if key[0] == token]
        ref_rows = next((g for key, g in of_token if key[1] == ref), None)
        for label in row_labels:
            here = [s for s in scores if (s.row or s.label) == label]
            columns: list[tuple[str, pd.DataFrame | None, Score]] = [(s.of, ref_rows, s) for s in here if s.of]
            columns += [(g["label"].iloc[0], g, s) for _, g in of_token for s in here if not s.of]
            for column, g, s in columns:
                mean, std = across_seeds(g, s) if g is not None else (None, None)
                cells.append(((token, label), column, mean, std, ""))
                digits[column] = s.digits
                if mean is not None:
                    per_token.setdefault((label, column), []).append(mean)
    if spec.token_mean and len(_ordered(rows["token"]) if not rows.empty else []) > 1:
        for (label, column), vals in per_token.items():
            cells.append((("mean over tokens", label), column, float(np.mean(vals)), float(np.std(vals)), ""))
    display = rows.loc[rows["method"] == ref, "label"].iloc[0] if ref is not None and not rows.empty else ""
    note = spec.note + (f" Nulls from the {display} jobs." if any(s.of for s in scores) and display else "")
    return _build(spec.name, spec.title, cells, ["token", "metric"], note.strip(), digits, columns=order)


def rows_table(spec: TableSpec, scores: list[Score], runs: pd.DataFrame, x: str | None = None) -> Table:
    """One row per (method, token[, x][, row]); a column per score label (x: a swept axis, or the layer of
    a `by_layer` table)."""
    if spec.by_layer and x is None:
        rows, x = representative(runs, every_layer=True), "layer"
    else:
        rows = runs if x else representative(runs)
    keys = GROUP + ([x] if x else [])
    cells: list[Cell] = []
    digits = {}
    row_labels = _ordered([s.row or "all" for s in scores])
    with_rows = row_labels != ["all"]
    for _, g in rows.groupby(keys, sort=False, dropna=True) if not rows.empty else ():
        head = (g["label"].iloc[0], str(g["token"].iloc[0]))
        if x:
            head += (g["layer_name"].iloc[0] if x == "layer" else str(g[x].iloc[0]),)
        for label in row_labels:
            for s in (s for s in scores if (s.row or "all") == label):
                mean, std = across_seeds(g, s)
                if mean is not None:
                    ci = interval(g, s)
                    mark = interval_mark(ci, s)
                    extra = {"lo": ci[0], "hi": ci[1]} if ci else {}  # tables.csv carries the interval too
                    cells.append((head + ((label,) if with_rows else ()), s.label, mean, None if mark else std, mark,
                                  extra))
                    digits[s.label] = s.digits
    index = ["method", "token"] + ([{"n_concepts": "K"}.get(x, x)] if x else []) + (["row"] if with_rows else [])
    return _build(spec.name, spec.title, cells, index, spec.note, digits)


def sample_arrays(sweep: Sweep, g: pd.DataFrame, name: str) -> list[tuple[str, list[str], np.ndarray]]:
    """(job, ids, scores) of array `name` for each job (seed) of a group that has it."""
    out = []
    for job, layer in zip(g["job"], g["layer"]):
        have = sweep.samples.get((job, layer), {})
        if name in have:
            out.append((job, *have[name]))
    return out


def stack(found: list[tuple[str, list[str], np.ndarray]], unit: str, what: str) -> tuple[Any, list[str]]:
    """The seeds' arrays as (S, M[, R]) for test-sample units (their ids must agree: refused otherwise),
    or a list of per-fit arrays for concept units (ragged)."""
    if unit != "sample":
        return [a[:, None] if a.ndim == 1 else a for _, _, a in found], []
    ids = found[0][1]
    for job, other, _ in found[1:]:
        if other != ids:
            diff = next((i for i, (a, b) in enumerate(zip(ids, other)) if a != b), min(len(ids), len(other)))
            raise CoxlmmError(
                f"{what}: jobs {found[0][0]!r} and {job!r} scored different test samples ({len(ids)} vs {len(other)} "
                f"ids; first difference at row {diff}); their per-sample scores cannot be paired or averaged. "
                "Jobs of one group must share the data settings (data.*, extraction.*, the token): rerun them, or "
                "pass their sweeps to coxlmm-tables separately.")
    arrays = [a[:, None] if a.ndim == 1 else a for _, _, a in found]  # (M, R) per seed
    if len({a.shape for a in arrays}) > 1:
        return arrays, ids
    return np.stack(arrays), ids  # (S, M, R)


def paired_table(sweep: Sweep, seed: int = 0) -> Table:
    """Each per-sample score against each of its nulls, per group: hierarchical bootstrap over seeds,
    units and the null's draws."""
    rows = representative(sweep.runs)
    cells: list[Cell] = []
    described = {s.name: s for s in sweep.schema.samples}
    for s in (s for s in sweep.schema.samples if s.nulls and not s.of):
        for _, g in rows.groupby(GROUP, sort=False, dropna=False) if not rows.empty else ():
            found = sample_arrays(sweep, g, s.name)
            if not found:
                continue
            label, token = g["label"].iloc[0], str(g["token"].iloc[0])
            A, _ = stack(found, s.unit, f"paired {s.name} of {label}, token {token}")
            for null in s.nulls:
                nf = sample_arrays(sweep, g, null)
                if len(nf) != len(found):
                    continue
                B, _ = stack(nf, s.unit, f"paired {null} of {label}, token {token}")
                d = bootstrap_diff(A, B, paired_units=True, paired_fits=True, seed=seed)
                title = described[null].of if null in described else null
                mark = f" [{d.lo:+.3f}, {d.hi:+.3f}]{'*' if d.significant else ''}"
                cells.append(((token, s.label, label), title, d.mean, None, mark,
                              {"lo": d.lo, "hi": d.hi, "p": d.p}))
    return _build("paired", "Paired differences: score minus its null (per unit; CI over seeds, units and null draws)",
                  cells, ["token", "metric", "method"],
                  "Hierarchical bootstrap 95 % CI of the mean difference (10,000 resamples): the seeds (refits), the "
                  "units (test samples; concepts for concept scores) and each unit's null draws resampled; "
                  "* = the CI excludes 0. Not corrected for multiplicity: see the comparisons table for the "
                  "declared family.")


def comparisons_table(sweep: Sweep, seed: int = 0) -> Table | None:
    """The sweep's declared family: the reference method minus each other method, per token and per
    compared array; bootstrap CI, p-value and Holm-adjusted p over the family."""
    compare = sweep.compare or {}
    ref = compare.get("reference")
    if not ref or sweep.runs.empty:
        return None
    rows = representative(sweep.runs)
    methods = _ordered(rows["method"])
    against = list(compare.get("against") or [m for m in methods if m != ref])
    missing = [m for m in [ref, *against] if m not in methods]
    if missing:
        raise CoxlmmError(f"compare: {', '.join(map(repr, missing))} not in this sweep (methods: {', '.join(methods)}); "
                          "set compare.reference / compare.against to methods the sweep ran.")
    described = {s.name: s for s in sweep.schema.samples}
    names = list(compare.get("samples") or [s.name for s in sweep.schema.samples
                                             if s.unit == "sample" and s.nulls and not s.of])
    unknown = [n for n in names if n not in described]
    if unknown:
        raise CoxlmmError(f"compare.samples: {', '.join(map(repr, unknown))} are not per-unit scores of this sweep "
                          f"(it has: {', '.join(described) or 'none'}).")
    family: list[tuple[tuple, str, Any]] = []
    for token in _ordered(rows["token"]):
        of_token = rows[rows["token"] == token]
        for name in names:
            s = described[name]
            for ref_key, ref_rows in of_token[of_token["method"] == ref].groupby(GROUP, sort=False, dropna=False):
                found = sample_arrays(sweep, ref_rows, name)
                if not found:
                    continue
                A, ids = stack(found, s.unit, f"compare {name} of {ref}, token {token}")
                for other in against:
                    for _, og in of_token[of_token["method"] == other].groupby(GROUP, sort=False, dropna=False):
                        of = sample_arrays(sweep, og, name)
                        if not of:
                            continue
                        B, other_ids = stack(of, s.unit, f"compare {name} of {other}, token {token}")
                        if s.unit == "sample" and other_ids != ids:
                            raise CoxlmmError(
                                f"compare: {ref} (job {found[0][0]!r}) and {other} (job {of[0][0]!r}) scored different "
                                f"test samples for token {token!r} ({len(ids)} vs {len(other_ids)}); a paired comparison "
                                "needs the same samples: give both methods the same data settings.")
                        d = bootstrap_diff(A, B, paired_units=s.unit == "sample", paired_fits=False, seed=seed)
                        family.append(((token, s.label, f"{ref_rows['label'].iloc[0]} − {og['label'].iloc[0]}"),
                                       "Δ", d))
    if not family:
        return None
    adjusted = holm([d.p for _, _, d in family])
    cells: list[Cell] = []
    for (row, _, d), p_holm in zip(family, adjusted):
        extra = {"lo": d.lo, "hi": d.hi, "p": d.p, "p_holm": float(p_holm)}
        cells.append((row, "Δ", d.mean, None, "", extra))
        cells.append((row, "95 % CI", None, None, f"[{d.lo:+.3f}, {d.hi:+.3f}]", extra))
        cells.append((row, "p", None, None, f"{d.p:.4f}", extra))
        cells.append((row, "p (Holm)", None, None, f"{p_holm:.4f}" + ("*" if p_holm < 0.05 else ""), extra))
    return _build("comparisons", f"Method against method: {ref} minus each other method (paired on the test samples)",
                  cells, ["token", "metric", "comparison"],
                  f"A family of {len(family)} comparisons declared by the sweep (compare.reference={ref}, "
                  f"scores: {', '.join(names)}). Δ: mean over test samples and seeds; 95 % CI "
                  "and p: bootstrap resampling the test samples (paired) and each method's seeds (refits) "
                  "independently; p (Holm): Holm-adjusted over the family, * = below 0.05.")


def score_tables(sweep: Sweep) -> list[Table]:
    """A table per declared TableSpec, from the scores that name it."""
    out = []
    for spec in sorted(sweep.schema.tables, key=lambda t: t.order):
        scores = [s for s in sweep.schema.scores if spec.name in s.tables]
        if scores:
            out.append(pivot_table(spec, scores, sweep.runs, sweep.compare) if spec.pivot
                       else rows_table(spec, scores, sweep.runs))
    return out


def curve_tables(sweep: Sweep) -> list[Table]:
    """By layer / by K: every score marked `curve`, when the sweep varies that axis."""
    curves = [s for s in sweep.schema.scores if s.curve and not s.row]
    labels = [s.label for s in curves]
    curves = [s if labels.count(s.label) == 1 else Score(**{**s.__dict__, "label": f"{s.label} ({s.tables[0]})"})
              for s in curves]
    out = []
    runs = sweep.runs
    for x, name, title in (("layer", "layers", "By layer"), ("n_concepts", "k", "By dictionary size K")):
        if _varies(runs, x) and curves:
            ordered = runs.sort_values(x, na_position="last", kind="stable")
            out.append(rows_table(TableSpec(name, title), curves, ordered, x=x))
    return out


def _varies(runs: pd.DataFrame, key: str) -> bool:
    return key in runs and runs[key].dropna().nunique() > 1


def tables(sweep: Sweep) -> list[Table]:
    out = score_tables(sweep) + [paired_table(sweep)]
    cmp = comparisons_table(sweep)
    if cmp is not None:
        out.append(cmp)
    out += curve_tables(sweep)
    # A table with no value at all (Table 1 of a layer sweep, whose jobs hold many layers) says nothing.
    return [t for t in out if "mean" in t.values and (t.values["mean"].notna().any() or "lo" in t.values)]


# --- rendering (pure) ---------------------------------------------------------------------------------------
def to_markdown(t: Table) -> str:
    body = t.frame.reset_index().to_markdown(index=False, disable_numparse=True) if not t.frame.empty else f"| {DASH} |\n| --- |"
    return f"## {t.title}\n\n{body}\n" + (f"\n{t.note}\n" if t.note else "")


def report_markdown(sweep_name: str, all_tables: Sequence[Table], n_rows: int, unfinished: Sequence[str]) -> str:
    head = [f"# Sweep `{sweep_name}`", "", f"{n_rows} rows (job × layer). Missing values: {DASH}.", ""]
    if unfinished:
        head += [f"Jobs without metrics.json (failed or unfinished): {', '.join(unfinished)}", ""]
    return "\n".join(head) + "\n" + "\n".join(to_markdown(t) for t in all_tables)


def csv_records(all_tables: Sequence[Table]) -> pd.DataFrame:
    """Every cell of every table: table, row, column, mean, std (and lo, hi, p, p_holm of the tests)."""
    frames = [t.values.assign(table=t.name) for t in all_tables if not t.values.empty]
    if not frames:
        return pd.DataFrame(columns=["table", "row", "column", "mean", "std"])
    out = pd.concat(frames)
    return out[["table", "row", "column", "mean", "std", *[c for c in ("lo", "hi", "p", "p_holm") if c in out]]]


def runs_frame(runs: pd.DataFrame) -> pd.DataFrame:
    ids = [k for k in ID_KEYS if k in runs]
    return runs[ids + sorted(c for c in runs.columns if c not in ids)]


# --- figures (pure: they return matplotlib Figures) --------------------------------------------------------
def _figure(*args, **kwargs):
    from matplotlib.figure import Figure

    return Figure(*args, **kwargs)


def curve_figure(runs: pd.DataFrame, schema: Schema, x: str):
    """One panel per table of `curve` scores against x (layer or K); a line per (method, token) and
    score, the dictionary's solid, its baselines' dashed."""
    curves = [s for s in schema.scores if s.curve and not s.row and s.key in runs]
    if not _varies(runs, x) or not curves:
        return None
    panels = _ordered([s.tables[0] if s.tables else "other" for s in curves])
    fig = _figure(figsize=(4.6 * len(panels), 4.0), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels):
        for s in (s for s in curves if (s.tables[0] if s.tables else "other") == panel):
            for label, g in runs.dropna(subset=[x]).groupby("label", sort=False):
                for token, gt in g.groupby("token", sort=False):
                    d = gt.groupby(x)[s.key].mean().dropna()
                    if len(d):
                        ax.plot(d.index, d.values, "--" if s.of else "-o", ms=3,
                                label=f"{label}, {token}: {s.label}")
        ax.set(xlabel="layer" if x == "layer" else "K (concepts)", title=schema.table(panel).title[:60])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    return fig


def scatter_figure(points: pd.DataFrame, schema: Schema):
    """Per concept: each per-concept score (y) against its null (x), one colour per method."""
    pairs = [c for c in schema.concepts if c.null and not points.empty and {c.key, c.null} <= set(points.columns)]
    if not pairs:
        return None
    fig = _figure(figsize=(4.6 * len(pairs), 4.4), layout="constrained")
    for ax, c in zip(fig.subplots(1, len(pairs), squeeze=False)[0], pairs):
        pts = points.dropna(subset=[c.key, c.null])
        for label, g in pts.groupby("label" if "label" in pts else "method_display", sort=False):
            above = int((g[c.key] > g[c.null]).sum())
            ax.scatter(g[c.null], g[c.key], s=12, alpha=0.7, label=f"{label} ({above}/{len(g)} above the diagonal)")
        lo = float(pts[[c.key, c.null]].min().min())
        hi = float(pts[[c.key, c.null]].max().max())
        ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8, ls="--")
        ax.set(xlabel="its null", ylabel=c.label, title=f"{c.label}: per concept")
        ax.legend(fontsize=7)
    return fig


# --- writing (I/O) --------------------------------------------------------------------------------------------
def write_report(sweep_dir: str | Path, sweep: Sweep | None = None, figures: bool = True) -> list[Path]:
    """Write a sweep's tables, runs and figures into its dir (read it unless given); returns the files.
    Every table is computed before the first file is written: a refused table leaves no partial report."""
    root = Path(sweep_dir)
    sweep = sweep if sweep is not None else read_sweep(root)
    all_tables = tables(sweep)
    figs = {}
    if figures:
        figs = {"by_layer.png": curve_figure(sweep.runs, sweep.schema, "layer"),
                "by_k.png": curve_figure(sweep.runs, sweep.schema, "n_concepts"),
                "concept_scores.png": scatter_figure(sweep.points, sweep.schema)}
    (root / "tables.md").write_text(report_markdown(root.name, all_tables, len(sweep.runs), sweep.unfinished))
    csv_records(all_tables).to_csv(root / "tables.csv", index=False)
    runs_frame(sweep.runs).to_csv(root / "runs.csv", index=False)
    paths = [root / "tables.md", root / "tables.csv", root / "runs.csv"]
    for name, fig in figs.items():
        if fig is not None:
            fig.savefig(root / name, dpi=120)
            paths.append(root / name)
    paths.append(write_index(root, sweep, [p for p in paths if p.suffix == ".png"]))
    return paths


def write_index(root: Path, sweep: Sweep, figures: list[Path]) -> Path:
    """The sweep's index.html (report/browser): jobs with their headline metrics and links, tables, figures."""
    from coxlmm.report.browser import write_sweep_index

    by_job = {r["job"]: r for r in sweep.runs.to_dict("records")} if not sweep.runs.empty else {}
    head = sweep.schema.headline()
    jobs = [{"job": j.name, "overrides": j.overrides, "status": j.status, "error": j.error, "report": j.report,
             "metrics": {s.label + (f" ({s.row})" if s.row and s.row != s.label else ""): by_job[j.name][s.key]
                         for s in head if j.name in by_job and _finite(by_job[j.name].get(s.key))}}
            for j in sweep.jobs]
    return write_sweep_index(root, jobs=jobs, tables_md=(root / "tables.md").read_text(), figures=figures)


def _finite(x: Any) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="coxlmm-tables", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dirs", nargs="+", metavar="SWEEP_DIR", help="a Hydra multirun dir, e.g. outputs/multirun/paper_table1")
    parser.add_argument("--no-figures", action="store_true", help="write the tables only")
    args = parser.parse_args(argv)
    for d in args.sweep_dirs:
        root = Path(d)
        if not root.is_dir():
            print(f"coxlmm-tables: error: {d!r} is not a directory; pass a sweep dir such as "
                  "outputs/multirun/paper_table1.", file=sys.stderr)
            return 2
        sweep = read_sweep(root)
        if sweep.runs.empty:
            print(f"coxlmm-tables: error: no finished job under {d!r} (a job dir holds metrics.json and "
                  f".hydra/config.yaml; {len(sweep.unfinished)} job dirs without metrics.json).", file=sys.stderr)
            return 2
        try:
            written = write_report(root, sweep, figures=not args.no_figures)
        except CoxlmmError as e:
            print(f"coxlmm-tables: error in {d}: {e}", file=sys.stderr)
            return 2
        for path in written:
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
