"""A run's concept browser on disk: report.json (the export), thumbs/*.jpg and report.html.

    out_dir/report.html    the page: the export embedded as JSON, rendered by static/report.js
    out_dir/report.json    the same export, for other tools (schema: docs/browser.md)
    out_dir/thumbs/        one small JPEG per sample shown (`THUMB_PX`), shared by every place it appears

The page is self-contained apart from its thumbnails: CSS and JavaScript are inlined from the
package's static/ folder, nothing is fetched, so it opens from file:// on any disk.
`inline_report_html` gives the same page as one string with the thumbnails inlined as data: URIs
(for `wandb.Html`). A run with several layers gets `layer_<l>/report.html` each and a top
`report.html` linking them; a failed run dir gets `write_failed_report`'s page.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import re
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib.resources import files
from pathlib import Path
from typing import Any

import torch

from coxlmm.report.browser.export import THUMB_DIR, build_export, drop_missing_images, logit_lens, thumb_name, thumbnails_needed

log = logging.getLogger(__name__)

THUMB_PX = 96  # the page shows thumbnails at 96 px; the originals never travel with it
JPEG_QUALITY = 88
REPORT = "report.html"
EXPORT = "report.json"
_LAYER_DIR = re.compile(r"^layer_(-?\d+)$")
EXPECTED_FILES = ("metrics.json", "concepts.json", "dictionary.safetensors", ".hydra/config.yaml")


def static(name: str) -> str:
    """The text of a file shipped in the package's static/ folder."""
    return (files("coxlmm.report.browser") / "static" / name).read_text(encoding="utf-8")


def _json_script(node_id: str, value: Any) -> str:
    # "</" inside a <script> would end it; "<\/" is the same JSON string.
    text = json.dumps(value, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    return f'<script id="{node_id}" type="application/json">{text}</script>'


def html_page(title: str, body: str, *, scripts: Mapping[str, Any] = (), js: Sequence[str] = ()) -> str:
    """A complete page: inlined CSS, `body`, JSON data scripts {id: value}, then inlined `js` files."""
    data = "\n".join(_json_script(k, v) for k, v in dict(scripts).items())
    code = "\n".join(f"<script>\n{static(name)}\n</script>" for name in js)
    return (f'<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f'<link rel="icon" href="data:,">\n<title>{html.escape(title)}</title>\n'
            f"<style>\n{static('report.css')}\n</style>\n</head>\n<body>\n{body}\n{data}\n{code}\n</body>\n</html>\n")


def report_html(export: Mapping[str, Any], *, images: Mapping[str, str] | None = None, up: str | None = None) -> str:
    """The run page for an export. `images`: {thumbnail name: data URI} to inline them (W&B);
    None links the thumbnail files. `up`: a link to the run's layer page."""
    title = f"Concepts — {export.get('method', '')} · layer {export.get('layer')}"
    scripts: dict[str, Any] = {"coxlmm-data": export, "coxlmm-page": {"up": up, "inline": images is not None}}
    if images is not None:
        scripts["coxlmm-images"] = dict(images)
    body = '<div id="app"></div>\n<noscript>This page is drawn by JavaScript from report.json; enable it.</noscript>'
    return html_page(title, body, scripts=scripts, js=["report.js"])


def _write_thumbnail(im: Any, path: Path, px: int) -> None:
    im = im.convert("RGB")
    im.thumbnail((px, px))
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, "JPEG", quality=JPEG_QUALITY)


def _write_text(path: Path, text: str) -> None:
    """Write via a temporary file so that a reader never sees half a page."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


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
) -> Path:
    """Write report.json, thumbs/ and report.html of one run (layer) into `out_dir`; returns the page.

    concepts: `ConceptSet`; V_train (M, K) / V_test (M', K) or None: activations, row i <-> train[i] /
    test[i], each {"id", "index" (dataset index), "caption" (generated), "captions" (references)}.
    lens: `.unembed(U (K, B)) -> (K, vocab)` and `.tokenizer` (the logit lens). n_top / n_words /
    keep_words: the word-filter settings (keep_words: extra accepted words). metrics: flat numbers;
    schema / concept_scores: the run's score descriptions and per-concept columns (metrics/schema.py).
    image(split, dataset index) -> PIL image or None (then the page shows "no image").
    When `out_dir` is `layer_<l>` of a run, the run's top report.html (links to every layer) is
    rewritten too.
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
    written = set()
    for split, index in thumbnails_needed(export):
        im = image(split, index)
        if im is not None:
            _write_thumbnail(im, out_dir / thumb_name(split, index), thumb_px)
            written.add((split, index))
    drop_missing_images(export, written)
    layered = _LAYER_DIR.match(out_dir.name) is not None
    _write_text(out_dir / EXPORT, json.dumps(export, separators=(",", ":"), allow_nan=False))
    page = out_dir / REPORT
    _write_text(page, report_html(export, up=f"../{REPORT}" if layered else None))
    if layered:
        write_layers_page(out_dir.parent)
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

def _layer_dirs(run_dir: Path) -> list[tuple[int, Path]]:
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if p.is_dir() and (m := _LAYER_DIR.match(p.name))]
    return sorted(found)


def write_layers_page(run_dir: Path) -> Path:
    """run_dir/report.html linking the `layer_<l>/report.html` pages present, with each layer's
    method, K and words of its first concepts."""
    run_dir = Path(run_dir)
    rows = []
    for layer, d in _layer_dirs(run_dir):
        if not (d / REPORT).is_file():
            continue
        try:
            ex = json.loads((d / EXPORT).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            ex = {}
        words = "; ".join(", ".join(c["words"][:4]) for c in ex.get("concepts", [])[:4] if c.get("words"))
        rows.append(f'<tr><td><a href="{d.name}/{REPORT}">layer {layer}</a></td><td>{html.escape(str(ex.get("method", "")))}</td>'
                    f'<td class="num">{ex.get("n_concepts", "")}</td><td class="num">{ex.get("n_train", "")}</td>'
                    f"<td>{html.escape(words)}</td></tr>")
    body = (f'<header class="top"><h1>Run {html.escape(run_dir.name)}</h1><div class="sub">{len(rows)} layers, one '
            f"concept browser each</div></header><main><table class=\"grid\" id=\"layers\"><tr><th>layer</th><th>method</th>"
            f"<th>K</th><th>train samples</th><th>first concepts' words</th></tr>{''.join(rows)}</table></main>")
    page = run_dir / REPORT
    _write_text(page, html_page(f"Run {run_dir.name}: layers", body))
    return page


def write_failed_report(out_dir: Path, error: str, present: list[str]) -> Path:
    """report.html of a run dir without concepts (a failed or unfinished job): the error, the files
    present and the expected files that are missing."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    missing = [f for f in EXPECTED_FILES if f not in set(present)]
    items = lambda names: "".join(f"<li><code>{html.escape(n)}</code></li>" for n in names) or "<li>none</li>"  # noqa: E731
    body = (f'<header class="top"><h1 class="bad">No concepts in {html.escape(out_dir.name)}</h1>'
            f'<div class="sub">This job did not finish, so there is no concept browser for it.</div></header><main>'
            f'<h2>Error</h2><pre class="err" id="error">{html.escape(error or "(no error recorded)")}</pre>'
            f'<h2>Missing</h2><ul id="missing">{items(missing)}</ul>'
            f'<h2>Present</h2><ul id="present">{items(sorted(present))}</ul></main>')
    page = out_dir / REPORT
    _write_text(page, html_page(f"Failed: {out_dir.name}", body))
    return page
