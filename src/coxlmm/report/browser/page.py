"""A run's concept browser on disk: report.json (the export), thumbs/*.jpg and report.html.

    out_dir/report.html    the page: the export embedded as JSON, rendered by static/report.js
    out_dir/report.json    the same export, for other tools (schema: docs/browser.md)
    out_dir/thumbs/        one small JPEG per sample shown (`THUMB_PX`), shared by every place it appears

The page is self-contained apart from its thumbnails: CSS and JavaScript are inlined from the
package's static/ folder, nothing is fetched, so it opens from file:// on any disk.
`inline_report_html` gives the same page as one string with the thumbnails inlined as data: URIs
(for `wandb.Html`). A run with several layers gets `layer_<name>/report.html` each and a top
`report.html` linking them; a failed run dir gets `write_failed_report`'s page.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from markupsafe import Markup, escape

from coxlmm.io import atomic_write, content_key
from coxlmm.layer import Layer
from coxlmm.report.browser.export import (
    THUMB_DIR,
    build_export,
    drop_missing_images,
    logit_lens,
    thumb_name,
    thumbnails_needed,
)
from coxlmm.report.browser.render import html_table, render

log = logging.getLogger(__name__)

THUMB_PX = 96  # the page shows thumbnails at 96 px; the originals never travel with it
JPEG_QUALITY = 88
REPORT = "report.html"
EXPORT = "report.json"
EXPECTED_FILES = ("metrics.json", "concepts.json", "dictionary.safetensors", ".hydra/config.yaml")


def report_html(export: Mapping[str, Any], *, images: Mapping[str, str] | None = None, up: str | None = None) -> str:
    """The run page for an export. `images`: {thumbnail name: data URI} to inline them (W&B);
    None links the thumbnail files. `up`: a link to the run's layer page."""
    title = f"Concepts — {export.get('method', '')} · layer {export.get('layer_name', export.get('layer'))}"
    scripts: dict[str, Any] = {"coxlmm-data": export, "coxlmm-page": {"up": up, "inline": images is not None}}
    if images is not None:
        scripts["coxlmm-images"] = dict(images)
    return render("run.html", title=title, scripts=scripts, js=["report.js"])


def _write_thumbnail(im: Any, path: Path, px: int) -> None:
    im = im.convert("RGB")
    im.thumbnail((px, px))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: im.save(tmp, "JPEG", quality=JPEG_QUALITY))


def _link(src: Path, dst: Path) -> None:
    """`dst` as a hard link to `src` (a copy across file systems)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def thumb_cache_dirs(root: Path | None, datasets: Mapping[str, Any]) -> dict[str, Path]:
    """{split: the folder of its thumbnails in the cache `root`}, keyed by the split's dataset fingerprint (the
    key of its features too) and the JPEG quality; {} without a root. `write_run_report` keeps each size apart."""
    if root is None:
        return {}
    return {split: Path(root) / content_key({"images": fingerprint, "quality": JPEG_QUALITY})
            for split, fingerprint in datasets.items()}


def write_run_report(
    out_dir: Path,
    *,
    concepts: Any,
    V_train: torch.Tensor,
    V_test: torch.Tensor | None,
    train: Sequence[Mapping[str, Any]],
    test: Sequence[Mapping[str, Any]],
    lens: Any,
    n_top: int,
    n_words: int,
    keep_words: Iterable[str] = frozenset(),
    metrics: Mapping[str, Any],
    schema: Any = None,
    concept_scores: Mapping[str, Any] | None = None,
    image: Callable[[str, int], Any],
    n_bins: int = 5,
    per_bin: int = 4,
    n_local: int = 24,
    thumb_px: int = THUMB_PX,
    up: bool = False,
    thumb_cache: Mapping[str, Path] | None = None,
) -> Path:
    """Write report.json, thumbs/ and report.html of one run (layer) into `out_dir`; returns the page.

    concepts: `ConceptSet`; V_train (M, K) / V_test (M', K) or None: activations, row i <-> train[i] /
    test[i], each {"id", "index" (dataset index), "caption" (generated), "captions" (references)}.
    lens: `.unembed(U (K, B)) -> (K, vocab)` and `.tokenizer` or `.pieces` (the logit lens). n_top / n_words /
    keep_words: the word-filter settings (keep_words: extra accepted words). metrics: flat numbers;
    schema / concept_scores: the run's score descriptions and per-concept columns (metrics/schema.py).
    image(split, dataset index) -> PIL image or None (then the page shows "no image").
    up: the page is one layer's of a multi-layer run (`layer_<name>/`): it links the run's page
    (`write_layers_page`, which the pipeline rewrites after each layer).
    thumb_cache: {split: folder} (`thumb_cache_dirs`): a thumbnail is drawn once into its split's folder and
    linked from there into `thumbs/` by every later run (the jobs of a sweep show the same samples).
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    keep_words = frozenset(keep_words)
    table = logit_lens(lens, concepts.U, concepts.words, n_top=n_top, n_words=n_words, keep_words=keep_words)
    export = build_export(concepts, V_train, V_test, train, test, table, metrics=metrics, schema=schema,
                          concept_scores=concept_scores,
                          settings={"n_top": n_top, "n_words": n_words, "keep_words": sorted(keep_words),
                                    "thumb_px": thumb_px},
                          n_bins=n_bins, per_bin=per_bin, n_local=n_local)
    shutil.rmtree(out_dir / THUMB_DIR, ignore_errors=True)  # ours: thumbnails of an earlier run here
    def thumbnail(key: tuple[str, int]) -> tuple[str, int] | None:
        path = out_dir / thumb_name(*key)
        cached = (Path(thumb_cache[key[0]]) / f"px{thumb_px}" / thumb_name(*key)
                  if key[0] in (thumb_cache or {}) else None)
        if cached is None or not cached.is_file():
            im = image(*key)
            if im is None:
                return None
            _write_thumbnail(im, cached or path, thumb_px)
        if cached is not None:
            _link(cached, path)
        return key

    # PIL draws, resizes and encodes with the GIL released: the job's threads share the thumbnails
    with ThreadPoolExecutor(max(1, torch.get_num_threads())) as pool:
        written = {key for key in pool.map(thumbnail, thumbnails_needed(export)) if key is not None}
    drop_missing_images(export, written)
    atomic_write(out_dir / EXPORT, json.dumps(export, separators=(",", ":"), allow_nan=False))
    page = out_dir / REPORT
    atomic_write(page, report_html(export, up=f"../{REPORT}" if up else None))
    log.info("concept browser: %s (%d concepts, %d thumbnails, %.2f s)", page, export["n_concepts"], len(written),
             time.perf_counter() - start)
    return page


def inline_report_html(out_dir: Path) -> str:
    """The run page of `out_dir` (after `write_run_report`) as one HTML string, thumbnails inlined
    as data: URIs: for `wandb.Html(inline_report_html(run_dir))` or mail."""
    out_dir = Path(out_dir)
    export = json.loads((out_dir / EXPORT).read_text(encoding="utf-8"))
    images = {}
    for split, index in thumbnails_needed(export):
        name = thumb_name(split, index)
        path = out_dir / name
        if path.is_file():
            images[name] = "data:image/jpeg;base64," + base64.b64encode(path.read_bytes()).decode("ascii")
    return report_html(export, images=images)


# --- pages without the run renderer (server-side HTML) --------------------------------------------------

def write_layers_page(run_dir: Path, layers: Iterable[Layer]) -> Path:
    """run_dir/report.html linking the `layer_<name>/report.html` pages of `layers` present, by layer
    index (`norm` last), with each layer's method, K and words of its first concepts."""
    run_dir = Path(run_dir)
    rows = []
    for layer in sorted(layers):
        d = run_dir / layer.dir
        if not (d / REPORT).is_file():
            continue
        try:
            ex = json.loads((d / EXPORT).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            ex = {}
        words = "; ".join(", ".join(c["words"][:4]) for c in ex.get("concepts", [])[:4] if c.get("words"))
        link = Markup('<a href="{}/{}">layer {}</a>').format(layer.dir, REPORT, layer.name)
        rows.append([link, *(escape(ex.get(k, "")) for k in ("method", "n_concepts", "n_train")), escape(words)])
    table = html_table(rows, ["layer", "method", "K", "train samples", "first concepts' words"], classes="grid",
                       table_id="layers")
    page = run_dir / REPORT
    atomic_write(page, render("layers.html", title=f"Run {run_dir.name}: layers", run=run_dir.name, n_layers=len(rows),
                             table=table))
    return page


def write_failed_report(out_dir: Path, error: str, present: list[str]) -> Path:
    """report.html of a run dir without concepts (a failed or unfinished job): the error, the files
    present and the expected files that are missing."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    missing = [f for f in EXPECTED_FILES if f not in set(present)]
    page = out_dir / REPORT
    atomic_write(page, render("failed.html", title=f"Failed: {out_dir.name}", run=out_dir.name, error=error,
                             missing=missing, present=sorted(present)))
    return page
