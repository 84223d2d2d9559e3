"""Loggers: conf/logger resolves in single and multirun Hydra jobs; a job's W&B offline run (JobLog)
writes its files under the run dir, holds the config, per-layer metrics on a layer axis, tables and
the dictionary, and ends marked failed when the job fails; a failing W&B only warns. The loggers run in a
process of their own, off the job's critical path, and the job's process never imports W&B or Lightning."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from coxlmm.errors import CoxlmmError
from coxlmm.grounding.concept_set import ConceptSet
from coxlmm.layer import Layer
from coxlmm.report.log import JobLog, build_loggers, concept_table, resolve_logger_cfg
from tests.report.wandb_reader import offline_run, read_offline_run

REPO = Path(__file__).resolve().parents[2]

APP = """
import json, sys
from pathlib import Path
import hydra
from hydra.core.hydra_config import HydraConfig
from coxlmm.report.log import resolve_logger_cfg

@hydra.main(version_base="1.3", config_path=".", config_name="app_cfg")
def app(cfg):
    out = Path(HydraConfig.get().runtime.output_dir)
    (out / "loggers.json").write_text(json.dumps({"output_dir": str(out), "logger": resolve_logger_cfg(cfg.logger)}))

app()
"""

APP_CFG = """
defaults:
  - logger: default
  - _self_
seed: 0
hydra:
  searchpath: [file://{conf}]
  run: {{dir: {tmp}/runs/single}}
  sweep: {{dir: {tmp}/multirun/sweep1, subdir: "${{hydra.job.num}}_${{hydra.job.override_dirname}}"}}
  job: {{chdir: false}}
"""


def hydra_app(tmp_path: Path, *args: str) -> None:
    (tmp_path / "app.py").write_text(APP)
    (tmp_path / "app_cfg.yaml").write_text(APP_CFG.format(conf=REPO / "conf", tmp=tmp_path))
    subprocess.run([sys.executable, str(tmp_path / "app.py"), *args], cwd=tmp_path, check=True,
                   capture_output=True, timeout=600)  # a guard, not a timing: a busy machine is slow


def test_logger_config_resolves_in_single_and_multi_runs(tmp_path):
    hydra_app(tmp_path, "seed=3")
    single = json.loads((tmp_path / "runs/single/loggers.json").read_text())
    wb, csv = single["logger"]["wandb"], single["logger"]["csv"]
    assert wb["_target_"] == "coxlmm.report.loggers.WandbLogger" and wb["offline"] is True
    assert wb["save_dir"] == csv["save_dir"] == single["output_dir"]
    assert wb["name"] == "seed=3" and wb["group"] is None and wb["project"] == "coxlmm"

    hydra_app(tmp_path, "-m", "seed=1,2")
    jobs = [json.loads(p.read_text()) for p in sorted((tmp_path / "multirun/sweep1").glob("*/loggers.json"))]
    assert len(jobs) == 2
    assert [j["logger"]["wandb"]["name"] for j in jobs] == ["seed=1", "seed=2"]  # one W&B run per job
    assert {j["logger"]["wandb"]["group"] for j in jobs} == {"multirun/sweep1"}  # one group per sweep
    assert all(j["logger"]["wandb"]["save_dir"] == j["output_dir"] for j in jobs)

    hydra_app(tmp_path, "logger=none")
    assert json.loads((tmp_path / "runs/single/loggers.json").read_text())["logger"] == {}


def test_bad_logger_config_is_a_clear_error():
    assert build_loggers({}) == [] and build_loggers(None) == []
    assert resolve_logger_cfg({"wandb": None}) == {}
    with pytest.raises(CoxlmmError, match="_target_"):
        build_loggers({"mine": {"save_dir": "x"}})


@pytest.fixture
def offline_wandb(monkeypatch, tmp_path):
    """W&B never reaches a server and writes nothing outside tmp_path."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home" / var))
    monkeypatch.delenv("WANDB_DATA_DIR", raising=False)


def loggers_cfg(run_dir: Path) -> dict:
    return {
        "wandb": {"_target_": "coxlmm.report.loggers.WandbLogger", "project": "coxlmm", "offline": True,
                  "save_dir": str(run_dir), "name": "", "group": None},
        "csv": {"_target_": "coxlmm.report.loggers.CSVLogger", "save_dir": str(run_dir), "name": "csv",
                "version": ""},
    }


def tiny_run(tmp_path: Path):
    from PIL import Image

    class DS:
        def __getitem__(self, i):
            return type("S", (), {"image": Image.new("RGB", (32, 32), (40 * i, 0, 0)), "captions": ["x"]})()

    cs = ConceptSet(U=torch.eye(2), V=torch.tensor([[1.0, 0.0], [0.5, 2.0]]), words=[["red"], []],
                    top_samples=[["a", "b"], ["b"]], top_indices=[[0, 1], [1]], method="semi_nmf", layer=-1,
                    token="dog")
    png = tmp_path / "grid.png"
    Image.new("RGB", (40, 20), "white").save(png)
    return cs, DS(), {"concept_grid": str(png)}


def layer_result(tmp_path: Path, layer: int = 2, name: str | None = None):
    """What the pipeline hands to JobLog.log_layer (a LayerResult's fields)."""
    from types import SimpleNamespace

    from safetensors.torch import save_file

    cs, ds, images = tiny_run(tmp_path)
    out = tmp_path / f"layer_{layer}"
    out.mkdir(exist_ok=True)
    save_file({"U": torch.eye(2)}, str(out / "dictionary.safetensors"))
    return SimpleNamespace(layer=Layer(layer, name or str(layer)), out_dir=out, concepts=cs, dataset=ds,
                           train_records=[{"index": 0}, {"index": 1}], figures=images,
                           metrics={"overlap": 0.25, "recon_rel_error_train": 0.5},
                           artifacts={"recovery_table": [{"factor": "colour", "value": "red", "auroc_matched": 0.9,
                                                          "matched_words": ["red"]}]})


def logged_artifacts(run_dir: Path) -> list[dict]:
    """Every artifact the offline W&B run under `run_dir` logged: type, name, files (path -> md5), metadata."""
    import base64

    (run_file,) = Path(run_dir).glob("wandb/offline-run-*/run-*.wandb")
    arts = [r.artifact for r in read_offline_run(run_file) if r.WhichOneof("record_type") == "artifact"]
    return [{"type": a.type, "name": a.name, "metadata": json.loads(a.metadata or "{}"),
             "files": {e.path: base64.b64decode(e.digest).hex() for e in a.manifest.contents}} for a in arts]


def md5(path: Path) -> str:
    import hashlib

    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("background", [True, False], ids=["loggers_process", "in_the_job"])
def test_a_job_log_writes_everything_under_the_run_dir(tmp_path, offline_wandb, capfd, background):
    run_dir = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no logger call may fail here (in this process)
        job = JobLog(loggers_cfg(run_dir), {"token": "dog", "method": {"n_concepts": 2}}, background=background)
        job.flush()
        if not background:
            assert [type(lg).__name__ for lg in job.loggers] == ["WandbLogger", "CSVLogger"]
        job.log_stages({"train": {"count_selected": 10, "seconds": 2.0, "extracted": 10}}, 2.5, True)
        job.log_layer(layer_result(tmp_path, 1), multi=True)
        job.log_layer(layer_result(tmp_path, 2), multi=True)
        job.log_summary({"layer_1/overlap": 0.25, "n_train": 10.0})
        job.finish("success")
    assert "failed to log" not in capfd.readouterr().err  # nor in the loggers' process (its stderr is the job's)
    (wb_run,) = (run_dir / "wandb").glob("offline-run-*")
    assert list(wb_run.glob("files/media/table/layer_2/concepts*.table.json"))
    assert list(wb_run.glob("files/media/table/layer_2/recovery_table*.table.json"))
    assert list(wb_run.glob("files/media/images/layer_1/concept_grid*.png"))
    run = offline_run(run_dir)
    assert run["config"]["token"] == "dog" and run["exit_code"] == 0
    by_layer = [h for h in run["history"] if "by_layer/overlap" in h]
    assert [h["layer"] for h in by_layer] == [1, 2]  # the layer is the x-axis of the per-layer metrics
    assert any(h.get("stages/train/samples_per_s") == 5.0 for h in run["history"])
    # each layer's dictionary.safetensors, as a `dictionary` artifact named after the run and the layer
    dictionaries = [a for a in logged_artifacts(run_dir) if a["type"] == "dictionary"]
    assert [(a["name"].rsplit("-", 1)[-1], a["metadata"]) for a in dictionaries] == [
        (str(layer), {"method": "semi_nmf", "layer": str(layer), "token": "dog"}) for layer in (1, 2)]
    assert [a["files"] for a in dictionaries] == [
        {"dictionary.safetensors": md5(tmp_path / f"layer_{layer}" / "dictionary.safetensors")} for layer in (1, 2)]
    assert "overlap" in (run_dir / "csv/metrics.csv").read_text()
    assert "n_concepts" in (run_dir / "csv/hparams.yaml").read_text()


def test_a_failed_job_is_marked_failed_with_its_error(tmp_path, offline_wandb):
    run_dir = tmp_path / "run"
    job = JobLog(loggers_cfg(run_dir), {"token": "dog"})
    job.finish("failed", "no sample selected for token 'dog'")
    run = offline_run(run_dir)
    assert run["exit_code"] == 1 and run["config"]["token"] == "dog"
    assert run["summary"]["coxlmm/status"] == "failed" and "no sample selected" in run["summary"]["coxlmm/error"]


def test_a_failing_wandb_only_warns(tmp_path, offline_wandb, monkeypatch):
    from coxlmm.report.loggers import WandbLogger

    def unreachable(self):
        raise ConnectionError("W&B is unreachable")

    monkeypatch.setattr(WandbLogger, "experiment", property(unreachable))
    run_dir = tmp_path / "run"
    with pytest.warns(RuntimeWarning, match="WandbLogger failed to log"):  # in this process, to patch W&B
        job = JobLog(loggers_cfg(run_dir), {"token": "dog"}, background=False)
        job.log_layer(layer_result(tmp_path), multi=False)
        job.flush()
    job.finish("success")
    # the other logger still logged, in full: the layer's metrics and the job's config
    import csv

    (row,) = csv.DictReader((run_dir / "csv/metrics.csv").read_text().splitlines())
    assert float(row["overlap"]) == 0.25 and float(row["recon_rel_error_train"]) == 0.5
    assert "token: dog" in (run_dir / "csv/hparams.yaml").read_text()


def test_concept_table_without_images(tmp_path):
    cs, _, _ = tiny_run(tmp_path)  # no dataset: ids and words only
    columns, rows = concept_table(cs)
    assert columns == ["concept", "words", "top_samples"]
    assert rows == [[0, "red", "a, b"], [1, "", "b"]]


def test_concept_table_images_are_the_browsers_thumbnails_where_it_wrote_them(tmp_path):
    from PIL import Image

    cs, ds, _ = tiny_run(tmp_path)
    (tmp_path / "thumbs").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "thumbs" / "train_1.jpg")  # sample 1's, as the browser names it
    columns, rows = concept_table(cs, ds, [0, 1], run_dir=tmp_path)
    assert columns[3:] == ["mas_1", "mas_2"]
    (a, b), (c, d) = [row[3:] for row in rows]
    assert b == c == str(tmp_path / "thumbs" / "train_1.jpg")  # the thumbnail's path: no image drawn again
    assert isinstance(a, Image.Image) and a.getpixel((0, 0)) == (0, 0, 0) and d is None  # drawn: no thumbnail


class GatedCSVLogger:
    """A CSV logger that is built only once the file `gate` exists (a logger that takes long to start)."""

    def __new__(cls, gate: str, **kwargs):
        import time

        from coxlmm.report.loggers import CSVLogger

        deadline = time.monotonic() + 600  # a guard, not a timing: the test creates the gate
        while not Path(gate).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        return CSVLogger(**kwargs)


def test_the_loggers_start_off_the_jobs_critical_path_and_finish_waits_for_them(tmp_path, offline_wandb):
    """The job goes on while its loggers start in their own process; `finish` still closes complete runs
    (calls kept in order)."""
    run_dir, gate = tmp_path / "run", tmp_path / "gate"
    cfg = loggers_cfg(run_dir)
    cfg["csv"] |= {"_target_": f"{__name__}.GatedCSVLogger", "gate": str(gate)}
    job = JobLog(cfg, {"token": "dog"})
    job.log_summary({"overlap": 0.5, "n_train": 10.0})  # returns at once: the CSV logger is not even built
    assert not (run_dir / "csv").exists()
    gate.touch()
    job.finish("success")
    run = offline_run(run_dir)
    assert run["exit_code"] == 0 and run["config"]["token"] == "dog" and run["summary"]["overlap"] == 0.5
    assert "token: dog" in (run_dir / "csv/hparams.yaml").read_text()
    assert "overlap" in (run_dir / "csv/metrics.csv").read_text()


class DyingLogger:
    """A logger whose process dies as it is built (a crash W&B cannot report)."""

    def __new__(cls, **kwargs):
        import os

        os._exit(3)


def test_a_loggers_process_that_dies_never_holds_the_job(tmp_path, offline_wandb):
    cfg = {"dying": {"_target_": f"{__name__}.DyingLogger"}}
    job = JobLog(cfg, {"token": "dog"})
    job.log_layer(layer_result(tmp_path, 1), multi=False)  # a call the dead process never reads
    job.flush()
    with pytest.warns(RuntimeWarning, match="exit code 3"):
        job.finish("success")


def log_in_a_worker(run_dir: str) -> str:
    job = JobLog(loggers_cfg(Path(run_dir)), {"token": "dog"})
    job.log_summary({"overlap": 0.5})
    job.finish("success")
    return run_dir


def test_a_job_in_a_joblib_worker_logs_in_full(tmp_path, offline_wandb):
    """joblib's loky workers hold a start method (`loky`) that `multiprocessing.spawn` cannot give a fresh
    interpreter: the loggers' process must start anyway (Hydra's joblib launcher runs jobs there)."""
    from joblib import Parallel, delayed

    runs = Parallel(n_jobs=2)(delayed(log_in_a_worker)(str(tmp_path / f"run{i}")) for i in range(2))
    for run_dir in runs:
        run = offline_run(Path(run_dir))
        assert run["exit_code"] == 0 and run["summary"]["overlap"] == 0.5
        assert "overlap" in (Path(run_dir) / "csv/metrics.csv").read_text()


NO_LIGHTNING = """
import sys, warnings
from tests.report.test_report_log import layer_result, loggers_cfg
from pathlib import Path
from coxlmm.report.log import JobLog

tmp = Path(sys.argv[1])
with warnings.catch_warnings():
    warnings.simplefilter("error", RuntimeWarning)  # no logger call may fail
    job = JobLog(loggers_cfg(tmp / "run"), {"token": "dog"})
    job.log_layer(layer_result(tmp, 1), multi=False)
    job.log_summary({"overlap": 0.25})
    job.finish("success")
print("lightning imported:", any(m == "lightning" or m.startswith("lightning.") for m in sys.modules))
print("wandb imported:", "wandb" in sys.modules)
"""


def test_the_default_loggers_log_a_whole_job_without_importing_lightning(tmp_path):
    """coxlmm's W&B and CSV loggers: a job whose model stages are cached never pays Lightning's 4 s import, and
    W&B's runs in the loggers' process, not the job's."""
    env = {**__import__("os").environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           "WANDB_CONFIG_DIR": str(tmp_path / "wandb-home"), "WANDB_CACHE_DIR": str(tmp_path / "wandb-home")}
    env.pop("WANDB_DATA_DIR", None)
    out = subprocess.run([sys.executable, "-c", NO_LIGHTNING, str(tmp_path)], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "lightning imported: False" in out.stdout and "wandb imported: False" in out.stdout
    run = offline_run(tmp_path / "run")
    assert run["exit_code"] == 0 and run["config"]["token"] == "dog" and run["summary"]["overlap"] == 0.25
    assert "overlap" in (tmp_path / "run/csv/metrics.csv").read_text()


def test_a_trainer_gets_lightnings_loggers_with_the_same_arguments(tmp_path):
    from lightning.pytorch.loggers import CSVLogger, WandbLogger

    from coxlmm.report.log import trainer_loggers

    wb, csv = trainer_loggers(loggers_cfg(tmp_path / "run"))
    assert isinstance(wb, WandbLogger) and isinstance(csv, CSVLogger)
    assert Path(csv.log_dir) == tmp_path / "run" / "csv" and wb.save_dir == str(tmp_path / "run")
    assert trainer_loggers({}) is False
