"""Aggregate sweeps into the paper's tables and figures: `coxlmm-tables <sweep dir> [...]`.

A job dir is any folder under the sweep holding `.hydra/config.yaml` (Hydra's `<num>_<overrides>`
subdirs, under any launcher); one with `metrics.json` gives one *row* per layer (a multi-layer job's
`layer_<l>/<metric>` keys one row each), one without is listed as failed or unfinished. Rows form
one pandas DataFrame (`runs.csv`); every table is a group-by / pivot of it:

    Table 1            per token, CS / BS of the test samples' top-1 concept: the nulls (Rnd-Words,
                       Token-only, Rnd-Concept, Noise-Imgs), every method, GT-captions; and the
                       methods' test L0. Mean over test samples, ± std across seeds (or, with one
                       seed, ± std over test samples).
    Paired differences each method's top-1 minus each null, per sample, averaged over seeds, with a
                       bootstrap 95 % CI over test samples; * = the CI excludes 0
                       (from each job's `test_scores.json`).
    Overlap            tokens x methods (lower = more disentangled), and the mean over tokens.
    Causal             per method: prediction recovered by the reconstruction, KL, ablation of the top-1
                       concept against a random direction, steering success and fluency at each α,
                       with the random-direction and DiffMean controls (when the sweep ran metrics=causal).
    Recovery           per method: matched recovery overall and per factor of the target object,
                       beside the same dictionary on the prefix-only control; corrected purity and
                       grounding accuracy; the centred random dictionary and the supervised DiffMean
                       reference as rows (mean ± std over tokens and seeds).
    By layer / by K    when the sweep varies them (layer ablation with the lens readability of each
                       layer; reconstruction against K).

Methods appear in the order the sweep lists them, under the display name they carry
(`concepts.json`: extra.method_display, from the method's config). Written into the sweep dir:
tables.md, tables.csv (every cell, long format: table,row,column,mean,std), runs.csv (every row,
every metric), layer_ablation.png, recon_vs_k.png, grounding_scatter.png, and index.html (the concept
browser's sweep page: one row per job, failed ones listed with their error, linking each job's
report.html). A missing value shows as "–".
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

DASH = "–"
ID_KEYS = ("job", "method", "method_display", "token", "layer", "layer_name", "n_concepts", "seed", "model", "data")
NULLS = (("rnd_words", "Rnd-Words"), ("token_only", "Token-only"), ("rnd_concept", "Rnd-Concept"),
         ("noise_imgs", "Noise-Imgs"))
_LAYER_KEY = re.compile(r"^layer_([^/]+)/(.+)$")
_JOB_NUM = re.compile(r"^(\d+)_")


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
    points: pd.DataFrame  # per-concept grounding points, with job / method / token / layer
    test_scores: dict[tuple[str, Any], dict[str, Any]]  # (job, layer) -> test_scores.json
    scorers: list[dict[str, Any]] = field(default_factory=list)  # distinct scorer_fingerprint.json of the jobs
    unfinished: list[str] = field(default_factory=list)  # job dirs with a config but no metrics.json
    jobs: list[Job] = field(default_factory=list)


def read_sweep(sweep_dir: str | Path) -> Sweep:
    root = Path(sweep_dir)
    rows: list[dict[str, Any]] = []
    points: list[dict[str, Any]] = []
    scores: dict[tuple[str, Any], dict[str, Any]] = {}
    scorers: list[dict[str, Any]] = []
    unfinished: list[str] = []
    jobs: list[Job] = []
    for job_dir in job_dirs(root):
        name = str(job_dir.relative_to(root))
        jobs.append(job_status(root, job_dir))
        if not (job_dir / "metrics.json").is_file():
            unfinished.append(name)
            continue
        config = _load_yaml(job_dir / ".hydra" / "config.yaml")
        choices = ((_load_yaml(job_dir / ".hydra" / "hydra.yaml").get("hydra") or {}).get("runtime") or {}).get(
            "choices") or {}
        metrics = json.loads((job_dir / "metrics.json").read_text())
        concepts = {p.parent: _load_json(p) for p in [job_dir / "concepts.json", *job_dir.glob("layer_*/concepts.json")]
                    if p.is_file()}
        job = job_rows(name, config, choices, metrics, next(iter(concepts.values()), {}),
                       {str((c.get("extra") or {}).get("layer_name", c.get("layer"))): c.get("layer")
                        for c in concepts.values()})
        rows += job
        for sub, data in concepts.items():
            layer = data.get("layer")
            for path, bucket in ((sub / "grounding_points.json", "points"), (sub / "test_scores.json", "scores"),
                                 (sub / "scorer_fingerprint.json", "scorer")):
                if not path.is_file():
                    continue
                content = json.loads(path.read_text())
                if bucket == "scorer":
                    if content not in scorers:
                        scorers.append(content)
                elif bucket == "scores":
                    scores[(name, layer)] = content
                else:
                    ids = {k: job[0][k] for k in ("job", "method", "method_display", "token")}
                    points += [{**ids, "layer": layer, **p} for p in content if isinstance(p, dict)]
    runs = pd.DataFrame(rows)
    for key in ID_KEYS:
        if key not in runs:
            runs[key] = None
    return Sweep(runs, pd.DataFrame(points), scores, scorers, unfinished, jobs)


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
             concepts: dict[str, Any] | None = None, layer_of: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The rows of one job: its identity (config, concepts.json) and its metrics, split by layer.
    `layer_of`: layer name ("29", "norm") -> layer index, from the layers' concepts.json."""
    concepts = concepts or {}
    method_cfg = config.get("method") if isinstance(config.get("method"), dict) else {}
    extra = concepts.get("extra") or {}
    name = _first_str(method_cfg.get("name"), choices.get("method"), concepts.get("method"),
                      str(method_cfg.get("_target_", "?")).rsplit(".", 1)[-1].lower())
    ids = {"job": job, "method": name,
           "method_display": _first_str(method_cfg.get("display_name"), extra.get("method_display"), name),
           "token": config.get("token"), "n_concepts": _int(method_cfg.get("n_concepts")),
           "seed": _int(config.get("seed")), "model": choices.get("model"), "data": choices.get("data")}
    per_layer: dict[str, dict[str, Any]] = {}
    shared: dict[str, Any] = {}
    for key, v in metrics.items():
        m = _LAYER_KEY.match(key)
        if m:
            per_layer.setdefault(m.group(1), {})[m.group(2)] = v
        else:
            shared[key] = v
    if per_layer:
        layer_of = layer_of or {}
        return [{**ids, "layer": _int(layer_of.get(name_, name_)), "layer_name": name_, **shared, **vals}
                for name_, vals in sorted(per_layer.items(), key=lambda kv: _layer_sort(kv[0]))]
    layer = _int(concepts.get("layer")) if "layer" in concepts else _int((config.get("layers") or [None])[0])
    return [{**ids, "layer": layer, "layer_name": extra.get("layer_name", str(layer)), **shared}]


def _layer_sort(name: str) -> float:
    return float(name) if name.lstrip("-").isdigit() else math.inf  # "norm" after every block


def _first_str(*xs: Any) -> str:
    return next((x for x in xs if isinstance(x, str) and x), "?")


def _int(x: Any) -> int | None:
    try:
        return int(x)
    except (TypeError, ValueError):
        return None


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
    values: pd.DataFrame  # long format: row, column, mean, std
    note: str = ""


def representative(runs: pd.DataFrame) -> pd.DataFrame:
    """The rows the paper tables show: per (token, method), the highest layer, then K = 20 (the paper's) or
    the largest K; every seed of those."""
    if runs.empty:
        return runs
    out = []
    for _, g in runs.groupby(["token", "method"], sort=False, dropna=False):
        layer = g["layer"].max() if g["layer"].notna().any() else None
        g = g[g["layer"] == layer] if layer is not None else g
        ks = set(g["n_concepts"].dropna())
        k = 20 if 20 in ks else (max(ks) if ks else None)
        out.append(g[g["n_concepts"] == k] if k is not None else g)
    return pd.concat(out)


def across_seeds(rows: pd.DataFrame, key: str) -> tuple[float | None, float | None, int]:
    """(mean, std, n seeds) of a job-level metric over the rows (seeds); with one seed the std is that
    job's own `<key minus _mean>_std` (over test samples) when it has one."""
    if key not in rows or rows[key].isna().all():
        return None, None, 0
    v = rows[key].dropna().astype(float)
    if len(v) > 1:
        return float(v.mean()), float(v.std(ddof=0)), len(v)
    std_key = key[: -len("_mean")] + "_std" if key.endswith("_mean") else None
    std = rows[std_key].dropna().astype(float) if std_key and std_key in rows else pd.Series(dtype=float)
    return float(v.iloc[0]), float(std.iloc[0]) if len(std) else None, 1


def _ordered(values: Sequence[Any]) -> list[Any]:
    return list(dict.fromkeys(v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))))


def _build(name: str, title: str, cells: list[tuple[tuple[str, ...], str, float | None, float | None, str]],
           index_names: list[str], note: str = "") -> Table:
    """A Table from (row labels, column, mean, std, mark) cells, columns in first-seen order."""
    values = pd.DataFrame([{"row": " / ".join(r), "column": c, "mean": m, "std": s} for r, c, m, s, _ in cells])
    if not cells:
        frame = pd.DataFrame()
    else:
        long = pd.DataFrame([{**dict(zip(index_names, r)), "column": c, "cell": fmt(m, s, mark=k)}
                             for r, c, m, s, k in cells])
        frame = long.pivot(index=index_names, columns="column", values="cell")
        frame = frame.reindex(index=pd.MultiIndex.from_tuples(_ordered([r for r, *_ in cells]), names=index_names)
                              if len(index_names) > 1 else _ordered([r[0] for r, *_ in cells]),
                              columns=_ordered([c for _, c, *_ in cells])).fillna(DASH)
        if len(index_names) == 1:
            frame.index.name = index_names[0]
    return Table(name, title, frame, values, note)


# --- tables (pure) --------------------------------------------------------------------------------------------
def scorer_note(scorers: Sequence[dict[str, Any]]) -> str:
    """Which models and scales CS and BS are on (from the jobs' scorer_fingerprint.json)."""
    parts = []
    for fp in scorers:
        clip, bert = fp.get("clip") or {}, fp.get("bert") or {}
        if clip:
            parts.append(f"CS: {clip.get('scorer') or clip.get('model', '?')} (2.5 · max(cos, 0))")
        if bert:
            parts.append(f"BS: {bert.get('scale', 'raw F1')} of {bert.get('model', '?')} layer {bert.get('layer', '?')}")
    return ("Scorers: " + "; ".join(dict.fromkeys(parts)) + ".") if parts else ""


def table1(runs: pd.DataFrame, scorers: Sequence[dict[str, Any]] = ()) -> Table:
    """Paper Table 1 with the nulls, GT-captions and the methods' test L0 (module doc)."""
    rows = representative(runs)
    cells = []
    methods = _ordered(rows["method"]) if not rows.empty else []
    display = dict(zip(rows["method"], rows["method_display"])) if not rows.empty else {}
    for token in _ordered(rows["token"]) if not rows.empty else []:
        of_token = rows[rows["token"] == token]
        # The nulls do not depend on the method's words except through |T_k| (Rnd-Words) and the method
        # (Rnd-Concept, Noise-Imgs): each is shown from the Semi-NMF jobs when there are some.
        ref = of_token[of_token["method"] == "semi_nmf"] if (of_token["method"] == "semi_nmf").any() else of_token
        for label, m in (("CS", "cs"), ("BS", "bs")):
            r = (token, label)
            for null, title in NULLS:
                mean, std, _ = across_seeds(ref, f"{null}_{m}_top1_mean")
                cells.append((r, title, mean, std, ""))
            for method in methods:
                mean, std, _ = across_seeds(of_token[of_token["method"] == method], f"{m}_top1_mean")
                cells.append((r, display.get(method, method), mean, std, ""))
            mean, std, _ = across_seeds(ref, f"gt_captions_{m}_mean")
            cells.append((r, "GT-captions", mean, std, ""))
        for method in methods:
            mean, std, _ = across_seeds(of_token[of_token["method"] == method], "sparsity_l0_test")
            cells.append(((token, "L0 (test)"), display.get(method, method), mean, std, ""))
    n_seeds = int(rows.groupby(["token", "method"])["seed"].nunique().max()) if not rows.empty else 0
    spread = "std across seeds" if n_seeds > 1 else "std over test samples"
    note = (f"Mean over test samples, ± {spread} ({n_seeds} seed(s)). Nulls from the Semi-NMF jobs of each token. "
            "L0 (test): mean non-zero codes per test sample (PCA, k-means and Simple have dense codes). "
            + scorer_note(scorers))
    return _build("table1", "Table 1: test samples, top-1 concept, against the nulls", cells, ["token", "metric"], note)


def paired_table(runs: pd.DataFrame, test_scores: dict[tuple[str, Any], dict[str, Any]], seed: int = 0) -> Table:
    """Each method's top-1 minus each null, per test sample, averaged over seeds; bootstrap 95 % CI."""
    from coxlmm.metrics.stats import paired_ci

    rows = representative(runs)
    cells = []
    for (token, method), g in rows.groupby(["token", "method"], sort=False):
        jobs = [test_scores.get((j, l)) for j, l in zip(g["job"], g["layer"])]
        jobs = [s for s in jobs if s]
        if not jobs:
            continue
        display = g["method_display"].iloc[0]
        for m, label in (("cs", "CS"), ("bs", "BS")):
            for null, title in NULLS:
                diffs = [np.asarray(s["scores"][f"top1_{m}"]) - np.asarray(s["scores"][f"{null}_{m}"])
                         for s in jobs if f"{null}_{m}" in s["scores"] and f"top1_{m}" in s["scores"]]
                if not diffs or len({len(d) for d in diffs}) > 1:
                    continue
                d = np.mean(diffs, axis=0)
                mean, lo, hi = paired_ci(d, np.zeros_like(d), seed=seed)
                mark = "*" if np.isfinite(lo) and (lo > 0 or hi < 0) else ""
                cells.append(((token, label, display), title, mean, None, f" [{lo:+.3f}, {hi:+.3f}]{mark}"))
    return _build("paired", "Paired differences: method top-1 minus null (per test sample, mean over seeds)", cells,
                  ["token", "metric", "method"],
                  "Bootstrap 95 % CI of the mean difference over test samples (10,000 resamples); "
                  "* = the CI excludes 0.")


def overlap_table(runs: pd.DataFrame) -> Table:
    rows = representative(runs)
    cells = []
    display = dict(zip(rows["method"], rows["method_display"])) if not rows.empty else {}
    tokens = _ordered(rows["token"]) if not rows.empty else []
    for token in tokens:
        for method in _ordered(rows["method"]):
            g = rows[(rows["token"] == token) & (rows["method"] == method)]
            mean, std, _ = across_seeds(g, "overlap")
            cells.append(((token,), display.get(method, method), mean, std if len(g) > 1 else None, ""))
    if len(tokens) > 1:
        for method in _ordered(rows["method"]):
            per_token = rows[rows["method"] == method].groupby("token")["overlap"].mean()
            cells.append((("mean",), display.get(method, method), float(per_token.mean()),
                          float(per_token.std(ddof=0)), ""))
    return _build("overlap", "Overlap of concept words (lower is more disentangled)", cells, ["token"])


GROUNDING_COLUMNS = (("CS words", "grounding_cs_mean"), ("CS random", "grounding_cs_random_mean"),
                     ("CS win rate", "grounding_cs_win_rate"), ("BS words", "grounding_bs_mean"),
                     ("BS random", "grounding_bs_random_mean"), ("BS win rate", "grounding_bs_win_rate"))


def grounding_table(runs: pd.DataFrame) -> Table:
    """Paper Fig. 3 as numbers: per (method, token), the mean score of each concept's words against its
    own top images, against length-matched random words, and the share of concepts whose words win."""
    t = by_table(representative(runs), None, "grounding", "Grounding: a concept's words against its top images, "
                 "versus length-matched random words (mean over concepts; ± std across seeds)", GROUNDING_COLUMNS)
    return Table(t.name, t.title, t.frame, t.values,
                 "win rate: share of a dictionary's concepts whose words score above their random words.")


SPLITS = ("text_known", "image_only")  # recovery_matched/<factor>/<split>: the split table's, not this one's


def _factors(rows: pd.DataFrame) -> list[str]:
    names = [c.split("/", 1)[1] for c in rows.columns if c.startswith("recovery_matched/")]
    return _ordered([n for n in names if "/" not in n and n not in SPLITS])


def recovery_table(runs: pd.DataFrame) -> Table:
    """Matched recovery (overall, per factor) beside the prefix-only control; purity, grounding accuracy;
    random and DiffMean rows."""
    rows = representative(runs)
    cells = []
    if rows.empty or "recovery_matched" not in rows:
        return _build("recovery", "Ground-truth recovery", cells, ["method"])
    factors = _factors(rows)
    columns = [("Matched", "recovery_matched"), ("Prefix-only", "recovery_matched_prefix_only")]
    for f in factors:
        columns += [(f"{f}", f"recovery_matched/{f}"), (f"{f} prefix-only", f"recovery_matched_prefix_only/{f}")]
    columns += [("Purity (corr.)", "purity_corrected"), ("Grounding acc.", "grounding_accuracy")]
    for method in _ordered(rows["method"]):
        g = rows[rows["method"] == method]
        for label, key in columns:
            v = g[key].dropna().astype(float) if key in g else pd.Series(dtype=float)
            cells.append(((g["method_display"].iloc[0],), label, float(v.mean()) if len(v) else None,
                          float(v.std(ddof=0)) if len(v) > 1 else None, ""))
    for tag, title in (("random", "Random dict. (centred)"), ("diffmean", "DiffMean (supervised)")):
        for label, key in columns:
            if "prefix" in key:
                continue
            k = key.replace("recovery_matched", f"recovery_matched_{tag}") if key.startswith("recovery_matched") \
                else f"{key}_{tag}"
            v = rows[k].dropna().astype(float) if k in rows else pd.Series(dtype=float)
            cells.append(((title,), label, float(v.mean()) if len(v) else None,
                          float(v.std(ddof=0)) if len(v) > 1 else None, ""))
    return _build("recovery", "Ground-truth recovery of the target object's factors (AUROC, chance = 0.5; "
                  "mean ± std over tokens and seeds)", cells, ["method"],
                  "Matched: one concept per factor value (Hungarian). Prefix-only: the same dictionary on the "
                  "position-matched noise source (noise image, the sample's own caption prefix): what the text "
                  "before t already carries. Purity (corr.): activation share on the best value, corrected for its "
                  "base rate (0 = chance). Random dict.: centred random directions. DiffMean uses the labels.")


def causal_table(runs: pd.DataFrame) -> Table:
    """Per method: prediction recovered (with its CI), KL, ablation Δ log p(t) against random, steering success
    and fluency at each α against the random and DiffMean controls (mean over tokens and seeds)."""
    rows = representative(runs)
    cells = []
    if rows.empty or "kl_recon" not in rows:
        return _build("causal", "Causal faithfulness and steering", cells, ["method"])
    alphas = sorted({float(c.split("alpha_")[1]) for c in rows.columns if c.startswith("steer_success/alpha_")})
    columns = [("Pred. recovered", "prediction_recovered"), ("Δlog p(t) recon", "dlogp_t_recon"),
               ("KL recon", "kl_recon"), ("KL mean-abl.", "kl_mean"),
               ("Δlog p(t) top-1 abl.", "top1_ablation_dlogp_t"), ("Δlog p(t) random", "top1_ablation_dlogp_t_random")]
    columns += [(f"success α={a:g}", f"steer_success/alpha_{a:g}") for a in alphas]
    columns += [("fluency unsteered", "steer_fluency_unsteered")]
    columns += [(f"fluency α={a:g}", f"steer_fluency/alpha_{a:g}") for a in alphas]
    for method in _ordered(rows["method"]):
        g = rows[rows["method"] == method]
        label = g["method_display"].iloc[0]
        for title, key in columns:
            v = g[key].dropna().astype(float) if key in g else pd.Series(dtype=float)
            mark = ""
            if key in ("prediction_recovered", "dlogp_t_recon") and f"{key}_ci_lo" in g and len(g) == 1:
                lo, hi = g[f"{key}_ci_lo"].iloc[0], g[f"{key}_ci_hi"].iloc[0]
                mark = f" [{lo:.3g}, {hi:.3g}]" if _finite(lo) else ""
            cells.append(((label,), title, float(v.mean()) if len(v) else None,
                          float(v.std(ddof=0)) if len(v) > 1 else None, mark))
    for tag, title in (("random", "Random direction (same norm)"), ("diffmean", "DiffMean (supervised)")):
        for a in alphas:
            for name, col in (("success", f"success α={a:g}"), ("fluency", f"fluency α={a:g}")):
                key = f"steer_{name}_{tag}/alpha_{a:g}"
                v = rows[key].dropna().astype(float) if key in rows else pd.Series(dtype=float)
                if len(v):
                    cells.append(((title,), col, float(v.mean()), float(v.std(ddof=0)) if len(v) > 1 else None, ""))
    return _build("causal", "Causal faithfulness at the target position and steering with the concepts", cells,
                  ["method"], "Pred. recovered: (E log p_recon(t) − E log p_mean(t)) / (E log p_clean(t) − E log "
                  "p_mean(t)), [bootstrap 95 % CI] with one job; – where the mean ablation does not lower log p(t) "
                  "(the ratio is then undefined). Δlog p(t) recon: E[log p_recon(t) − log p_clean(t)]. Δlog p(t): ablating each test sample's top-1 concept vs "
                  "a random direction of the same norm. Success: share of test samples whose target lacks the matched "
                  "value and whose steered caption names it. The control rows steer the same values at the same norm.")


def split_recovery_table(runs: pd.DataFrame) -> Table:
    """Per method and factor: matched recovery on the samples whose caption prefix already named the
    target's value (text-known) and on the others (image-only), beside the prefix-only control and the
    random dictionary."""
    rows = representative(runs)
    cells = []
    factors = _ordered([c.split("/")[1] for c in rows.columns if c.startswith("recovery_matched/")
                        and c.count("/") == 2 and c.endswith(("/text_known", "/image_only"))])
    columns = [("text-known", "recovery_matched/{f}/text_known"), ("image-only", "recovery_matched/{f}/image_only"),
               ("prefix-only, text-known", "recovery_matched_prefix_only/{f}/text_known"),
               ("prefix-only, image-only", "recovery_matched_prefix_only/{f}/image_only"),
               ("random, image-only", "recovery_matched_random/{f}/image_only"),
               ("n text-known", "recovery_n_samples/{f}/text_known"), ("n image-only", "recovery_n_samples/{f}/image_only")]
    for method in _ordered(rows["method"]) if factors else []:
        g = rows[rows["method"] == method]
        for f in factors:
            for title, key in columns:
                k = key.format(f=f)
                v = g[k].dropna().astype(float) if k in g else pd.Series(dtype=float)
                cells.append(((g["method_display"].iloc[0], f), title, float(v.mean()) if len(v) else None,
                              float(v.std(ddof=0)) if len(v) > 1 else None, ""))
    return _build("recovery_split", "Recovery by where the information came from (matched AUROC of the target's "
                  "factor values)", cells, ["method", "factor"],
                  "text-known: samples whose generated caption named the target's value of the factor before t "
                  "(the state that predicts t has read it); image-only: the others. Does the dictionary recover "
                  "factors that only the image carries? Compare image-only with prefix-only, image-only.")


LAYER_COLUMNS = (("Grounding CS", "grounding_cs_mean"), ("Rnd-Words CS", "grounding_cs_random_mean"),
                 ("Grounding BS", "grounding_bs_mean"), ("Rnd-Words BS", "grounding_bs_random_mean"),
                 ("Lens top-1 = t", "lens_top1_t"), ("Lens top-10 ∋ t", "lens_top10_t"),
                 ("Matched", "recovery_matched"), ("Prefix-only", "recovery_matched_prefix_only"),
                 ("Random dict.", "recovery_matched_random"), ("Grounding acc.", "grounding_accuracy"),
                 ("Overlap", "overlap"), ("Recon. err.", "recon_rel_error_test"),
                 ("Pred. recovered", "prediction_recovered"))
K_COLUMNS = (("Recon. err. train", "recon_rel_error_train"), ("Recon. err. test", "recon_rel_error_test"),
             ("Overlap", "overlap"), ("L0 (test)", "sparsity_l0_test"), ("Matched", "recovery_matched"),
             ("Random dict.", "recovery_matched_random"))


def by_table(runs: pd.DataFrame, x: str | None, name: str, title: str, columns: Sequence[tuple[str, str]]) -> Table:
    """One row per (method, token[, value of x]): each column's mean (± std across seeds)."""
    keys = ["method", "token"] + ([x] if x else [])
    cells = []
    for group, g in runs.groupby(keys, sort=False, dropna=True) if not runs.empty else ():
        row = (g["method_display"].iloc[0], str(group[1]))
        if x:
            row += (g["layer_name"].iloc[0] if x == "layer" and "layer_name" in g else str(group[2]),)
        for col, key in columns:
            if key in g and g[key].notna().any():
                v = g[key].dropna().astype(float)
                cells.append((row, col, float(v.mean()), float(v.std(ddof=0)) if len(v) > 1 else None, ""))
    return _build(name, title, cells, ["method", "token"] + ([x if x != "n_concepts" else "K"] if x else []))


def _varies(runs: pd.DataFrame, key: str) -> bool:
    return key in runs and runs[key].dropna().nunique() > 1


def tables(sweep: Sweep) -> list[Table]:
    runs = sweep.runs
    out = [table1(runs, sweep.scorers), paired_table(runs, sweep.test_scores), overlap_table(runs),
           grounding_table(runs), recovery_table(runs)]
    if any(c.endswith("/image_only") for c in runs.columns):
        out.append(split_recovery_table(runs))
    if "kl_recon" in runs:
        out.append(causal_table(runs))
    if _varies(runs, "layer"):
        out.append(by_table(runs.sort_values("layer", na_position="last", kind="stable"), "layer", "layers",
                            "By layer (lens readability: share of samples whose logit-lens top-1 / top-10 is t)",
                            LAYER_COLUMNS))
    if _varies(runs, "n_concepts"):
        out.append(by_table(runs.sort_values("n_concepts", kind="stable"), "n_concepts", "k", "By dictionary size K", K_COLUMNS))
    # A table with no value at all (Table 1 of a layer sweep, whose jobs hold many layers) says nothing.
    return [t for t in out if "mean" in t.values and t.values["mean"].notna().any()]


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
    """Every cell of every table: table, row, column, mean, std."""
    frames = [t.values.assign(table=t.name) for t in all_tables if not t.values.empty]
    if not frames:
        return pd.DataFrame(columns=["table", "row", "column", "mean", "std"])
    return pd.concat(frames)[["table", "row", "column", "mean", "std"]]


def runs_frame(runs: pd.DataFrame) -> pd.DataFrame:
    ids = [k for k in ID_KEYS if k in runs]
    return runs[ids + sorted(c for c in runs.columns if c not in ids)]


# --- figures (pure: they return matplotlib Figures) --------------------------------------------------------
def _figure(*args, **kwargs):
    from matplotlib.figure import Figure

    return Figure(*args, **kwargs)


def layer_figure(runs: pd.DataFrame):
    """Grounding CS by layer with the random-words line (paper Fig. 5) and the lens readability; recovery
    by layer against the prefix-only control and the random dictionary."""
    if not _varies(runs, "layer") or not {"grounding_cs_mean", "recovery_matched"} & set(runs.columns):
        return None
    fig = _figure(figsize=(12, 4.2), layout="constrained")
    a, b = fig.subplots(1, 2)
    r = a.twinx()
    for (method, token), g in runs.dropna(subset=["layer"]).groupby(["method_display", "token"], sort=False):
        g = g.groupby("layer").mean(numeric_only=True).reset_index()
        name = f"{method}, {token}"
        _line(a, g, "grounding_cs_mean", f"{name}: grounded words", "-o")
        _line(a, g, "grounding_cs_random_mean", f"{name}: random words", "--")
        _line(r, g, "lens_top10_t", f"{name}: lens top-10 ∋ t (right)", ":", colour="grey")
        _line(b, g, "recovery_matched", f"{name}: matched", "-o")
        _line(b, g, "recovery_matched_prefix_only", f"{name}: prefix-only", "-s")
        _line(b, g, "recovery_matched_random", f"{name}: random dict.", "--")
    a.set(xlabel="layer", ylabel="CLIPScore (concept's top samples vs words)", title="Grounding by layer")
    r.set(ylabel="share of samples", ylim=(0, 1.05))
    b.set(xlabel="layer", ylabel="matched AUROC", title="Ground-truth recovery by layer")
    b.axhline(0.5, color="grey", lw=0.8, ls=":")
    lines = a.get_legend_handles_labels()
    extra = r.get_legend_handles_labels()
    a.legend(lines[0] + extra[0], lines[1] + extra[1], fontsize=7)
    b.legend(fontsize=7)
    for ax in (a, b):
        ax.grid(alpha=0.3)
    return fig


def k_figure(runs: pd.DataFrame):
    """Reconstruction error against K, and against the test L0 (methods compared at matched sparsity, as
    SAEBench advises: an SAE's L0 is its k, Semi-NMF's is set by λ), one line per (method, token)."""
    if not _varies(runs, "n_concepts") or "recon_rel_error_train" not in runs:
        return None
    fig = _figure(figsize=(11, 4), layout="constrained")
    a, b = fig.subplots(1, 2)
    for (method, token), g in runs.groupby(["method_display", "token"], sort=False):
        g = g.groupby("n_concepts").mean(numeric_only=True).reset_index()
        _line(a, g, "recon_rel_error_test", f"{method}, {token}: test", "-o", x="n_concepts")
        _line(a, g, "recon_rel_error_train", f"{method}, {token}: train", "--", x="n_concepts")
        if "sparsity_l0_test" in g:
            _line(b, g, "recon_rel_error_test", f"{method}, {token}", "-o", x="sparsity_l0_test")
    a.set(xlabel="K (concepts)", ylabel="relative reconstruction error ‖Z − VU‖² / ‖Z‖²", title="Reconstruction vs K")
    b.set(xlabel="L0 (non-zero codes per test sample)", ylabel="relative reconstruction error (test)",
          title="Reconstruction vs L0 (matched sparsity)")
    for ax in (a, b):
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    return fig


def scatter_figure(points: pd.DataFrame):
    """Per concept: CS of its grounded words (y) against random words (x), one colour per method."""
    if points.empty or not {"cs", "cs_random"} <= set(points.columns):
        return None
    pts = points.dropna(subset=["cs", "cs_random"])
    fig = _figure(figsize=(5, 5), layout="constrained")
    ax = fig.subplots()
    for method, g in pts.groupby("method_display", sort=False):
        above = int((g["cs"] > g["cs_random"]).sum())
        ax.scatter(g["cs_random"], g["cs"], s=12, alpha=0.7, label=f"{method} ({above}/{len(g)} above the diagonal)")
    lo, hi = float(pts[["cs", "cs_random"]].min().min()), float(pts[["cs", "cs_random"]].max().max())
    ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8, ls="--")
    ax.set(xlabel="CS, random words", ylabel="CS, concept's words", title="Grounding quality per concept")
    ax.legend(fontsize=7)
    return fig


def _line(ax, g: pd.DataFrame, key: str, label: str, style: str, colour: str | None = None, x: str = "layer") -> bool:
    if key not in g or g[key].isna().all():
        return False
    d = g.dropna(subset=[key]).sort_values(x)
    ax.plot(d[x], d[key], style, label=label, ms=3, color=colour)
    return True


# --- writing (I/O) --------------------------------------------------------------------------------------------
def write_report(sweep_dir: str | Path, sweep: Sweep | None = None, figures: bool = True) -> list[Path]:
    """Write a sweep's tables, runs and figures into its dir (read it unless given); returns the files."""
    root = Path(sweep_dir)
    sweep = sweep if sweep is not None else read_sweep(root)
    all_tables = tables(sweep)
    (root / "tables.md").write_text(report_markdown(root.name, all_tables, len(sweep.runs), sweep.unfinished))
    csv_records(all_tables).to_csv(root / "tables.csv", index=False)
    runs_frame(sweep.runs).to_csv(root / "runs.csv", index=False)
    paths = [root / "tables.md", root / "tables.csv", root / "runs.csv"]
    if figures:
        for name, fig in (("layer_ablation.png", layer_figure(sweep.runs)), ("recon_vs_k.png", k_figure(sweep.runs)),
                          ("grounding_scatter.png", scatter_figure(sweep.points))):
            if fig is not None:
                fig.savefig(root / name, dpi=120)
                paths.append(root / name)
    paths.append(write_index(root, sweep, [p for p in paths if p.suffix == ".png"]))
    return paths


def write_index(root: Path, sweep: Sweep, figures: list[Path]) -> Path:
    """The sweep's index.html (report/browser): jobs with their key metrics and links, tables, figures."""
    from coxlmm.report.browser import write_sweep_index

    by_job = {r["job"]: r for r in sweep.runs.to_dict("records")} if not sweep.runs.empty else {}
    keys = ("cs_top1_mean", "bs_top1_mean", "overlap", "recovery_matched", "sparsity_l0_test", "recon_rel_error_test")
    jobs = [{"job": j.name, "overrides": j.overrides, "status": j.status, "error": j.error, "report": j.report,
             "metrics": {k: by_job[j.name][k] for k in keys if j.name in by_job and _finite(by_job[j.name].get(k))}}
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
        for path in write_report(root, sweep, figures=not args.no_figures):
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
