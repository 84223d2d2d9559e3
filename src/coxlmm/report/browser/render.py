"""The pages' HTML, from the Jinja2 templates in templates/ (autoescaped): one environment, its filters.

    render(template, **context) -> the page as a string
    static(name)                   a file of static/ (CSS, JavaScript), inlined by the templates as is
    markdown_html(md)              the `markdown` filter: the subset tables.md uses (headings, pipe
                                   tables as `DataFrame.to_html`, paragraphs, `code`), everything escaped
    html_table(rows, columns)      a table of cells as `DataFrame.to_html` (cells already HTML)
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from functools import lru_cache
from importlib.resources import files
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup, escape


def static(name: str) -> Markup:
    """The text of a file shipped in the package's static/ folder (inlined into a page, never escaped)."""
    return Markup((files("coxlmm.report.browser") / "static" / name).read_text(encoding="utf-8"))


def json_script(value: Any, node_id: str) -> Markup:
    """`<script id=... type="application/json">` holding `value`; "</" inside a <script> would end it,
    "<\\/" is the same JSON string."""
    text = json.dumps(value, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    return Markup(f'<script id="{escape(node_id)}" type="application/json">{text}</script>')


def num(x: Any) -> str:
    """A table cell: numbers to 4 significant digits, None as a dash."""
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return f"{x:.4g}"
    return "–" if x is None else str(x)


def html_table(rows: Sequence[Sequence[Any]], columns: Sequence[str], **to_html: Any) -> Markup:
    """`rows` (cells that are HTML already: escape the text ones) under `columns` (escaped here), as
    `DataFrame.to_html`, no index; `to_html`: its options (classes, table_id, ...)."""
    import pandas as pd  # here: a run's page never needs it, and it takes 0.15 s to import

    frame = pd.DataFrame([list(r) for r in rows], columns=[str(escape(c)) for c in columns])
    return Markup(frame.to_html(index=False, escape=False, border=0, **to_html))


# --- markdown (the subset tables.md uses) -> HTML ------------------------------------------------------
def _inline(text: str) -> Markup:
    parts = re.split(r"(`[^`]*`)", text)
    return Markup("").join(Markup("<code>{}</code>").format(p[1:-1]) if p.startswith("`") and p.endswith("`")
                           and len(p) > 1 else escape(p) for p in parts)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def markdown_html(md: str) -> Markup:
    """Headings (#..######, one level down: the page's own h1 is its title), pipe tables and paragraphs of
    `md` as HTML; everything escaped."""
    out: list[Markup] = []
    lines = md.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
        elif m := re.match(r"^(#{1,6})\s+(.*)$", line):
            level = min(len(m.group(1)) + 1, 6)
            out.append(Markup("<h{0}>{1}</h{0}>").format(level, _inline(m.group(2))))
            i += 1
        elif line.lstrip().startswith("|"):
            block = []
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                block.append(lines[i])
                i += 1
            rows = [_cells(b) for b in block if not re.fullmatch(r"[\s|:\-]+", b)]
            if rows:
                import pandas as pd

                head = [_inline(c) for c in rows[0]]
                body = [[_inline(c) for c in r] + [""] * (len(head) - len(r)) for r in rows[1:]]
                frame = pd.DataFrame([r[:len(head)] for r in body], columns=[str(h) for h in head])
                out.append(Markup(frame.to_html(index=False, escape=False, border=0, classes=["grid", "md"])))
        else:
            para = []
            while i < len(lines) and lines[i].strip() and not lines[i].lstrip().startswith(("|", "#")):
                para.append(lines[i].strip())
                i += 1
            out.append(Markup("<p>{}</p>").format(_inline(" ".join(para))))
    return Markup("\n").join(out)


@lru_cache(maxsize=1)
def environment() -> Environment:
    env = Environment(loader=PackageLoader("coxlmm.report.browser", "templates"),
                      autoescape=select_autoescape(default=True), keep_trailing_newline=True,
                      trim_blocks=True, lstrip_blocks=True)
    env.filters |= {"markdown": markdown_html, "num": num, "json_script": json_script}
    env.globals["static"] = static
    return env


def render(template: str, **context: Any) -> str:
    """The page `template` (a file of templates/) filled with `context`."""
    return environment().get_template(template).render(**context)
