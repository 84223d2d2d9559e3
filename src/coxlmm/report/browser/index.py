"""A sweep's index.html: failed jobs first, one row per job linking its report, the tables, the figures.

    jobs: one dict per job dir: {"job" (dir name), "overrides" (str), "status" ("ok" | "failed" |
          "unfinished"), "error" (str or None), "metrics" ({column title: value}: what the jobs table
          shows), "report" (path of the job's report.html relative to the sweep dir, or None)}
    tables_md: the sweep's tables.md (headings, paragraphs and pipe tables), or None
    figures: PNG paths, shown by their path relative to the sweep dir

Server-side HTML (no data to render), plus static/index.js to sort the jobs table by a column.
"""

from __future__ import annotations

import html
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from coxlmm.report.browser.page import _write_text, html_page

INDEX = "index.html"
STATUSES = ("ok", "failed", "unfinished")
MAX_METRIC_COLUMNS = 10


def metric_columns(jobs: Sequence[Mapping[str, Any]]) -> list[str]:
    """The jobs table's metric columns: the jobs' metrics (the caller passes the headline ones, under
    their labels), in first-seen order, at most MAX_METRIC_COLUMNS."""
    return list(dict.fromkeys(k for j in jobs for k in (j.get("metrics") or {})))[:MAX_METRIC_COLUMNS]


def _fmt(x: Any) -> str:
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return f"{x:.4g}"
    return "–" if x is None else html.escape(str(x))


# --- markdown (the subset tables.md uses) -> HTML ------------------------------------------------------

def _inline(text: str) -> str:
    parts = re.split(r"(`[^`]*`)", text)
    return "".join(f"<code>{html.escape(p[1:-1])}</code>" if p.startswith("`") and p.endswith("`") and len(p) > 1
                   else html.escape(p) for p in parts)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def markdown_html(md: str) -> str:
    """Headings (#..######), pipe tables and paragraphs of `md` as HTML; everything escaped."""
    out: list[str] = []
    lines = md.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
        elif m := re.match(r"^(#{1,6})\s+(.*)$", line):
            level = min(len(m.group(1)) + 1, 6)  # the page's own h1 is the title
            out.append(f"<h{level}>{_inline(m.group(2))}</h{level}>")
            i += 1
        elif line.lstrip().startswith("|"):
            block = []
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                block.append(lines[i])
                i += 1
            rows = [_cells(b) for b in block if not re.fullmatch(r"[\s|:\-]+", b)]
            if rows:
                head = "".join(f"<th>{_inline(c)}</th>" for c in rows[0])
                body = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
                out.append(f'<table class="grid md"><tr>{head}</tr>{body}</table>')
        else:
            para = []
            while i < len(lines) and lines[i].strip() and not lines[i].lstrip().startswith(("|", "#")):
                para.append(lines[i].strip())
                i += 1
            out.append(f"<p>{_inline(' '.join(para))}</p>")
    return "\n".join(out)


# --- the page -------------------------------------------------------------------------------------------

def _check(jobs: Sequence[Mapping[str, Any]]) -> None:
    from coxlmm.errors import CoxlmmError

    for j in jobs:
        if "job" not in j or j.get("status") not in STATUSES:
            raise CoxlmmError(f"write_sweep_index: job {dict(j)!r} needs a 'job' name and a 'status' in {STATUSES}")


def _job_row(j: Mapping[str, Any], columns: Sequence[str]) -> str:
    name = html.escape(str(j["job"]))
    link = f'<a href="{html.escape(str(j["report"]))}">{name}</a>' if j.get("report") else name
    metrics = j.get("metrics") or {}
    cells = "".join(f'<td class="num">{_fmt(metrics.get(c))}</td>' for c in columns)
    return (f'<tr class="{j["status"]}"><td>{link}</td><td>{html.escape(str(j.get("overrides") or ""))}</td>'
            f"<td>{j['status']}</td>{cells}</tr>")


def write_sweep_index(sweep_dir: Path, *, jobs: list[dict], tables_md: str | None, figures: list[Path]) -> Path:
    """Write sweep_dir/index.html; returns its path. Jobs keep the given order."""
    sweep_dir = Path(sweep_dir)
    _check(jobs)
    columns = metric_columns(jobs)
    counts = {s: sum(j["status"] == s for j in jobs) for s in STATUSES}
    bad = [j for j in jobs if j["status"] != "ok"]
    parts = [f'<header class="top"><h1>Sweep {html.escape(sweep_dir.name)}</h1><div class="sub">'
             f"{len(jobs)} jobs: {counts['ok']} ok, {counts['failed']} failed, {counts['unfinished']} unfinished"
             ' · <a href="#jobs">jobs</a> · <a href="#tables">tables</a> · <a href="#figures">figures</a></div></header><main>']
    if bad:
        items = "".join(
            f'<li><b>{html.escape(str(j["job"]))}</b> ({j["status"]})'
            + (f' — <a href="{html.escape(str(j["report"]))}">page</a>' if j.get("report") else "")
            + (f'<pre class="err">{html.escape(str(j["error"]))}</pre>' if j.get("error") else "") + "</li>"
            for j in bad)
        parts.append(f'<section id="failed"><h2 class="bad">Jobs without results ({len(bad)})</h2><ul>{items}</ul></section>')
    head = "".join(f'<th class="sortable">{html.escape(c)}</th>' for c in ["job", "overrides", "status", *columns])
    parts.append(f'<section id="jobs"><h2>Jobs</h2><p class="muted">Click a job for its concept browser, a column '
                 f'header to sort.</p><table class="grid" id="jobs-table"><thead><tr>{head}</tr></thead><tbody>'
                 + "".join(_job_row(j, columns) for j in jobs) + "</tbody></table></section>")
    if tables_md:  # its own "# Sweep ..." title is the page's
        tables_md = re.sub(r"\A\s*# [^\n]*\n", "", tables_md)
    parts.append('<section id="tables"><h2>Tables</h2>' + (markdown_html(tables_md) if tables_md else
                                                           '<p class="muted">no tables.md</p>') + "</section>")
    figs = "".join(f'<figure><img src="{html.escape(Path(os.path.relpath(f, sweep_dir)).as_posix())}" '
                   f'alt="{html.escape(Path(f).stem)}"><figcaption>{html.escape(Path(f).name)}</figcaption></figure>'
                   for f in figures if Path(f).is_file())
    parts.append(f'<section id="figures" class="figures"><h2>Figures</h2>{figs or "<p class=muted>no figures</p>"}</section></main>')
    page = sweep_dir / INDEX
    sweep_dir.mkdir(parents=True, exist_ok=True)
    _write_text(page, html_page(f"Sweep {sweep_dir.name}", "\n".join(parts), js=["index.js"]))
    return page
