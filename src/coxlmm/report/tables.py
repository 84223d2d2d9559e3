"""Aggregate a sweep into the paper's tables and figures: `coxlmm-tables <sweep dir> [...]`.

A job dir is any folder under the sweep holding `metrics.json` and `.hydra/config.yaml` (Hydra's
`<num>_<overrides>` subdirs, also under the joblib and submitit launchers). Each job gives one
*row* per layer: `{job, method, token, layer, n_concepts, seed, <metric>: value, ...}`; a job that
analysed several layers has `layer_<l>/<metric>` keys and gives one row per layer.

Written into the sweep dir:
    tables.md        Table 1 (tokens x {CS, BS} top-1, methods as columns with the Rnd-Words,
                     Noise-Imgs and GT-captions baselines; mean ± std over test samples), the overlap
                     table (tokens x methods), the recovery table (methods + a random dictionary x
                     {lenient, matched, purity, grounding acc.}; mean ± std over tokens), and, when the
                     sweep varies them, a by-layer and a by-K table
    tables.csv       every cell of those tables, long format: table,row,column,mean,std
    runs.csv         every row with every metric (for plots of your own)
    layer_ablation.png   grounding CS by layer with the random-words line, and recovery by layer
    recon_vs_k.png       reconstruction error against K, one line per method
    grounding_scatter.png  per-concept CS of grounded vs random words (from `grounding_points.json`)
A missing metric shows as "–"; a figure without data is not drawn.

The reading (`collect`) is the only I/O before `write_report`; everything in between takes and
returns plain rows, tables and figures.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Row = dict[str, Any]
Value = tuple[float | None, float | None]  # (mean, std); None = missing

DASH = "–"
METHOD_ORDER = ("simple", "pca", "kmeans", "nmf", "semi_nmf")  # the paper's column order (+ NMF)
METHOD_NAMES = {"simple": "Simple", "pca": "PCA", "kmeans": "K-Means", "nmf": "NMF", "semi_nmf": "Semi-NMF",
                "random_dict": "Random dict."}
ID_KEYS = ("job", "method", "token", "layer", "n_concepts", "seed", "model", "data")
_LAYER_KEY = re.compile(r"^layer_(-?\d+)/(.+)$")
_JOB_NUM = re.compile(r"^(\d+)_")


# --- reading a sweep (I/O) -------------------------------------------------------------------------
@dataclass
class Sweep:
    rows: list[Row]
    points: list[Row]  # per-concept grounding points (grounding_points.json), with job/method/token
    unfinished: list[str]  # job dirs with a config but no metrics.json (failed, or still running)


def collect(sweep_dir: str | Path) -> list[Row]:
    """One row per (job, layer) under `sweep_dir`, in job-number order."""
    return read_sweep(sweep_dir).rows


def read_sweep(sweep_dir: str | Path) -> Sweep:
    root = Path(sweep_dir)
    rows: list[Row] = []
    points: list[Row] = []
    unfinished: list[str] = []
    for job_dir in _job_dirs(root):
        name = str(job_dir.relative_to(root))
        if not (job_dir / "metrics.json").is_file():
            unfinished.append(name)
            continue
        config = _load_yaml(job_dir / ".hydra" / "config.yaml")
        hydra = _load_yaml(job_dir / ".hydra" / "hydra.yaml").get("hydra", {})
        choices = (hydra.get("runtime") or {}).get("choices") or {}
        metrics = json.loads((job_dir / "metrics.json").read_text())
        concepts = _load_json(job_dir / "concepts.json")
        rows_of_job = job_rows(name, config, choices, metrics, concepts)
        rows += rows_of_job
        for path in [job_dir / "grounding_points.json", *sorted(job_dir.glob("layer_*/grounding_points.json"))]:
            if path.is_file():
                layer = _int(path.parent.name.removeprefix("layer_")) if path.parent != job_dir else rows_of_job[0]["layer"]
                ids = {k: rows_of_job[0][k] for k in ("job", "method", "token")}
                points += [{**ids, "layer": layer, **p} for p in grounding_points(json.loads(path.read_text()))]
    return Sweep(rows, points, unfinished)


def _job_dirs(root: Path) -> list[Path]:
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


# --- rows (pure) ---------------------------------------------------------------------------------------
def job_rows(job: str, config: dict[str, Any], choices: dict[str, Any], metrics: dict[str, Any],
             concepts: dict[str, Any] | None = None) -> list[Row]:
    """The rows of one job: its identity (from the config) and its metrics, split by layer."""
    method_cfg = config.get("method") if isinstance(config.get("method"), dict) else {}
    ids: Row = {
        "job": job,
        "method": method_name(choices.get("method"), method_cfg, (concepts or {}).get("method")),
        "token": config.get("token"),
        "n_concepts": _int(method_cfg.get("n_concepts")),
        "seed": _int(config.get("seed")),
        "model": choices.get("model"),
        "data": choices.get("data"),
    }
    per_layer: dict[int, Row] = {}
    shared: Row = {}
    for key, value in metrics.items():
        m = _LAYER_KEY.match(key)
        if m:
            per_layer.setdefault(int(m.group(1)), {})[m.group(2)] = value
        else:
            shared[key] = value
    if per_layer:
        return [{**ids, "layer": layer, **shared, **vals} for layer, vals in sorted(per_layer.items())]
    layers = config.get("layers") or [None]
    # concepts.json holds the resolved layer (29, where the config says -1).
    layer = _int((concepts or {}).get("layer")) if concepts and "layer" in concepts else _int(layers[0])
    return [{**ids, "layer": layer, **shared}]


def method_name(choice: Any, method_cfg: dict[str, Any], from_concepts: Any = None) -> str:
    """The method's config-group choice (`semi_nmf`), else its config's `name`, else concepts.json's,
    else the last part of its `_target_`."""
    for candidate in (choice, method_cfg.get("name"), from_concepts):
        if isinstance(candidate, str) and candidate:
            return candidate
    target = method_cfg.get("_target_")
    return str(target).rsplit(".", 1)[-1].lower() if target else "?"


def _int(x: Any) -> int | None:
    try:
        return int(x)
    except (TypeError, ValueError):
        return None


def grounding_points(data: Any) -> list[Row]:
    """Per-concept points of a `grounding_points.json`: a list of dicts (or {"points": [...]}) with
    `cs` / `cs_random` (and optionally `bs` / `bs_random`, `concept`). Other names are mapped:
    `grounded_cs`/`random_cs`, `cs_words`/`cs_random_words`."""
    if isinstance(data, dict):
        data = data.get("points", data.get("concepts", []))
    aliases = {"grounded_cs": "cs", "cs_words": "cs", "random_cs": "cs_random", "cs_random_words": "cs_random",
               "grounded_bs": "bs", "bs_words": "bs", "random_bs": "bs_random", "bs_random_words": "bs_random",
               "id": "concept"}
    out = []
    for p in data if isinstance(data, list) else []:
        if isinstance(p, dict):
            out.append({aliases.get(k, k): v for k, v in p.items()})
    return out


# --- selecting and formatting values (pure) -------------------------------------------------------
def ordered(values: Iterable[Any], order: Sequence[Any] = ()) -> list[Any]:
    """Distinct values: those in `order` first (in that order), then the rest as first seen."""
    seen = list(dict.fromkeys(v for v in values if v is not None))
    return [v for v in order if v in seen] + [v for v in seen if v not in order]


def representative(rows: Sequence[Row]) -> Row | None:
    """The row a cell shows when a sweep has several for it: the highest layer, then the lowest
    seed, then K = 20 (the paper's) or the largest K."""
    if not rows:
        return None

    def key(r: Row) -> tuple:
        k = r.get("n_concepts")
        return (-(r.get("layer") if r.get("layer") is not None else -1 << 30),
                r.get("seed") if r.get("seed") is not None else 0,
                0 if k == 20 else 1, -(k or 0))

    return sorted(rows, key=key)[0]


def value(row: Row | None, key: str, std_key: str | None = None) -> Value:
    """(mean, std) of a metric; a `key` ending in `_mean` takes its std from the `_std` twin."""
    if row is None:
        return (None, None)
    if std_key is None and key.endswith("_mean"):
        std_key = key[: -len("_mean")] + "_std"
    return (_num(row.get(key)), _num(row.get(std_key)) if std_key else None)


def _num(x: Any) -> float | None:
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def mean_std(xs: Iterable[float | None]) -> Value:
    """Mean and (population) std over the values present; std None for a single value."""
    vals = [x for x in xs if x is not None]
    if not vals:
        return (None, None)
    m = sum(vals) / len(vals)
    return (m, math.sqrt(sum((x - m) ** 2 for x in vals) / len(vals)) if len(vals) > 1 else None)


def fmt(v: Value, digits: int = 3) -> str:
    mean, std = v
    if mean is None:
        return DASH
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


# --- tables (pure) ---------------------------------------------------------------------------------------
@dataclass
class Table:
    name: str  # key in tables.csv
    title: str
    label_columns: list[str]
    value_columns: list[str]
    rows: list[tuple[list[str], list[Value]]] = field(default_factory=list)
    note: str = ""


def _by(rows: Sequence[Row], **match: Any) -> list[Row]:
    return [r for r in rows if all(r.get(k) == v for k, v in match.items())]


def _cell(rows: Sequence[Row], **match: Any) -> Row | None:
    return representative(_by(rows, **match))


def _multiple_note(rows: Sequence[Row], keys: tuple[str, ...]) -> str:
    groups: dict[tuple, int] = {}
    for r in rows:
        groups[tuple(r.get(k) for k in keys)] = groups.get(tuple(r.get(k) for k in keys), 0) + 1
    if any(n > 1 for n in groups.values()):
        return ("Cells with several runs (layers, seeds, K) show the highest layer, then the lowest seed, "
                "then K = 20 or the largest K.")
    return ""


TABLE1_METRICS = (  # (label, method-column key, Rnd-Words key, Noise-Imgs key, GT-captions key)
    ("CS", "cs_top1_mean", "rnd_words_cs_top1_mean", "noise_imgs_cs_top1_mean", "gt_captions_cs_mean"),
    ("BS", "bs_top1_mean", "rnd_words_bs_top1_mean", "noise_imgs_bs_top1_mean", "gt_captions_bs_mean"),
)


def table1(rows: Sequence[Row]) -> Table:
    """Paper Table 1: per token, CS and BS of the test samples' top-1 concept, one column per method,
    between the Rnd-Words / Noise-Imgs baselines and the GT-captions reference."""
    methods = ordered((r["method"] for r in rows), METHOD_ORDER)
    t = Table("table1", "Table 1: test samples, top-1 concept (mean ± std over test samples)",
              ["token", "metric"], ["Rnd-Words", "Noise-Imgs"] + [_display(m) for m in methods] + ["GT-captions"])
    for token in ordered(r["token"] for r in rows):
        # The baselines do not depend on the method: take them from the Semi-NMF job when there is one.
        by_method = [_cell(rows, token=token, method=m) for m in ordered(methods, ("semi_nmf",))]
        for label, key, rnd, noise, gt in TABLE1_METRICS:
            t.rows.append(([token, label], [_first(by_method, rnd), _first(by_method, noise)]
                           + [value(_cell(rows, token=token, method=m), key) for m in methods]
                           + [_first(by_method, gt)]))
    t.note = " ".join(filter(None, [
        "Rnd-Words / Noise-Imgs / GT-captions come from the Semi-NMF job of the token (else the first with them).",
        _multiple_note(rows, ("token", "method"))]))
    return t


def _first(rows: Sequence[Row | None], key: str) -> Value:
    for r in rows:
        v = value(r, key)
        if v[0] is not None:
            return v
    return (None, None)


def _display(method: str) -> str:
    return METHOD_NAMES.get(method, method)


def overlap_table(rows: Sequence[Row]) -> Table:
    """Overlap of the concepts' words, tokens x methods (lower = more disentangled), and the mean."""
    methods = ordered((r["method"] for r in rows), METHOD_ORDER)
    t = Table("overlap", "Overlap of concept words (lower is more disentangled)", ["token"],
              [_display(m) for m in methods])
    tokens = ordered(r["token"] for r in rows)
    for token in tokens:
        t.rows.append(([token], [value(_cell(rows, token=token, method=m), "overlap") for m in methods]))
    if len(tokens) > 1:
        t.rows.append((["mean"], [mean_std(value(_cell(rows, token=tok, method=m), "overlap")[0] for tok in tokens)
                                  for m in methods]))
    t.note = _multiple_note(rows, ("token", "method"))
    return t


RECOVERY_COLUMNS = (("Lenient", "recovery_lenient"), ("Matched", "recovery_matched"),
                    ("Purity", "concept_purity"), ("Grounding acc.", "grounding_accuracy"))


def recovery_table(rows: Sequence[Row]) -> Table:
    """Ground-truth recovery per method and for a random dictionary (mean ± std over tokens)."""
    methods = ordered((r["method"] for r in rows), METHOD_ORDER)
    tokens = ordered(r["token"] for r in rows)
    t = Table("recovery", "Ground-truth recovery on the world (mean ± std over tokens; AUROC chance = 0.5)",
              ["method"], [c for c, _ in RECOVERY_COLUMNS])
    picked = {m: [_cell(rows, token=tok, method=m) for tok in tokens] for m in methods}
    for m in methods:
        t.rows.append(([_display(m)], [mean_std(value(r, key)[0] for r in picked[m]) for _, key in RECOVERY_COLUMNS]))
    # The random dictionary depends on (token, layer, K, seed), not on the method: one row, pooled.
    every = [r for m in methods for r in picked[m]]
    t.rows.append((["Random dict."], [mean_std(value(r, key + "_random")[0] for r in every)
                                      for _, key in RECOVERY_COLUMNS]))
    t.note = " ".join(filter(None, [
        "Lenient: best concept per factor value (near 1 for almost any dictionary). Matched: one concept "
        "per value (Hungarian). Purity: activation share on the concept's best value. Grounding acc.: "
        "share of values whose matched concept's words name them.",
        _multiple_note(rows, ("token", "method"))]))
    return t


LAYER_COLUMNS = (("Grounding CS", "grounding_cs_mean"), ("Rnd-Words CS", "grounding_cs_random_mean"),
                 ("Grounding BS", "grounding_bs_mean"), ("Rnd-Words BS", "grounding_bs_random_mean"),
                 ("Matched", "recovery_matched"), ("Matched rnd", "recovery_matched_random"),
                 ("Lenient", "recovery_lenient"), ("Grounding acc.", "grounding_accuracy"),
                 ("Overlap", "overlap"), ("Recon. err.", "recon_rel_error_test"))


def layer_table(rows: Sequence[Row]) -> Table:
    return _by_table(rows, "layers", "By layer", "layer", "layer", LAYER_COLUMNS)


K_COLUMNS = (("Recon. err. train", "recon_rel_error_train"), ("Recon. err. test", "recon_rel_error_test"),
             ("Overlap", "overlap"), ("Matched", "recovery_matched"), ("Matched rnd", "recovery_matched_random"),
             ("Purity", "concept_purity"))


def k_table(rows: Sequence[Row]) -> Table:
    return _by_table(rows, "k", "By dictionary size K", "n_concepts", "K", K_COLUMNS)


def _by_table(rows: Sequence[Row], name: str, title: str, x: str, x_label: str,
              columns: Sequence[tuple[str, str]]) -> Table:
    """One row per (method, token, value of `x`), one column per (label, metric key)."""
    t = Table(name, title, ["method", "token", x_label], [c for c, _ in columns])
    for (method, token), series in _series(rows, x).items():
        for r in series:
            t.rows.append(([_display(method), str(token), str(r[x])], [value(r, key) for _, key in columns]))
    return t


def _series(rows: Sequence[Row], x: str) -> dict[tuple[str, Any], list[Row]]:
    """Rows per (method, token), one per value of `x` (representative when several), sorted by x."""
    out: dict[tuple[str, Any], list[Row]] = {}
    for method in ordered((r["method"] for r in rows), METHOD_ORDER):
        for token in ordered(r["token"] for r in rows):
            group = _by(rows, method=method, token=token)
            xs = sorted({r[x] for r in group if r.get(x) is not None})
            if xs:
                out[(method, token)] = [representative(_by(group, **{x: v})) for v in xs]  # type: ignore[misc]
    return out


def _varies(rows: Sequence[Row], key: str) -> bool:
    return len({r.get(key) for r in rows if r.get(key) is not None}) > 1


def tables(rows: Sequence[Row]) -> list[Table]:
    """Every table of a sweep: the paper's three, plus by-layer / by-K when the sweep varies them."""
    out = [table1(rows), overlap_table(rows), recovery_table(rows)]
    if _varies(rows, "layer"):
        out.append(layer_table(rows))
    if _varies(rows, "n_concepts"):
        out.append(k_table(rows))
    return out


# --- rendering (pure) ---------------------------------------------------------------------------------------
def to_markdown(t: Table) -> str:
    header = t.label_columns + t.value_columns
    lines = [f"## {t.title}", "", "| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    for labels, values in t.rows:
        lines.append("| " + " | ".join(labels + [fmt(v) for v in values]) + " |")
    if not t.rows:
        lines.append("| " + " | ".join([DASH] * len(header)) + " |")
    if t.note:
        lines += ["", t.note]
    return "\n".join(lines) + "\n"


def report_markdown(sweep_name: str, all_tables: Sequence[Table], n_rows: int, unfinished: Sequence[str]) -> str:
    head = [f"# Sweep `{sweep_name}`", "", f"{n_rows} rows (job × layer). Missing values: {DASH}.", ""]
    if unfinished:
        head += [f"Jobs without metrics.json (failed or unfinished): {', '.join(unfinished)}", ""]
    return "\n".join(head) + "\n" + "\n".join(to_markdown(t) for t in all_tables)


def csv_records(all_tables: Sequence[Table]) -> list[dict[str, Any]]:
    """Every cell: table, row (labels joined by ' / '), column, mean, std (empty when missing)."""
    out = []
    for t in all_tables:
        for labels, values in t.rows:
            for column, (mean, std) in zip(t.value_columns, values):
                out.append({"table": t.name, "row": " / ".join(labels), "column": column,
                            "mean": "" if mean is None else mean, "std": "" if std is None else std})
    return out


def to_csv(records: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(records)
    return buf.getvalue()


def runs_columns(rows: Sequence[Row]) -> list[str]:
    metrics = sorted({k for r in rows for k in r} - set(ID_KEYS))
    return list(ID_KEYS) + metrics


# --- figures (pure: they return matplotlib Figures) --------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never a window
    import matplotlib.pyplot as plt

    return plt


def layer_figure(rows: Sequence[Row]):
    """Grounding CS by layer with the random-words line (paper Fig. 5), and recovery by layer."""
    series = _series(rows, "layer")
    has = lambda key: any(r.get(key) is not None for s in series.values() for r in s)  # noqa: E731
    if not _varies(rows, "layer") or not (has("grounding_cs_mean") or has("recovery_matched")):
        return None
    plt = _pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for (method, token), s in series.items():
        xs = [r["layer"] for r in s]
        name = f"{_display(method)}, {token}"
        _line(a, xs, [r.get("grounding_cs_mean") for r in s], f"{name}: grounded words", "-o")
        _line(a, xs, [r.get("grounding_cs_random_mean") for r in s], f"{name}: random words", "--")
        _line(b, xs, [r.get("recovery_matched") for r in s], f"{name}: matched", "-o")
        _line(b, xs, [r.get("grounding_accuracy") for r in s], f"{name}: grounding acc.", "-s")
        _line(b, xs, [r.get("recovery_matched_random") for r in s], f"{name}: matched, random dict.", "--")
    a.set(xlabel="layer", ylabel="CLIPScore (concept's top samples vs words)", title="Grounding by layer")
    b.set(xlabel="layer", ylabel="score", title="Ground-truth recovery by layer")
    b.axhline(0.5, color="grey", lw=0.8, ls=":")
    from matplotlib.ticker import MaxNLocator

    for ax in (a, b):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def k_figure(rows: Sequence[Row]):
    """Relative reconstruction error against K, one line per (method, token)."""
    series = _series(rows, "n_concepts")
    if not _varies(rows, "n_concepts"):
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    drawn = False
    for (method, token), s in series.items():
        xs = [r["n_concepts"] for r in s]
        drawn |= _line(ax, xs, [_num(r.get("recon_rel_error_test")) for r in s], f"{_display(method)}, {token}: test", "-o")
        drawn |= _line(ax, xs, [_num(r.get("recon_rel_error_train")) for r in s], f"{_display(method)}, {token}: train", "--")
    if not drawn:
        plt.close(fig)
        return None
    ax.set(xlabel="K (concepts)", ylabel="relative reconstruction error ‖Z − VU‖ / ‖Z‖", title="Reconstruction vs K")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def scatter_figure(points: Sequence[Row]):
    """Per concept: CS of its grounded words (y) against random words (x), one colour per method."""
    pts = [p for p in points if _num(p.get("cs")) is not None and _num(p.get("cs_random")) is not None]
    if not pts:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    for method in ordered((p["method"] for p in pts), METHOD_ORDER):
        mine = [p for p in pts if p["method"] == method]
        above = sum(_num(p["cs"]) > _num(p["cs_random"]) for p in mine)  # type: ignore[operator]
        ax.scatter([_num(p["cs_random"]) for p in mine], [_num(p["cs"]) for p in mine], s=12, alpha=0.7,
                   label=f"{_display(method)} ({above}/{len(mine)} above the diagonal)")
    lo = min(min(_num(p["cs"]), _num(p["cs_random"])) for p in pts)  # type: ignore[type-var]
    hi = max(max(_num(p["cs"]), _num(p["cs_random"])) for p in pts)  # type: ignore[type-var]
    ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8, ls="--")
    ax.set(xlabel="CS, random words", ylabel="CS, concept's words", title="Grounding quality per concept")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _line(ax, xs: Sequence[Any], ys: Sequence[Any], label: str, style: str) -> bool:
    pts = [(x, _num(y)) for x, y in zip(xs, ys) if _num(y) is not None]
    if not pts:
        return False
    ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=label, ms=3)
    return True


# --- writing (I/O) --------------------------------------------------------------------------------------------
def write_report(sweep_dir: str | Path, sweep: Sweep | None = None, figures: bool = True) -> list[Path]:
    """Write a sweep's tables, runs and figures into its dir (read it unless given); returns the files."""
    root = Path(sweep_dir)
    sweep = sweep if sweep is not None else read_sweep(root)
    all_tables = tables(sweep.rows)
    written = {
        root / "tables.md": report_markdown(root.name, all_tables, len(sweep.rows), sweep.unfinished),
        root / "tables.csv": to_csv(csv_records(all_tables), ["table", "row", "column", "mean", "std"]),
        root / "runs.csv": to_csv(sweep.rows, runs_columns(sweep.rows)),
    }
    for path, text in written.items():
        path.write_text(text)
    paths = list(written)
    if figures:
        plt = None
        for name, fig in (("layer_ablation.png", layer_figure(sweep.rows)), ("recon_vs_k.png", k_figure(sweep.rows)),
                          ("grounding_scatter.png", scatter_figure(sweep.points))):
            if fig is not None:
                fig.savefig(root / name, dpi=120)
                plt = plt or _pyplot()
                plt.close(fig)
                paths.append(root / name)
    return paths


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
        if not sweep.rows:
            print(f"coxlmm-tables: error: no finished job under {d!r} (a job dir holds metrics.json and "
                  f".hydra/config.yaml; {len(sweep.unfinished)} job dirs without metrics.json).", file=sys.stderr)
            return 2
        for path in write_report(root, sweep, figures=not args.no_figures):
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
