"""The embedded default end to end on the tiny debug preset, and the package installed from a wheel.

- `coxlmm debug=tiny metrics=paper scorer=embedded figures=false`: DePALM-mini on a few dozen world
  images runs every model stage and every paper metric; with figures off, the JSON artefacts
  (recovery table, test scores, grounding points, scorer fingerprint) are still written.
- A wheel built from the repository, installed into a fresh environment (no editable path), composes
  the default config and runs the debug preset from a temporary directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def default_run(cache, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run") / "debug"
    out = subprocess.run([sys.executable, "-m", "coxlmm", "debug=tiny", "metrics=paper", "scorer=embedded",
                          "figures=false", "logger=default", f"paths.cache_dir={cache}", f"hydra.run.dir={run}"],
                         cwd=REPO, env=ENV, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]
    return run


@pytest.mark.timeout(900)
def test_the_debug_preset_runs_every_paper_metric_and_keeps_the_json_artefacts_without_figures(default_run):
    metrics = json.loads((default_run / "metrics.json").read_text())
    for key in ("cs_top1_mean", "token_only_cs_top1_mean", "rnd_concept_bs_top1_mean", "noise_imgs_cs_top1_mean",
                "cs_top1_vs_noise_imgs_ci_lo", "recovery_matched", "recovery_matched_prefix_only",
                "recovery_matched_random", "lens_top1_t", "sparsity_l0_test", "stability"):
        assert key in metrics, key
    for name in ("recovery_table", "grounding_points", "scorer_fingerprint", "noise_imgs_words", "stability_matches",
                 "metrics_schema"):
        assert (default_run / f"{name}.json").is_file(), name
    from coxlmm.report.tables import read_samples

    samples = read_samples(default_run / "samples.safetensors")
    assert samples["top1_cs"][1].ndim == 1 and samples["rnd_words_cs"][1].shape[1] == 20  # R = 20 draws per sample
    assert samples["noise_imgs_cs"][1].shape[1] == 3  # one per noise seed
    assert not list(default_run.glob("*.png"))
    assert (default_run / "report.html").is_file() and (default_run / "dictionary.safetensors").is_file()
    from tests.report.wandb_reader import offline_run

    assert offline_run(default_run)["exit_code"] == 0


def _site_packages(python: Path) -> Path:
    out = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_wheel_installed_elsewhere_composes_and_runs_the_debug_preset(default_run, cache, tmp_path):
    import shutil

    # Built from a copy: setuptools writes build/ and *.egg-info into the source tree.
    src = tmp_path / "src"
    shutil.copytree(REPO, src, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "outputs", "build", "*.egg-info", "__pycache__", "wandb", ".pytest_cache"))
    dist = tmp_path / "dist"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            str(src), "-w", str(dist)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = dist.glob("coxlmm-*.whl")
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    assert "coxlmm/conf/config.yaml" in names and "coxlmm/conf/model/depalm_mini.yaml" in names
    assert "coxlmm/weights/depalm_mini_connector.safetensors" in names

    # A fresh environment whose only coxlmm is the wheel; its dependencies come from this venv's
    # site-packages through a .pth (whose own .pth files, the editable install's finder among them,
    # are not read from there).
    env_dir = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True, timeout=120)
    python = env_dir / "bin" / "python"
    (_site_packages(python) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q",
                              str(wheel)], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]

    work = tmp_path / "elsewhere"
    work.mkdir()
    alone = {k: v for k, v in ENV.items() if k != "PYTHONPATH"}  # a checkout on PYTHONPATH would shadow the wheel
    where = subprocess.run([str(python), "-c", "import coxlmm, coxlmm.conf; print(coxlmm.__file__)"], cwd=work,
                           capture_output=True, text=True, env=alone)
    assert str(env_dir) in where.stdout, where.stdout + where.stderr
    out = subprocess.run([str(env_dir / "bin" / "coxlmm"), "debug=tiny", "logger=csv", f"paths.cache_dir={cache}"],
                         cwd=work, env=alone, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]
    (metrics,) = (work / "outputs" / "runs").glob("*/metrics.json")  # written under the current directory
    assert json.loads(metrics.read_text())["n_train"] > 0
