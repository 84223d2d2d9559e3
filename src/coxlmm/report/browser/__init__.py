"""The concept browser: static HTML pages over a documented JSON export (docs/browser.md).

    write_run_report(out_dir, ...)     report.json + thumbs/ + report.html of one run (layer)
    inline_report_html(out_dir)        that page as one string, thumbnails inlined (wandb.Html)
    write_failed_report(out_dir, ...)  the page of a run dir without concepts (a failed job)
    write_sweep_index(sweep_dir, ...)  index.html of a sweep: failed jobs, one row per job, tables, figures

export.py builds the document (pure), page.py and index.py write pages from the Jinja2 templates in
templates/ (render.py: the environment and its filters); static/ holds the CSS and JavaScript, inlined
into every page: no network, no CDN, no server.
"""

from coxlmm.report.browser.export import SCHEMA, build_export, logit_lens
from coxlmm.report.browser.index import write_sweep_index
from coxlmm.report.browser.page import (inline_report_html, report_html, write_failed_report, write_layers_page,
                                        write_run_report)

__all__ = ["SCHEMA", "build_export", "logit_lens", "write_run_report", "inline_report_html", "report_html",
           "write_failed_report", "write_layers_page", "write_sweep_index"]
