"""The README's claims are written from the sweeps' tables.csv: verdicts from the intervals, markers kept."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from coxlmm.report.claims import BEGIN, END, main, update_readme, versus


def paired(rows):
    return pd.DataFrame([{"table": "paired", "row": f"{tok} / CS, test sample / Semi-NMF", "column": "Rnd-Words",
                          "mean": m, "std": None, "lo": lo, "hi": hi} for tok, m, lo, hi in rows])


def test_a_claim_holds_for_the_tokens_whose_interval_is_above_zero():
    t = paired([("circle", 0.3, 0.2, 0.4), ("star", 0.05, -0.01, 0.11), ("heart", -0.2, -0.3, -0.1)])
    text = versus(t, "CS", "Rnd-Words")
    assert text.startswith("**above: 1 of 3**, **below: 1**")
    assert "-0.200 [-0.300, -0.100] (heart) to +0.300 [+0.200, +0.400] (circle)" in text
    assert versus(t, "BS", "Rnd-Words") == "–"


def test_the_section_goes_between_the_readme_markers(tmp_path: Path):
    sweep = tmp_path / "multirun" / "paper_table1"
    sweep.mkdir(parents=True)
    paired([("circle", 0.3, 0.2, 0.4)]).to_csv(sweep / "tables.csv", index=False)
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n{BEGIN}\nold numbers\n{END}\nafter\n")
    assert main([str(tmp_path / "multirun"), "--readme", str(readme)]) == 0
    doc = readme.read_text()
    assert "old numbers" not in doc and "before" in doc and "after" in doc
    assert "**above: 1 of 1**" in doc and "Not in this run (no tables.csv): paper_shape_first" in doc
    update_readme(readme, "again\n")
    assert readme.read_text().count(BEGIN) == 1 and "again" in readme.read_text()
