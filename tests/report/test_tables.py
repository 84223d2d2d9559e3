"""coxlmm-tables on synthetic sweep dirs: job dirs with `.hydra/config.yaml` + `metrics.json` (+ the
layers' concepts.json and test_scores.json), aggregated with pandas."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from coxlmm.report.tables import DASH, collect, fmt, job_rows, main, read_sweep, representative, table1, to_markdown


def make_job(sweep: Path, name: str, *, method: str, token: str, metrics: dict, layers=(-1,), n_concepts=20,
             seed: int = 0, display: str | None = None, concepts_layer: int | None = 29, points: list | None = None,
             scores: dict | None = None) -> Path:
    """A job dir as Hydra + the pipeline write it."""
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    cfg = {"token": token, "layers": list(layers), "seed": seed,
           "method": {"_target_": f"coxlmm.concepts.{method}.X", "n_concepts": n_concepts},
           "paths": {"output_dir": "${hydra:runtime.output_dir}"}}  # unresolvable outside a run: must not matter
    OmegaConf.save(OmegaConf.create(cfg), job / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": {"runtime": {"choices": {"method": method, "model": "depalm_mini"}}}}),
                   job / ".hydra" / "hydra.yaml")
    (job / "metrics.json").write_text(json.dumps(metrics))
    if concepts_layer is not None:
        extra = {"method_display": display or method, "layer_name": str(concepts_layer)}
        (job / "concepts.json").write_text(json.dumps({"method": method, "layer": concepts_layer, "token": token,
                                                       "concepts": [], "extra": extra}))
    if points is not None:
        (job / "grounding_points.json").write_text(json.dumps(points))
    if scores is not None:
        (job / "test_scores.json").write_text(json.dumps(scores))
    return job


def scores(top1: list[float], null: list[float]) -> dict:
    return {"ids": [str(i) for i in range(len(top1))],
            "scores": {"top1_cs": top1, "rnd_words_cs": null, "token_only_cs": top1}}


SEMI = {"cs_top1_mean": 0.61, "cs_top1_std": 0.09, "bs_top1_mean": 0.405, "bs_top1_std": 0.07,
        "rnd_words_cs_top1_mean": 0.519, "rnd_words_cs_top1_std": 0.05, "token_only_cs_top1_mean": 1.3,
        "noise_imgs_cs_top1_mean": 0.425, "noise_imgs_cs_top1_std": 0.06,
        "gt_captions_cs_mean": 0.783, "gt_captions_cs_std": 0.06, "sparsity_l0_test": 6.5,
        "overlap": 0.086, "recovery_matched": 0.8, "recovery_matched/colour": 0.9,
        "recovery_matched_prefix_only": 0.7, "recovery_matched_prefix_only/colour": 0.6, "purity_corrected": 0.4,
        "grounding_accuracy": 0.5, "recovery_matched_random": 0.52, "recovery_matched_random/colour": 0.5,
        "recovery_matched_diffmean": 0.95, "recon_rel_error_test": 0.3,
        "recovery_matched/colour/text_known": 0.91, "recovery_matched/colour/image_only": 0.81,
        "recovery_matched/image_only": 0.81, "recovery_matched_prefix_only/colour/image_only": 0.61,
        "recovery_n_samples/colour/image_only": 7, "grounding_cs_mean": 0.71, "grounding_cs_random_mean": 0.52,
        "grounding_cs_win_rate": 0.8}
SIMPLE = {"cs_top1_mean": 0.546, "cs_top1_std": 0.08, "overlap": 0.371, "recovery_matched": 0.6,
          "recovery_matched_random": 0.5}


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    root = tmp_path / "paper_table1"
    rng = np.random.default_rng(0)
    null = rng.normal(0.5, 0.2, 60).tolist()
    for seed in (0, 1):
        make_job(root, f"{2 * seed}_method=semi_nmf,seed={seed}", method="semi_nmf", display="Semi-NMF", token="circle",
                 seed=seed, metrics={**SEMI, "cs_top1_mean": 0.61 + 0.02 * seed, "overlap": 0.086},
                 points=[{"concept": 0, "cs": 0.7, "cs_random": 0.5}, {"concept": 1, "cs": 0.4, "cs_random": 0.5}],
                 scores=scores([x + 0.3 for x in null], null))
    make_job(root, "1_method=simple,seed=0", method="simple", display="Simple", token="circle", metrics=SIMPLE)
    (root / "multirun.yaml").write_text("hydra: {}\n")  # Hydra's sweep-level file: not a job
    return root


def test_collect_reads_identity_and_metrics(sweep: Path):
    rows = collect(sweep)
    assert [(r["method"], r["method_display"], r["token"], r["layer"], r["n_concepts"], r["seed"]) for r in rows] == [
        ("semi_nmf", "Semi-NMF", "circle", 29, 20, 0), ("simple", "Simple", "circle", 29, 20, 0),
        ("semi_nmf", "Semi-NMF", "circle", 29, 20, 1)]
    assert rows[0]["model"] == "depalm_mini" and rows[0]["overlap"] == pytest.approx(0.086)


def test_table1_has_the_nulls_methods_by_display_name_and_std_across_seeds(sweep: Path):
    md = to_markdown(table1(read_sweep(sweep).runs))
    lines = [l.replace(" ", "") for l in md.splitlines()]
    header = "|token|metric|Rnd-Words|Token-only|Rnd-Concept|Noise-Imgs|Semi-NMF|Simple|GT-captions|"
    assert header in lines
    # Semi-NMF: two seeds (0.61, 0.63) -> mean 0.620, std across seeds 0.010; Simple: one seed, std over samples.
    assert f"|circle|CS|0.519±0.000|1.300±0.000|{DASH}|0.425±0.000|0.620±0.010|0.546±0.080|0.783±0.000|" in lines
    assert f"|circle|L0(test)|{DASH}|{DASH}|{DASH}|{DASH}|6.500±0.000|{DASH}|{DASH}|" in lines
    assert "std across seeds (2 seed(s))" in md


def test_main_writes_markdown_csv_paired_differences_and_figures(sweep: Path, capsys):
    assert main([str(sweep)]) == 0
    md = (sweep / "tables.md").read_text()
    flat = md.replace(" ", "")
    # paired: top1 − Rnd-Words = +0.3 on every sample: the CI excludes 0; top1 − Token-only = 0 exactly.
    assert "|circle|CS|Semi-NMF|0.300[+0.300,+0.300]*|" in flat
    assert "0.000[+0.000,+0.000]|" in flat
    assert "|circle|0.086±0.000|0.371|" in flat  # overlap: tokens x (Semi-NMF, Simple)
    recovery = [l for l in flat.splitlines() if l.startswith("|Semi-NMF|0.800")]
    assert recovery and "0.700" in recovery[0] and "0.900" in recovery[0] and "0.600" in recovery[0]
    assert any(l.startswith("|DiffMean(supervised)|0.950") for l in flat.splitlines())
    assert "|Semi-NMF|circle|0.710±0.000|0.520±0.000|0.800±0.000|" in flat  # grounding (paper Fig. 3)
    # The text-known / image-only splits go in their own table, not as columns of the recovery table.
    assert "|Semi-NMF|colour|0.910±0.000|0.810±0.000|" in flat and "colour/image_only" not in md and "|image_only" not in flat
    cells = list(csv.DictReader((sweep / "tables.csv").open()))
    cs = {(c["table"], c["row"], c["column"]): c for c in cells}
    assert float(cs[("table1", "circle / CS", "Semi-NMF")]["mean"]) == pytest.approx(0.62)
    assert float(cs[("table1", "circle / CS", "Semi-NMF")]["std"]) == pytest.approx(0.01)
    assert cs[("table1", "circle / BS", "Simple")]["mean"] == ""
    runs = list(csv.DictReader((sweep / "runs.csv").open()))
    assert len(runs) == 3 and runs[0]["job"].startswith("0_")
    assert (sweep / "grounding_scatter.png").stat().st_size > 0
    assert not (sweep / "layer_ablation.png").exists()  # one layer only: no curve
    assert "tables.md" in capsys.readouterr().out


def test_multi_layer_job_gives_one_row_per_layer_and_a_curve(tmp_path: Path):
    root = tmp_path / "layer_ablation"
    metrics = {"n_train": 100.0}
    for layer, cs in [("0", 0.45), ("1", 0.5), ("2", 0.62), ("norm", 0.7)]:
        metrics |= {f"layer_{layer}/grounding_cs_mean": cs, f"layer_{layer}/grounding_cs_random_mean": 0.48,
                    f"layer_{layer}/lens_top1_t": 0.1, f"layer_{layer}/recovery_matched": 0.55}
    job = make_job(root, "0_layers=[0,1,2,norm]", method="semi_nmf", display="Semi-NMF", token="circle",
                   metrics=metrics, layers=(0, 1, 2, "norm"), concepts_layer=None)
    for name, index in (("0", 0), ("1", 1), ("2", 2), ("norm", 3)):
        (job / f"layer_{name}").mkdir()
        (job / f"layer_{name}" / "concepts.json").write_text(json.dumps(
            {"method": "semi_nmf", "layer": index, "extra": {"layer_name": name, "method_display": "Semi-NMF"}}))
    rows = collect(root)
    assert [(r["layer"], r["layer_name"]) for r in rows] == [(0, "0"), (1, "1"), (2, "2"), (3, "norm")]
    assert all(r["n_train"] == 100.0 for r in rows)
    assert main([str(root)]) == 0
    md = (root / "tables.md").read_text().replace(" ", "")
    assert "|Semi-NMF|circle|2|0.620|0.480|" in md and "|Semi-NMF|circle|norm|0.700|" in md
    assert "Table 1" not in md  # a layer sweep's jobs hold many layers: no Table 1 of dashes
    assert (root / "layer_ablation.png").stat().st_size > 0


def test_k_sweep_gives_a_k_table_and_curve(tmp_path: Path):
    root = tmp_path / "k_ablation"
    for i, k in enumerate((5, 10, 20)):
        make_job(root, f"{i}_method.n_concepts={k}", method="semi_nmf", display="Semi-NMF", token="circle",
                 n_concepts=k, metrics={"recon_rel_error_train": 1 / k, "recon_rel_error_test": 1.1 / k,
                                        "sparsity_l0_test": k / 2, "overlap": 0.1 * i})
    assert main([str(root), "--no-figures"]) == 0
    assert "|Semi-NMF|circle|10|0.100|" in (root / "tables.md").read_text().replace(" ", "")
    assert not (root / "recon_vs_k.png").exists()
    assert main([str(root)]) == 0 and (root / "recon_vs_k.png").exists()
    # The paper tables show K = 20 when a cell has several runs.
    assert "|circle|0.200|" in (root / "tables.md").read_text().replace(" ", "")


def test_unfinished_jobs_are_listed_and_empty_sweeps_fail(tmp_path: Path, capsys):
    root = tmp_path / "s"
    make_job(root, "0_a", method="pca", token="star", metrics={"overlap": 0.0})
    (root / "1_b" / ".hydra").mkdir(parents=True)
    (root / "1_b" / ".hydra" / "config.yaml").write_text("token: star\n")
    (root / "2_c" / ".hydra").mkdir(parents=True)
    (root / "2_c" / ".hydra" / "config.yaml").write_text("token: star\n")
    (root / "2_c" / "cli.log").write_text("[2026-12-01 10:00:00,000][coxlmm][ERROR] - no sample selected for 'star'\n")
    assert main([str(root), "--no-figures"]) == 0
    assert "Jobs without metrics.json (failed or unfinished): 1_b, 2_c" in (root / "tables.md").read_text()
    index = (root / "index.html").read_text()
    assert "1_b" in index and "unfinished" in index and "no sample selected for &#x27;star&#x27;" in index
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty)]) == 2
    assert main([str(tmp_path / "nope")]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_pure_helpers():
    assert fmt(0.5) == "0.500" and fmt(None, 0.1) == DASH and fmt(1.0, 0.25) == "1.000 ± 0.250"
    rows = job_rows("j", {"token": "dog", "layers": [-1], "method": {"_target_": "coxlmm.concepts.pca.PCA"}}, {},
                    {"overlap": float("nan")})
    assert rows[0]["method"] == "pca" and rows[0]["layer"] == -1
    import pandas as pd

    runs = pd.DataFrame([{"token": "t", "method": "m", "layer": 3, "n_concepts": 20, "seed": 1},
                         {"token": "t", "method": "m", "layer": 5, "n_concepts": 10, "seed": 2},
                         {"token": "t", "method": "m", "layer": 5, "n_concepts": 20, "seed": 0}])
    assert representative(runs)[["layer", "n_concepts", "seed"]].values.tolist() == [[5, 20, 0]]


def test_causal_table_has_the_methods_and_the_control_rows(tmp_path: Path):
    root = tmp_path / "causal"
    base = {"prediction_recovered": 0.8, "prediction_recovered_ci_lo": 0.7, "prediction_recovered_ci_hi": 0.9,
            "dlogp_t_recon": -0.02, "dlogp_t_recon_ci_lo": -0.03, "dlogp_t_recon_ci_hi": -0.01,
            "kl_recon": 0.1, "kl_mean": 2.0, "top1_ablation_dlogp_t": -1.5, "top1_ablation_dlogp_t_random": -0.1,
            "steer_success/alpha_4": 0.6, "steer_success_random/alpha_4": 0.05, "steer_success_diffmean/alpha_4": 0.7,
            "steer_fluency/alpha_4": -1.2, "steer_fluency_unsteered": -0.3}
    make_job(root, "0_method=semi_nmf", method="semi_nmf", display="Semi-NMF", token="circle", metrics=base)
    make_job(root, "1_method=pca", method="pca", display="PCA", token="circle",
             metrics={k: v for k, v in base.items() if not k.startswith("prediction_recovered")})  # undefined
    assert main([str(root), "--no-figures"]) == 0
    md = (root / "tables.md").read_text().replace(" ", "")
    assert "|Semi-NMF|0.800[0.7,0.9]|-0.020[-0.03,-0.01]|0.100|2.000|-1.500|-0.100|0.600|" in md
    assert "|PCA|–|-0.020" in md  # an undefined ratio is a dash, the rest of the row stays
    assert "|Randomdirection(samenorm)|" in md and "|DiffMean(supervised)|" in md
