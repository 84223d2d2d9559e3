"""Every option of every config group composes onto the default config and builds.

The groups are the folders of conf/ (and conf/hydra/'s), the options their yaml files: a new file is
tested by being there. Each option is composed as a user selects it (`method=pca`, `metrics=paper`,
`+metric@metrics.<name>=<name>` for the single metrics the sets are made of) and instantiated where that
is cheap and needs nothing this machine lacks: dictionaries (with the run's device given at call time),
metrics, scorers, the shapes and folder data, the CSV and W&B loggers, the CPU Trainer, the model's
description (its store key and depth, no weights loaded). What is skipped says why.

Also: a value that is not one of a key's choices fails at composition, naming the accepted values; the
job-dir settings are stated once (conf/hydra/coxlmm.yaml), never by a preset; no method or scorer file
names a device, and the one the run has reaches what it builds.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig, OmegaConf

from coxlmm.config import build, register_configs
from coxlmm.paths import CONF_DIR

CONF = Path(CONF_DIR)
# Groups that hold Hydra's own settings, and the folder of conf/hydra/ files config.yaml includes.
HYDRA_GROUPS = sorted(p.relative_to(CONF).as_posix() for p in (CONF / "hydra").iterdir() if p.is_dir())
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name not in ("hydra", "__pycache__"))


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


CASES = [(g, o) for g in GROUPS + HYDRA_GROUPS for o in options(g)]


@pytest.fixture(scope="module")
def hydra_conf():
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        yield


def compose_with(*overrides: str) -> DictConfig:
    return compose("config", overrides=list(overrides), return_hydra_config=True)


def selection(group: str, option: str) -> list[str]:
    """The overrides that select one option of a group as a user would."""
    if group == "metric":  # the single metrics: in a set (metrics=...) or a preset's own defaults list
        return ["~metrics", f"+metric@metrics.{option}={option}"]
    return [f"{group}={option}"]


def test_the_groups_are_the_folders():
    assert {"data", "debug", "experiment", "logger", "method", "metric", "metrics", "model", "scorer",
            "trainer"} <= set(GROUPS)
    assert "hydra/launcher" in HYDRA_GROUPS
    assert len(CASES) >= 50  # every yaml of every group: a test each


@pytest.mark.parametrize("group, option", CASES, ids=[f"{g}={o}" for g, o in CASES])
def test_every_option_composes_and_builds(hydra_conf, tmp_path, group, option):
    cfg = compose_with(*selection(group, option))
    check = BUILDERS.get(group)
    if check is not None:
        check(cfg, option, tmp_path)


# --- what each group builds ---------------------------------------------------------------------------
def build_method(cfg: DictConfig, option: str, tmp_path: Path) -> None:
    from coxlmm.concepts.base import Dictionary
    from coxlmm.pipeline import dictionary_factory

    d = dictionary_factory(cfg)(cfg.seed + 1)
    assert isinstance(d, Dictionary) and d.name == cfg.method.name == option and d.seed == cfg.seed + 1
    assert d.device == "cpu" and "device" not in cfg.method  # the run's device, given at call time


def build_metrics(cfg: DictConfig, option: str, tmp_path: Path) -> None:
    from coxlmm.metrics.base import Metric

    built = {name: build(node) for name, node in cfg.metrics.items()}
    assert built and all(isinstance(m, Metric) for m in built.values())


def build_metric(cfg: DictConfig, option: str, tmp_path: Path) -> None:
    build_metrics(cfg, option, tmp_path)
    assert list(cfg.metrics) == [option]
    assert build(cfg.metrics[option]).name == option  # the file is named after the metric it builds


def build_scorer(cfg: DictConfig, option: str, tmp_path: Path) -> None:
    from coxlmm.pipeline import build_scorer

    if option == "none":
        assert not cfg.scorer
        return
    if option == "clip":
        pytest.skip("scorer=clip loads openai/clip-vit-base-patch32 and roberta-large from the local Hugging Face "
                    "cache: not on this machine (tests/scorers/test_scorer_configs.py checks its clear error)")
    from coxlmm.scorers.embedded import DEFAULT_WEIGHTS

    if not os.path.isfile(DEFAULT_WEIGHTS):
        pytest.skip("the embedded scorer's heads are not trained here (`make train-scorer`)")
    scorer = build_scorer(cfg)
    assert str(scorer.clip.device) == str(scorer.bert.device) == cfg.device == "cpu"


def build_data(cfg: DictConfig, option: str, tmp_path: Path) -> None:
    if option == "coco":
        pytest.skip("data=coco reads the COCO images and dataset_coco.json (data.root, data.ann_file): not here")
    overrides = {"n_train": 8, "n_test": 4} if option == "shapes" else {}
    if option == "folder":
        from tests.extraction.conftest import make_folder_dataset

        overrides["root"] = str(make_folder_dataset(tmp_path / "data", n_train=3, n_test=2, words=("dog",)))
    node = OmegaConf.merge(cfg.data, overrides)
    for split in (cfg.train_split, cfg.test_split):
        assert len(build(node, split=split)) > 0  # the split is given at build time, as the pipeline does


def build_model(cfg: DictConfig, option: str, tmp_path: Path) -> None:
    from coxlmm.models.spec import ModelSpec

    name = cfg.model.get("name_or_path")
    if option == "hf":
        pytest.skip("model=hf has no default model.name_or_path (tests/models/ run it on tiny checkpoints)")
    if name is not None:
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(name, "config.json"), str):
            pytest.skip(f"model={option} describes itself from {name}'s files: not in the local Hugging Face cache")
    spec = ModelSpec(cfg.model)  # the store key and the depth, no weights loaded
    assert spec.num_layers > 0 and spec.key


def build_trainer(cfg: DictConfig, option: str, tmp_path: Path) -> None:
    import torch

    if cfg.trainer.accelerator != "cpu" and not torch.cuda.is_available():
        pytest.skip(f"trainer={option} needs a GPU")
    trainer = build(cfg.trainer, logger=False, enable_checkpointing=False, default_root_dir=str(tmp_path))
    assert trainer.num_devices >= 1


def build_logger(cfg: DictConfig, option: str, tmp_path: Path) -> None:
    from coxlmm.report.log import build_loggers

    nodes = OmegaConf.create({name: {**OmegaConf.to_container(node), "save_dir": str(tmp_path), "name": "x"}
                              for name, node in cfg.logger.items()})
    loggers = build_loggers(nodes)
    assert [type(lg).__name__ for lg in loggers] == [node._target_.rsplit(".", 1)[-1] for node in nodes.values()]


def build_launcher(cfg: DictConfig, option: str, tmp_path: Path) -> None:
    from hydra.utils import get_class

    assert get_class(cfg.hydra.launcher._target_)  # the plugin is installed


def build_experiment(cfg: DictConfig, option: str, tmp_path: Path) -> None:
    build_metrics(cfg, option, tmp_path)
    build_method(cfg, cfg.method.name, tmp_path)


BUILDERS = {"method": build_method, "metrics": build_metrics, "metric": build_metric, "scorer": build_scorer,
            "data": build_data, "model": build_model, "trainer": build_trainer, "logger": build_logger,
            "hydra/launcher": build_launcher, "experiment": build_experiment}


# --- typed choices ------------------------------------------------------------------------------------
@pytest.mark.parametrize("override, accepted", [
    ("noise.images=blur", "[noise, real]"),
    ("extraction.layers=some", "[all, requested]"),
    ("extraction.store_dtype=int8", "[float32, float16, bfloat16]"),
])
def test_a_value_that_is_not_a_choice_fails_at_composition(hydra_conf, override, accepted):
    with pytest.raises(ConfigCompositionException) as e:
        compose_with(override)
    message = f"{e.value} {e.value.__cause__}"
    key, value = override.split("=")
    assert f"Invalid value '{value}', expected one of {accepted}" in message and key in message


def test_a_choice_is_its_string(hydra_conf):
    import json

    cfg = compose_with("extraction.store_dtype=bfloat16", "noise.images=real")
    e = cfg.extraction
    assert e.store_dtype == "bfloat16" and f"{e.store_dtype}" == "bfloat16" and cfg.noise.images == "real"
    assert json.dumps([e.store_dtype, e.layers]) == '["bfloat16", "all"]'  # store keys: as before the enums


def test_the_metric_keys_the_readme_documents_are_set_without_a_plus(hydra_conf):
    """`metrics.<name>.<key>=`: each metric file lists the keys the README's Configuration table names."""
    cfg = compose_with("metrics=causal", "metrics.test_samples.n_draws=5", "metrics.recovery.n_permutations=10",
                       "metrics.explanations.quantile=0.1", "metrics.explanations.min_samples=3",
                       "metrics.explanations.n_draws=4", "metrics.causal.steps=[0.3]", "metrics.stability.fraction=1.0")
    m = cfg.metrics
    assert (m.test_samples.n_draws, m.recovery.n_permutations, m.explanations.quantile) == (5, 10, 0.1)
    assert (m.explanations.min_samples, m.explanations.n_draws, list(m.causal.steps)) == (3, 4, [0.3])
    assert build(m.recovery).n_permutations == 10 and build(m.stability).fraction == 1.0


# --- stated once ---------------------------------------------------------------------------------------
def test_the_job_dirs_are_set_in_one_file(hydra_conf):
    default = compose_with().hydra
    assert default.run.dir.startswith("outputs/runs/") and default.job.chdir is False
    excluded = list(default.job.config.override_dirname.exclude_keys)
    assert {"experiment", "logger", "paths.cache_dir", "data.root", "data.n_train"} <= set(excluded)
    for option in options("experiment"):
        hydra = compose_with(f"experiment={option}").hydra
        assert list(hydra.job.config.override_dirname.exclude_keys) == excluded
        raw = OmegaConf.to_container(hydra.sweep)  # its subdir reads hydra.job.num: set in a sweep's job only
        assert raw["subdir"] == "${hydra.job.num}_${hydra.job.override_dirname}"
        assert raw["dir"] == f"outputs/multirun/{option}"
    for path in CONF.rglob("*.yaml"):
        text = path.read_text()
        assert path.name == "coxlmm.yaml" or "exclude_keys" not in text, path
        assert "${device}" not in text, f"{path}: the device is given at instantiation, like the seed"


def test_the_runs_device_reaches_the_dictionary_and_the_scorers(hydra_conf):
    """Injected, not interpolated: `device=` on the command line is what every dictionary and scorer gets."""
    from coxlmm.pipeline import build_scorer, dictionary_factory

    cfg = compose_with("device=cuda:1", "method=topk_sae", "scorer=embedded")
    assert dictionary_factory(cfg)(0).device == "cuda:1"  # built, not fitted: no GPU needed
    recorded = OmegaConf.merge(cfg, {"scorer": {"clip": {"_target_": f"{__name__}.Recorder"},
                                                "bert": {"_target_": f"{__name__}.Recorder"},
                                                "_target_": f"{__name__}.Recorder"}})
    scorer = build_scorer(recorded)
    assert scorer.kwargs["clip"].kwargs["device"] == scorer.kwargs["bert"].kwargs["device"] == "cuda:1"


class Recorder:
    def __init__(self, **kwargs):
        self.kwargs = kwargs


@pytest.mark.parametrize("override, message", [
    ("method.v_solver=bogus", "v_solver='bogus'"),
    ("metrics.causal.step_unit=percent", "step_unit='percent' is invalid"),
])
def test_a_bad_method_or_metric_choice_fails_before_any_model_runs(hydra_conf, tmp_path, monkeypatch, override,
                                                                      message):
    """The group nodes (method, metrics) are checked by what they build, which the run builds first."""
    import coxlmm.pipeline as pipeline
    from coxlmm.errors import CoxlmmError

    def no_model(*args, **kwargs):
        raise AssertionError("a model stage ran before the bad setting was refused")

    monkeypatch.setattr(pipeline, "model_stages", no_model)
    cfg = compose_with("debug=tiny", "metrics=causal", override, f"paths.output_dir={tmp_path}")
    with pytest.raises(CoxlmmError, match=message):
        pipeline.run(cfg)
