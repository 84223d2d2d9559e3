"""A sweep's index.html: failed jobs first, one row per job linking its report, the tables, the figures.

    jobs: one dict per job dir: {"job" (dir name), "overrides" (str), "status" ("ok" | "failed" |
          "unfinished"), "error" (str or None), "metrics" ({column title: value}: what the jobs table
          shows), "report" (path of the job's report.html relative to the sweep dir, or None)}
    tables_md: the sweep's tables.md (headings, paragraphs and pipe tables), or None
    figures: PNG paths, shown by their path relative to the sweep dir

Server-side HTML from templates/index.html (render.py: the `markdown` filter draws tables.md), plus
static/index.js to sort the jobs table by a column.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from coxlmm.io import atomic_write
from coxlmm.report.browser.render import render

INDEX = "index.html"
STATUSES = ("ok", "failed", "unfinished")
MAX_METRIC_COLUMNS = 10


def metric_columns(jobs: Sequence[Mapping[str, Any]]) -> list[str]:
    """The jobs table's metric columns: the jobs' metrics (the caller passes the headline ones, under
    their labels), in first-seen order, at most MAX_METRIC_COLUMNS."""
    return list(dict.fromkeys(k for j in jobs for k in (j.get("metrics") or {})))[:MAX_METRIC_COLUMNS]


# --- the page -------------------------------------------------------------------------------------------

def _check(jobs: Sequence[Mapping[str, Any]]) -> None:
    from coxlmm.errors import CoxlmmError

    for j in jobs:
        if "job" not in j or j.get("status") not in STATUSES:
            raise CoxlmmError(f"write_sweep_index: job {dict(j)!r} needs a 'job' name and a 'status' in {STATUSES}")


def write_sweep_index(sweep_dir: Path, *, jobs: list[dict], tables_md: str | None, figures: list[Path]) -> Path:
    """Write sweep_dir/index.html; returns its path. Jobs keep the given order."""
    sweep_dir = Path(sweep_dir)
    _check(jobs)
    counts = {s: sum(j["status"] == s for j in jobs) for s in STATUSES}
    if tables_md:  # its own "# Sweep ..." title is the page's
        tables_md = re.sub(r"\A\s*# [^\n]*\n", "", tables_md)
    figs = [{"src": Path(os.path.relpath(f, sweep_dir)).as_posix(), "stem": Path(f).stem, "name": Path(f).name}
            for f in figures if Path(f).is_file()]
    page = sweep_dir / INDEX
    sweep_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(page, render("index.html", title=f"Sweep {sweep_dir.name}", js=["index.js"], sweep=sweep_dir.name,
                             jobs=jobs, bad=[j for j in jobs if j["status"] != "ok"], counts=counts,
                             columns=metric_columns(jobs), tables_md=tables_md, figures=figs))
    return page
