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


def test_make_causal_alone_writes_its_block_with_intervals_and_leaves_the_paper_claims(tmp_path: Path):
    from coxlmm.report.claims import CAUSAL_BEGIN, CAUSAL_END

    sweep = tmp_path / "multirun" / "causal"
    sweep.mkdir(parents=True)
    rows = [{"table": "causal_faithfulness", "row": "Semi-NMF / circle / 22", "column": "CE recovered (zero)",
             "mean": 0.9, "std": None, "lo": 0.85, "hi": 0.95},
            {"table": "causal_steering", "row": "Semi-NMF / circle / 22 / α = 0.1", "column": "success",
             "mean": 0.4, "std": None, "lo": 0.3, "hi": 0.5},
            {"table": "causal_steering", "row": "Semi-NMF / circle / 22 / α = 0.1", "column": "Δ − isotropic",
             "mean": 0.35, "std": None, "lo": 0.25, "hi": 0.45},
            {"table": "causal_steering", "row": "PCA / circle / 22 / α = 0.1", "column": "Δ − isotropic",
             "mean": 0.01, "std": None, "lo": -0.05, "hi": 0.07}]
    pd.DataFrame(rows).to_csv(sweep / "tables.csv", index=False)
    readme = tmp_path / "README.md"
    readme.write_text(f"{BEGIN}\npaper numbers\n{END}\n{CAUSAL_BEGIN}\nnone yet\n{CAUSAL_END}\n")
    assert main([str(tmp_path / "multirun"), "--readme", str(readme)]) == 0
    doc = readme.read_text()
    assert "paper numbers" in doc and "none yet" not in doc  # the paper block is not touched by make causal
    assert "| Semi-NMF | circle | 22 | +0.900 [+0.850, +0.950] |" not in doc  # CE recovered is unsigned
    assert "| Semi-NMF | circle | 22 | 0.900 [0.850, 0.950] |" in doc
    assert "| Semi-NMF | circle | 22 | α = 0.1 | 0.400 [0.300, 0.500] | +0.350 [+0.250, +0.450] |" in doc
    assert "| 22 | α = 0.1 | 1 / 0 / 1 |" in doc  # above / below / n.s. over the two methods


def test_claims_without_any_sweep_say_what_to_run(tmp_path: Path):
    import pytest

    with pytest.raises(SystemExit, match="run make paper"):
        main([str(tmp_path)])
