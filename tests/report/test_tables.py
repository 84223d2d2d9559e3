"""coxlmm-tables on synthetic sweep dirs: job dirs with `.hydra/config.yaml`, `metrics.json` and what the
metrics described (`metrics_schema.json`, `samples.safetensors`), rendered with no knowledge of the keys."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file

from coxlmm.errors import CoxlmmError
from coxlmm.metrics.schema import Schema, Score, TableSpec
from coxlmm.metrics.test_eval import table1_schema
from coxlmm.report.tables import (DASH, collect, fmt, group_variants, job_rows, main, read_sweep, representative,
                                  tables, to_markdown, write_report)

TABLE1 = table1_schema(("rnd_words", "token_only", "rnd_concept", "noise_imgs"), True, ["cs", "bs"], 3, "")
L0 = Schema(scores=[Score("sparsity_l0_test", "L0 (test)", ("table1",))])
OVERLAP = Schema(scores=[Score("overlap", "Overlap", ("overlap",), better=-1, curve=True)],
                 tables=[TableSpec("overlap", "Overlap", pivot=True, token_mean=True)])
RECON = Schema(scores=[Score("recon_rel_error_test", "Recon. err. test", ("dictionary",), curve=True)],
               tables=[TableSpec("dictionary", "Dictionaries")])
SCHEMA = TABLE1.merge(L0, OVERLAP, RECON)


def make_job(sweep: Path, name: str, *, method: str, token: str, metrics: dict, layers=(-1,), n_concepts=20,
             seed: int = 0, display: str | None = None, concepts_layer: int | None = 29, schema: Schema = SCHEMA,
             samples: dict | None = None, method_cfg: dict | None = None) -> Path:
    """A job dir as Hydra + the pipeline write it."""
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    cfg = {"token": token, "layers": list(layers), "seed": seed,
           "method": {"_target_": f"coxlmm.concepts.{method}.X", "name": method, "n_concepts": n_concepts,
                      **(method_cfg or {})},
           "paths": {"output_dir": "${hydra:runtime.output_dir}"}}  # unresolvable outside a run: must not matter
    OmegaConf.save(OmegaConf.create(cfg), job / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": {"runtime": {"choices": {"method": method, "model": "depalm_mini"}}}}),
                   job / ".hydra" / "hydra.yaml")
    (job / "metrics.json").write_text(json.dumps(metrics))
    (job / "metrics_schema.json").write_text(json.dumps(schema.to_json()))
    if concepts_layer is not None:
        extra = {"method_display": display or method, "layer_name": str(concepts_layer)}
        (job / "concepts.json").write_text(json.dumps({"method": method, "layer": concepts_layer, "token": token,
                                                       "concepts": [], "extra": extra}))
    if samples:
        save_file({k: torch.tensor(np.asarray(v, dtype=np.float64)) for k, (_, v) in samples.items()},
                  str(job / "samples.safetensors"), metadata={f"ids:{k}": json.dumps(ids) for k, (ids, _) in samples.items()})
    return job


def per_sample(top1, null, ids=None) -> dict:
    ids = ids or [str(i) for i in range(len(top1))]
    return {"top1_cs": (ids, top1), "rnd_words_cs": (ids, null), "token_only_cs": (ids, top1)}


SEMI = {"cs_top1_mean": 0.61, "cs_top1_std": 0.09, "bs_top1_mean": 0.405, "bs_top1_std": 0.07,
        "rnd_words_cs_top1_mean": 0.519, "rnd_words_cs_top1_std": 0.05, "token_only_cs_top1_mean": 1.3,
        "noise_imgs_cs_top1_mean": 0.425, "noise_imgs_cs_top1_std": 0.06,
        "gt_captions_cs_mean": 0.783, "gt_captions_cs_std": 0.06, "sparsity_l0_test": 6.5,
        "overlap": 0.086, "recon_rel_error_test": 0.3}
SIMPLE = {"cs_top1_mean": 0.546, "cs_top1_std": 0.08, "overlap": 0.371}


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    root = tmp_path / "paper_table1"
    rng = np.random.default_rng(0)
    null = rng.normal(0.5, 0.2, (60, 4))
    for seed in (0, 1):
        make_job(root, f"{2 * seed}_method=semi_nmf,seed={seed}", method="semi_nmf", display="Semi-NMF", token="circle",
                 seed=seed, metrics={**SEMI, "cs_top1_mean": 0.61 + 0.02 * seed},
                 samples=per_sample(null.mean(1) + 0.3, null))
    make_job(root, "1_method=simple,seed=0", method="simple", display="Simple", token="circle", metrics=SIMPLE)
    (root / "multirun.yaml").write_text("hydra: {}\n")  # Hydra's sweep-level file: not a job
    return root


def test_collect_reads_identity_and_metrics(sweep: Path):
    rows = collect(sweep)
    assert [(r["method"], r["method_display"], r["token"], r["layer"], r["n_concepts"], r["seed"]) for r in rows] == [
        ("semi_nmf", "Semi-NMF", "circle", 29, 20, 0), ("simple", "Simple", "circle", 29, 20, 0),
        ("semi_nmf", "Semi-NMF", "circle", 29, 20, 1)]
    assert rows[0]["model"] == "depalm_mini" and rows[0]["overlap"] == pytest.approx(0.086)


def test_table1_is_rendered_from_the_description_with_std_across_seeds(sweep: Path):
    md = to_markdown(tables(read_sweep(sweep))[0])
    lines = [l.replace(" ", "") for l in md.splitlines()]
    header = "|token|metric|Rnd-Words|Token-only|Rnd-Concept|Noise-Imgs|Semi-NMF|Simple|GT-captions|"
    assert header in lines
    # Semi-NMF: two seeds (0.61, 0.63) -> mean 0.620, std across seeds 0.010; Simple: one seed, its spread key.
    assert f"|circle|CS|0.519±0.000|1.300±0.000|{DASH}|0.425±0.000|0.620±0.010|0.546±0.080|0.783±0.000|" in lines
    assert f"|circle|L0(test)|{DASH}|{DASH}|{DASH}|{DASH}|6.500±0.000|{DASH}|{DASH}|" in lines
    assert "Nulls from the Semi-NMF jobs" in md


def test_main_writes_markdown_csv_and_paired_differences_over_seeds_samples_and_draws(sweep: Path, capsys):
    assert main([str(sweep)]) == 0
    md = (sweep / "tables.md").read_text()
    flat = md.replace(" ", "")
    # paired: top1 − Rnd-Words = +0.3 per sample on average over its draws: the CI excludes 0; top1 − Token-only = 0.
    lines = flat.splitlines()
    row = next(l for l in lines if l.startswith("|circle|CS,testsample|Semi-NMF|")).split("|")
    header = next(l for l in lines if l.startswith("|token|metric|method|")).split("|")
    cell = dict(zip(header, row))
    assert cell["Token-only"] == "0.000[+0.000,+0.000]"
    assert cell["Rnd-Words"].startswith("0.300[") and cell["Rnd-Words"].endswith("*")
    assert "|circle|Overlap|0.086±0.000|0.371|" in flat  # overlap: tokens x (Semi-NMF, Simple)
    cells = list(csv.DictReader((sweep / "tables.csv").open()))
    cs = {(c["table"], c["row"], c["column"]): c for c in cells}
    assert float(cs[("table1", "circle / CS", "Semi-NMF")]["mean"]) == pytest.approx(0.62)
    assert float(cs[("table1", "circle / CS", "Semi-NMF")]["std"]) == pytest.approx(0.01)
    assert cs[("table1", "circle / BS", "Simple")]["mean"] == ""
    assert float(cs[("paired", "circle / CS, test sample / Semi-NMF", "Rnd-Words")]["lo"]) > 0
    runs = list(csv.DictReader((sweep / "runs.csv").open()))
    assert len(runs) == 3 and runs[0]["job"].startswith("0_")
    assert not (sweep / "by_layer.png").exists()  # one layer only: no curve
    assert "tables.md" in capsys.readouterr().out


def test_jobs_differing_in_a_method_setting_are_never_averaged(tmp_path: Path):
    root = tmp_path / "alpha"
    for i, alpha in enumerate((0.5, 2.0)):
        make_job(root, f"{i}_method.alpha={alpha}", method="semi_nmf", display="Semi-NMF", token="circle",
                 metrics={**SEMI, "cs_top1_mean": alpha}, method_cfg={"alpha": alpha})
    make_job(root, "2_method=pca", method="pca", display="PCA", token="circle", metrics=SIMPLE,
             method_cfg={"whiten": False})
    sweep = read_sweep(root)
    assert sorted(sweep.runs["label"]) == ["PCA", "Semi-NMF [method.alpha=0.5]", "Semi-NMF [method.alpha=2.0]"]
    flat = to_markdown(tables(sweep)[0]).replace(" ", "")
    assert "|Semi-NMF[method.alpha=0.5]|Semi-NMF[method.alpha=2.0]|" in flat
    assert "|0.500±0.090|2.000±0.090|" in flat  # each its own (one seed: its spread), never their mean 1.25
    assert "1.250" not in flat


def test_group_variants_name_only_what_sets_a_group_apart():
    configs = {"a": {"seed": 0, "token": "dog", "method": {"name": "pca", "n_concepts": 20}, "data": {"n": 4}},
               "b": {"seed": 1, "token": "cat", "method": {"name": "pca", "n_concepts": 10}, "data": {"n": 4}},
               "c": {"seed": 0, "token": "dog", "method": {"name": "nmf", "beta": 1}, "data": {"n": 8}, "threads": 1}}
    v = group_variants(configs)
    assert v == {"a": "data.n=4", "b": "data.n=4", "c": "data.n=8"}


def test_pairing_jobs_with_different_sample_ids_fails_with_a_message(tmp_path: Path):
    root = tmp_path / "ids"
    for seed, ids in ((0, ["a", "b", "c"]), (1, ["a", "b", "d"])):
        make_job(root, f"{seed}_seed={seed}", method="semi_nmf", display="Semi-NMF", token="circle", seed=seed,
                 metrics=SEMI, samples=per_sample([0.6, 0.7, 0.8], [[0.5], [0.5], [0.5]], ids))
    with pytest.raises(CoxlmmError, match=r"jobs '0_seed=0' and '1_seed=1' scored different test samples.*row 2"):
        write_report(root)
    assert not (root / "tables.md").exists()  # nothing written half-way
    assert main([str(root)]) == 2


def test_comparisons_are_paired_and_holm_corrected_and_a_missing_method_is_refused(tmp_path: Path):
    root = tmp_path / "cmp"
    rng = np.random.default_rng(1)
    base = rng.normal(0.5, 0.1, 80)
    for i, (method, shift) in enumerate((("semi_nmf", 0.2), ("pca", 0.0), ("kmeans", 0.19))):
        for seed in (0, 1):
            job = make_job(root, f"{2 * i + seed}_m={method},s={seed}", method=method, token="circle", seed=seed,
                           metrics=SEMI, samples=per_sample(base + shift + rng.normal(0, 0.01, 80),
                                                            np.full((80, 1), 0.5)))
            cfg = OmegaConf.load(job / ".hydra" / "config.yaml")
            cfg.compare = {"reference": "semi_nmf", "against": [], "samples": ["top1_cs"]}
            OmegaConf.save(cfg, job / ".hydra" / "config.yaml")
    all_tables = {t.name: t for t in tables(read_sweep(root))}
    cmp = all_tables["comparisons"].values
    delta = cmp[cmp["column"] == "Δ"].set_index("row")
    assert delta.loc["circle / CS, test sample / semi_nmf − pca", "mean"] == pytest.approx(0.2, abs=0.01)
    assert delta.loc["circle / CS, test sample / semi_nmf − pca", "p_holm"] < 0.05
    assert delta.loc["circle / CS, test sample / semi_nmf − kmeans", "lo"] < 0.05  # 0.01 apart: small, paired
    p = delta["p"].to_numpy()
    assert (delta["p_holm"].to_numpy() >= p).all()
    for job in root.iterdir():
        cfg = OmegaConf.load(job / ".hydra" / "config.yaml")
        cfg.compare.against = ["topk_sae"]
        OmegaConf.save(cfg, job / ".hydra" / "config.yaml")
    with pytest.raises(CoxlmmError, match=r"'topk_sae' not in this sweep \(methods: semi_nmf, pca, kmeans\)"):
        tables(read_sweep(root))


def test_multi_layer_job_gives_one_row_per_layer_and_a_curve(tmp_path: Path):
    root = tmp_path / "layer_ablation"
    metrics = {"n_train": 100.0}
    for layer, v in [("0", 0.45), ("1", 0.5), ("2", 0.62), ("norm", 0.7)]:
        metrics |= {f"layer_{layer}/overlap": v, f"layer_{layer}/recon_rel_error_test": 1 - v}
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
    assert "|Semi-NMF|circle|2|0.620|0.380|" in md and "|Semi-NMF|circle|norm|0.700|0.300|" in md
    assert "Table1" not in md  # a layer sweep's jobs hold many layers: no Table 1 of dashes
    assert (root / "by_layer.png").stat().st_size > 0


def test_k_sweep_gives_a_k_table_and_curve(tmp_path: Path):
    root = tmp_path / "k_ablation"
    for i, k in enumerate((5, 10, 20)):
        make_job(root, f"{i}_method.n_concepts={k}", method="semi_nmf", display="Semi-NMF", token="circle",
                 n_concepts=k, metrics={"recon_rel_error_test": 1.1 / k, "overlap": 0.1 * i})
    assert main([str(root), "--no-figures"]) == 0
    assert "|Semi-NMF|circle|10|0.100|0.110|" in (root / "tables.md").read_text().replace(" ", "")
    assert not (root / "by_k.png").exists()
    assert main([str(root)]) == 0 and (root / "by_k.png").exists()
    # The paper tables show K = 20 when a cell has several runs.
    assert "|circle|Overlap|0.200|" in (root / "tables.md").read_text().replace(" ", "")


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
    assert "1_b" in index and "unfinished" in index and "no sample selected for &#39;star&#39;" in index
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

    runs = pd.DataFrame([{"token": "t", "method": "m", "variant": "", "layer": 3, "n_concepts": 20, "seed": 1},
                         {"token": "t", "method": "m", "variant": "", "layer": 5, "n_concepts": 10, "seed": 2},
                         {"token": "t", "method": "m", "variant": "", "layer": 5, "n_concepts": 20, "seed": 0}])
    assert representative(runs)[["layer", "n_concepts", "seed"]].values.tolist() == [[5, 20, 0]]


def test_a_one_seed_score_with_its_own_interval_writes_it_to_the_csv(tmp_path: Path):
    """The causal tables' CIs (one job per method) reach tables.csv, where the README's causal block reads them."""
    root = tmp_path / "causal"
    schema = Schema(scores=[Score("ce_rec", "CE recovered", ("faith",), ci=("ce_rec_lo", "ce_rec_hi")),
                            Score("ce_rec_lo", "lo"), Score("ce_rec_hi", "hi")],
                    tables=[TableSpec("faith", "Faithfulness")])
    make_job(root, "0_method=pca", method="pca", display="PCA", token="circle", schema=schema,
             metrics={"ce_rec": 0.8, "ce_rec_lo": 0.7, "ce_rec_hi": 0.9})
    assert main([str(root)]) == 0
    with open(root / "tables.csv") as f:
        (cell,) = [r for r in csv.DictReader(f) if r["table"] == "faith"]
    assert (float(cell["mean"]), float(cell["lo"]), float(cell["hi"])) == (0.8, 0.7, 0.9)
    assert "0.800 [+0.700, +0.900]" in (root / "tables.md").read_text()
