"""coxlmm-tables on synthetic sweep dirs: job dirs with `.hydra/config.yaml` + `metrics.json`."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from coxlmm.report.tables import DASH, collect, fmt, job_rows, main, representative, table1, to_markdown


def make_job(sweep: Path, name: str, *, method: str, token: str, metrics: dict, layers=(-1,), n_concepts=20,
             choice: bool = True, concepts_layer: int | None = 29, points: list | None = None) -> Path:
    """A job dir as Hydra + the pipeline write it. `choice=False`: no hydra.yaml, the method name
    must come from the method config itself."""
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    cfg = {"token": token, "layers": list(layers), "seed": 0,
           "method": {"_target_": f"coxlmm.concepts.{method}.X", "name": method, "n_concepts": n_concepts},
           "paths": {"output_dir": "${hydra:runtime.output_dir}"}}  # unresolvable outside a run: must not matter
    OmegaConf.save(OmegaConf.create(cfg), job / ".hydra" / "config.yaml")
    if choice:
        OmegaConf.save(OmegaConf.create({"hydra": {"runtime": {"choices": {"method": method, "model": "depalm_mini"}}}}),
                       job / ".hydra" / "hydra.yaml")
    (job / ".hydra" / "overrides.yaml").write_text(f"- method={method}\n- token={token}\n")
    (job / "metrics.json").write_text(json.dumps(metrics))
    if concepts_layer is not None:
        (job / "concepts.json").write_text(json.dumps({"method": method, "layer": concepts_layer, "token": token,
                                                       "concepts": []}))
    if points is not None:
        (job / "grounding_points.json").write_text(json.dumps(points))
    return job


SEMI = {"cs_top1_mean": 0.61, "cs_top1_std": 0.09, "bs_top1_mean": 0.405, "bs_top1_std": 0.07,
        "rnd_words_cs_top1_mean": 0.519, "rnd_words_cs_top1_std": 0.05,
        "noise_imgs_cs_top1_mean": 0.425, "noise_imgs_cs_top1_std": 0.06,
        "gt_captions_cs_mean": 0.783, "gt_captions_cs_std": 0.06,
        "overlap": 0.086, "recovery_lenient": 0.97, "recovery_matched": 0.8, "concept_purity": 0.6,
        "grounding_accuracy": 0.5, "recovery_lenient_random": 0.6, "recovery_matched_random": 0.52,
        "concept_purity_random": 0.3, "grounding_accuracy_random": 0.0, "recon_rel_error_test": 0.3}
SIMPLE = {"cs_top1_mean": 0.546, "cs_top1_std": 0.08, "overlap": 0.371, "recovery_matched": 0.6,
          "recovery_matched_random": 0.5}


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    root = tmp_path / "paper_table1"
    make_job(root, "0_method=semi_nmf,token=circle", method="semi_nmf", token="circle", metrics=SEMI,
             points=[{"concept": 0, "cs": 0.7, "cs_random": 0.5}, {"concept": 1, "cs": 0.4, "cs_random": 0.5}])
    make_job(root, "1_method=simple,token=circle", method="simple", token="circle", metrics=SIMPLE, choice=False)
    (root / "multirun.yaml").write_text("hydra: {}\n")  # Hydra's sweep-level file: not a job
    return root


def test_collect_reads_identity_and_metrics(sweep: Path):
    rows = collect(sweep)
    assert [(r["method"], r["token"], r["layer"], r["n_concepts"]) for r in rows] == [
        ("semi_nmf", "circle", 29, 20), ("simple", "circle", 29, 20)]
    assert rows[0]["model"] == "depalm_mini" and rows[0]["overlap"] == pytest.approx(0.086)


def test_table1_layout_baselines_and_missing_cells(sweep: Path):
    md = to_markdown(table1(collect(sweep)))
    lines = md.splitlines()
    assert lines[2] == "| token | metric | Rnd-Words | Noise-Imgs | Simple | Semi-NMF | GT-captions |"
    assert "| circle | CS | 0.519 ± 0.050 | 0.425 ± 0.060 | 0.546 ± 0.080 | 0.610 ± 0.090 | 0.783 ± 0.060 |" in lines
    # BS: Simple has none, and no job has the BS baselines -> dashes, no crash.
    assert f"| circle | BS | {DASH} | {DASH} | {DASH} | 0.405 ± 0.070 | {DASH} |" in lines


def test_main_writes_markdown_csv_and_figures(sweep: Path, capsys):
    assert main([str(sweep)]) == 0
    md = (sweep / "tables.md").read_text()
    assert "| circle | 0.371 | 0.086 |" in md  # overlap: tokens x (Simple, Semi-NMF)
    assert "| Semi-NMF | 0.970 | 0.800 | 0.600 | 0.500 |" in md  # recovery
    assert f"| Simple | {DASH} | 0.600 | {DASH} | {DASH} |" in md
    assert "| Random dict. | 0.600 | 0.510 ± 0.010 | 0.300 | 0.000 |" in md  # pooled over the two jobs
    cells = list(csv.DictReader((sweep / "tables.csv").open()))
    cs = {(c["table"], c["row"], c["column"]): c for c in cells}
    assert float(cs[("table1", "circle / CS", "Semi-NMF")]["mean"]) == pytest.approx(0.61)
    assert float(cs[("table1", "circle / CS", "Semi-NMF")]["std"]) == pytest.approx(0.09)
    assert cs[("table1", "circle / BS", "Simple")]["mean"] == ""
    runs = list(csv.DictReader((sweep / "runs.csv").open()))
    assert len(runs) == 2 and runs[0]["job"].startswith("0_")
    assert (sweep / "grounding_scatter.png").stat().st_size > 0
    assert not (sweep / "layer_ablation.png").exists()  # one layer only: no curve
    assert "tables.md" in capsys.readouterr().out


def test_multi_layer_job_gives_one_row_per_layer_and_a_curve(tmp_path: Path):
    root = tmp_path / "layer_ablation"
    metrics = {"n_train": 100.0}
    for layer, cs in [(0, 0.45), (1, 0.5), (2, 0.62)]:
        metrics |= {f"layer_{layer}/grounding_cs_mean": cs, f"layer_{layer}/grounding_cs_random_mean": 0.48,
                    f"layer_{layer}/recovery_matched": 0.5 + layer / 10}
    make_job(root, "0_layers=[0,1,2]", method="semi_nmf", token="circle", metrics=metrics, layers=(0, 1, 2),
             concepts_layer=None)
    rows = collect(root)
    assert [r["layer"] for r in rows] == [0, 1, 2] and all(r["n_train"] == 100.0 for r in rows)
    assert main([str(root)]) == 0
    md = (root / "tables.md").read_text()
    assert "| Semi-NMF | circle | 2 | 0.620 | 0.480 |" in md
    assert (root / "layer_ablation.png").stat().st_size > 0


def test_k_sweep_gives_a_k_table_and_curve(tmp_path: Path):
    root = tmp_path / "k_ablation"
    for i, k in enumerate((5, 10, 20)):
        make_job(root, f"{i}_method.n_concepts={k}", method="semi_nmf", token="circle", n_concepts=k,
                 metrics={"recon_rel_error_train": 1 / k, "overlap": 0.1})
    assert main([str(root), "--no-figures"]) == 0
    assert "| Semi-NMF | circle | 10 | 0.100 |" in (root / "tables.md").read_text()
    assert not (root / "recon_vs_k.png").exists()
    assert main([str(root)]) == 0 and (root / "recon_vs_k.png").exists()
    # The other tables show the paper's K = 20 when a cell has several runs.
    assert "| circle | 0.100 |" in (root / "tables.md").read_text()


def test_unfinished_jobs_are_listed_and_empty_sweeps_fail(tmp_path: Path, capsys):
    root = tmp_path / "s"
    make_job(root, "0_a", method="pca", token="star", metrics={"overlap": 0.0})
    (root / "1_b" / ".hydra").mkdir(parents=True)
    (root / "1_b" / ".hydra" / "config.yaml").write_text("token: star\n")
    assert main([str(root), "--no-figures"]) == 0
    assert "Jobs without metrics.json (failed or unfinished): 1_b" in (root / "tables.md").read_text()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty)]) == 2
    assert main([str(tmp_path / "nope")]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_pure_helpers():
    assert fmt((0.5, None)) == "0.500" and fmt((None, 0.1)) == DASH and fmt((1.0, 0.25)) == "1.000 ± 0.250"
    rows = job_rows("j", {"token": "dog", "layers": [-1], "method": {"_target_": "coxlmm.concepts.pca.PCA"}}, {},
                    {"overlap": float("nan")})
    assert rows[0]["method"] == "pca" and rows[0]["layer"] == -1
    assert representative([{"layer": 3, "seed": 1}, {"layer": 5, "seed": 2}, {"layer": 5, "seed": 0}]) == {"layer": 5, "seed": 0}
