"""Sweeps: the experiment presets compose as documented, and a two-job sweep runs end to end
through the real CLI under the submitit launcher, then `coxlmm-tables` aggregates it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from coxlmm.paths import CONF_DIR, REPO_ROOT
from coxlmm.report.tables import collect, main as tables_main

COXLMM = str(Path(sys.executable).parent / "coxlmm")
CONF = Path(CONF_DIR)
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def compose(experiment: str, *overrides: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from coxlmm.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose("config", overrides=[f"experiment={experiment}", *overrides], return_hydra_config=True)


def sweep_values(key: str, values: str) -> list[str]:
    """The values a sweep parameter takes, as Hydra's sweeper splits them ("a,b" -> a, b)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    (override,) = OverridesParser.create().parse_overrides([f"{key}={values}"])
    return list(override.sweep_string_iterator())


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_preset_composes_on_the_debug_preset_and_sweeps_valid_values(experiment):
    """Each file of conf/experiment/ with debug=tiny, and each value of each of its sweep parameters composed
    as that job is: a group's value is one of its files, the method and metrics build, the layers exist."""
    from coxlmm.config import build
    from coxlmm.models.spec import ModelSpec
    from coxlmm.pipeline import dictionary_factory

    cfg = compose(experiment, "debug=tiny")
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN" and cfg.hydra.sweep.dir == f"outputs/multirun/{experiment}"
    assert cfg.data.n_train == 64 and cfg.extraction.max_new_tokens == 24  # debug=tiny applies with the preset
    params = cfg.hydra.sweeper.params
    assert params, f"experiment={experiment} sweeps nothing"
    spec = ModelSpec(cfg.model)  # the store key and depth of the preset's model, no weights loaded
    for key, values in params.items():
        values = sweep_values(key, str(values))
        assert values, (key, params[key])
        if (CONF / key).is_dir():  # a config group: its values are its files
            assert set(values) <= {p.stem for p in (CONF / key).glob("*.yaml")}, (key, values)
        for value in values:
            job = compose(experiment, "debug=tiny", f"{key}={value}")
            dictionary_factory(job)(job.seed)
            assert all(build(node) for node in job.metrics.values())
            assert [spec.resolve_layer(layer) for layer in job.layers]  # in range of the model's blocks


def test_every_preset_has_an_end_to_end_run():
    assert set(PRESET_OVERRIDES) == set(EXPERIMENTS)  # the slow test below runs each of them


@pytest.mark.parametrize("experiment, sweep_dir, params", [
    ("paper_table1", "outputs/multirun/paper_table1", {"method", "token", "seed"}),
    ("layer_ablation", "outputs/multirun/layer_ablation", {"layers"}),
    ("k_ablation", "outputs/multirun/k_ablation", {"method", "method.n_concepts"}),
])
def test_experiments_compose(experiment: str, sweep_dir: str, params: set[str]):
    cfg = compose(experiment)
    assert cfg.hydra.sweep.dir == sweep_dir
    assert set(cfg.hydra.sweeper.params) == params
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"


def test_paper_sweep_has_three_seeds_and_puts_tokens_innermost():
    params = compose("paper_table1").hydra.sweeper.params
    assert len(str(params.seed).split(",")) >= 3
    assert list(params)[-1] == "token"  # the first jobs extract different tokens in parallel


def test_paper_metrics_include_core_and_recovery():
    cfg = compose("paper_table1")
    assert {"test_samples", "grounding_quality", "recovery", "lens"} <= set(cfg.metrics)
    assert len(cfg.metrics) > 3  # core's metrics came in through the defaults list


# --- end to end ------------------------------------------------------------------------------------
# A model small enough for a test; the tiny-model fixture will replace DePALM-mini here.
MODEL_OVERRIDES = ["model=depalm_mini", "data.n_train=48", "data.n_test=24", "extraction.batch_size=16",
                   "method.n_concepts=3"]


def run_sweep(cmd: list[str], sweep: Path, timeout: int) -> None:
    """Run a `coxlmm -m` command; on failure show its stderr and the submitit jobs' logs."""
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    logs = "\n".join(p.read_text()[-3000:] for p in sweep.glob(".submitit/*/*_log.err"))
    assert proc.returncode == 0, proc.stderr[-3000:] + logs


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_job_sweep_under_submitit_local_then_tables(tmp_path: Path):
    sweep = tmp_path / "sweep"
    # Two tokens, not two methods: the jobs run at once, and two jobs of one token would both
    # extract into the same (empty) feature-store entry.
    cmd = [COXLMM, "-m", "hydra/launcher=local", *MODEL_OVERRIDES, "token=circle,square", "method=simple",
           "metrics=paper", "scorer=none", "logger=none", "figures=false",
           f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.sweep.dir={sweep}"]
    run_sweep(cmd, sweep, timeout=840)

    rows = collect(sweep)
    assert sorted(r["token"] for r in rows) == ["circle", "square"]
    assert all(r["method"] == "simple" and r["n_concepts"] == 3 for r in rows)
    assert tables_main([str(sweep), "--no-figures"]) == 0
    md = (sweep / "tables.md").read_text().replace(" ", "")
    assert "|circle|CS|" in md and "|square|CS|" in md  # Table 1 rows (CS needs a scorer: "–")
    assert "|simple|" in md.lower() and "|Randomdict.(centred)|" in md  # recovery table
    assert any("recovery_matched" in r for r in rows)
    assert (sweep / "tables.csv").read_text().startswith("table,row,column,mean,std")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_job_sweep_on_tiny_llava_under_submitit_local(tmp_path: Path, tiny_llava_path):
    """The same path, fast: the tiny LLaVA, folder data, two tokens it generates, default suite."""
    from tests.extraction.conftest import make_folder_dataset

    data = make_folder_dataset(tmp_path / "data", n_train=10, n_test=4, words=("dog", "sofa"))
    sweep = tmp_path / "sweep"
    cmd = [COXLMM, "-m", "hydra/launcher=local", "model=hf", f"model.name_or_path={tiny_llava_path}", "data=folder",
           f"data.root={data}", "extraction.max_new_tokens=20", "method.n_concepts=3", "token=dog,sofa",
           "method=simple", "scorer=none", "logger=none", "figures=false",
           f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.sweep.dir={sweep}"]
    run_sweep(cmd, sweep, timeout=540)
    rows = collect(sweep)
    assert sorted(r["token"] for r in rows) == ["dog", "sofa"]
    assert tables_main([str(sweep), "--no-figures"]) == 0
    md = (sweep / "tables.md").read_text().replace(" ", "")
    assert "|dog|" in md and "|sofa|" in md and "Overlap" in md


# --- every preset end to end on the debug preset -----------------------------------------------------
PRESET_OVERRIDES = {
    # fewer jobs than the real sweeps, every code path of each
    "paper_table1": ["hydra.sweeper.params.token=circle", "hydra.sweeper.params.seed='0,1'"],
    "layer_ablation": ["hydra.sweeper.params.layers='[0,29],[norm]'"],
    "k_ablation": ["data.n_train=300"],  # K up to 50: ~70 training samples of circle
    "paper_shape_first": ["hydra.sweeper.params.token=circle", "hydra.sweeper.params.method=semi_nmf"],
    "causal": ["hydra.sweeper.params.method='semi_nmf,pca'", "metrics.causal.n_samples=4", "metrics.causal.steps=[0.2]"],
    "paper_heldout": ["hydra.sweeper.params.method=semi_nmf", "hydra.sweeper.params.seed=0", "method.n_concepts=5",
                      "data.n_test=200"],
}


@pytest.fixture(scope="module")
def preset_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("preset_cache")


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("experiment", sorted(PRESET_OVERRIDES))
def test_every_experiment_preset_runs_end_to_end_on_the_debug_preset(experiment, preset_cache, tmp_path):
    sweep = tmp_path / experiment
    cmd = [COXLMM, "-m", f"experiment={experiment}", "debug=tiny", "logger=csv", "hydra.launcher.n_jobs=1",
           *PRESET_OVERRIDES[experiment], f"paths.cache_dir={preset_cache}", f"hydra.sweep.dir={sweep}"]
    run_sweep(cmd, sweep, timeout=1700)
    rows = collect(sweep)
    assert rows and all(r.get("n_train", 0) > 0 for r in rows)
    assert tables_main([str(sweep)]) == 0 and (sweep / "index.html").is_file()
    if experiment == "paper_table1":
        assert {r["method"] for r in rows} >= {"semi_nmf", "pca", "kmeans", "simple"} and {r["seed"] for r in rows} == {0, 1}
        assert any("token_only_cs_top1_mean" in r for r in rows)
    if experiment == "causal":
        assert all("kl_recon" in r and "dlogp_t_recon" in r for r in rows) and "Causal" in (sweep / "tables.md").read_text()
    if experiment == "layer_ablation":
        assert {r["layer_name"] for r in rows} == {"0", "29", "norm"} and all("lens_top1_t" in r for r in rows)
