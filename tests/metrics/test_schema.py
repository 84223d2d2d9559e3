"""Metrics declare their outputs: every score, per-sample array and per-concept column a metric returns
is described, and no view writes a metric key itself (the key literals live under metrics/ only)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from coxlmm.config import build
from coxlmm.data.shapes import ShapesWorld
from coxlmm.metrics.schema import Samples, Schema, Score, TableSpec
from tests.metrics.scoring_fakes import make_input

SRC = Path(__file__).resolve().parents[2] / "src" / "coxlmm"


def paper_metrics() -> dict:
    """Every metric of `metrics=paper` (which includes `core`), composed and built like a run does."""
    from hydra import compose, initialize_config_dir

    from coxlmm.config import register_configs
    from coxlmm.paths import CONF_DIR

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["metrics=paper"])
    assert {"overlap", "recon", "stability", "test_samples", "explanations"} <= set(cfg.metrics)
    return {name: build(node) for name, node in cfg.metrics.items()}


@pytest.fixture(scope="module")
def results():
    world = ShapesWorld("train", n_train=40, image_size=32)
    from coxlmm.concepts.pca import PCA

    inp = make_input(factors=world.factor_values())
    dictionary = PCA(4).fit(inp.train.Z)
    inp = dataclasses.replace(inp, dictionary=dictionary)
    noise = (inp.train.Z.clone(), inp.train.Z + 0.1)
    inp = dataclasses.replace(inp, train=dataclasses.replace(inp.train, noise=noise),
                              test=dataclasses.replace(inp.test, noise=tuple(inp.test.Z + 0.1 * i for i in range(2))))
    return {name: metric(inp) for name, metric in paper_metrics().items()}


def test_every_output_of_every_paper_metric_is_described(results):
    declared = {t.name for res in results.values() for t in res.schema.tables}
    for name, res in results.items():
        described = {s.key for s in res.schema.scores}
        assert set(res.scores) <= described, (name, sorted(set(res.scores) - described))
        assert set(res.samples) <= {s.name for s in res.schema.samples}, name
        assert set(res.concepts) <= {c.key for c in res.schema.concepts}, name
        assert all(set(s.tables) <= declared for s in res.schema.scores), name  # a table someone declares


def test_no_metric_key_literal_outside_metrics(results):
    """Tables, the browser, the summary and the CLI render metrics from their description: a metric key
    written as a string literal anywhere in src/ but metrics/ is a view that knows a metric by name."""
    keys = set()
    for res in results.values():
        keys |= set(res.scores) | {s.key for s in res.schema.scores}
        keys |= {s.name for s in res.schema.samples} | {c.key for c in res.schema.concepts}
    assert len(keys) > 50
    pattern = re.compile(r"""[rbuf]*["']({})(["'/]|_\{{)""".format("|".join(sorted(map(re.escape, keys), key=len,
                                                                                     reverse=True))))
    hits = []
    for path in SRC.rglob("*.py"):
        if path.is_relative_to(SRC / "metrics"):
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                hits.append(f"{path.relative_to(SRC)}:{n}: {line.strip()}")
    for path in (SRC / "report" / "browser" / "static").glob("*.js"):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                hits.append(f"{path.relative_to(SRC)}:{n}: {line.strip()}")
    assert not hits, "metric keys written outside metrics/:\n" + "\n".join(hits)


def test_schema_round_trips_and_merges_first_description_first():
    a = Schema(scores=[Score("x", "X", ("t",), row="r", better=1)], samples=[Samples("s", "S", nulls=("n",))],
               tables=[TableSpec("t", "T", pivot=True)])
    b = Schema(scores=[Score("x", "other"), Score("y", "Y")])
    merged = a.merge(b)
    assert [s.label for s in merged.scores] == ["X", "Y"]
    again = Schema.from_json(merged.to_json())
    assert again == merged and again.samples[0].nulls == ("n",) and again.scores[0].tables == ("t",)
    assert Schema(scores=[Score("e", "E", better=-1, objective=True)]).objective({"e": 0.3}) == 0.3
    assert Schema(scores=[Score("e", "E", better=1, objective=True)]).objective({"e": 0.3}) == -0.3


def test_a_toy_metric_from_a_test_config_appears_in_the_tables_and_the_browser(tiny_llava_path, tmp_path):
    """The toy metric lives in tests/ (its class and its config): a sweep with it gets its table in
    tables.md and its score and per-concept column in the concept browser, with no other edit."""
    import json
    import os
    import subprocess
    import sys

    from coxlmm.report.tables import main as tables_main
    from tests.extraction.conftest import make_folder_dataset

    repo = Path(__file__).resolve().parents[2]
    data = make_folder_dataset(tmp_path / "data", n_train=12, n_test=4, words=("dog",))
    sweep = tmp_path / "sweep"
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(repo)}
    out = subprocess.run(
        [sys.executable, "-m", "coxlmm", "-m", f"hydra.searchpath=[file://{repo / 'tests' / 'conf'}]", "metrics=toy",
         "model=hf", f"model.name_or_path={tiny_llava_path}", "data=folder", f"data.root={data}",
         f"paths.cache_dir={tmp_path / 'cache'}", "extraction.max_new_tokens=20", "extraction.batch_size=4",
         "method.n_concepts=3", "token=dog", "figures=false", "print_summary=false", "logger=none", "seed=0,1",
         f"hydra.sweep.dir={sweep}"], cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert tables_main([str(sweep), "--no-figures"]) == 0
    md = (sweep / "tables.md").read_text()
    assert "## Toy table: the atoms' norms" in md and "Toy atom norm" in md
    report = json.loads(next(sweep.rglob("report.json")).read_text())
    assert any(m["label"] == "Toy atom norm" and m["summary"] for m in report["metrics"])
    assert report["concepts"][0]["scores"][-1]["label"] == "toy ‖u_k‖"
    assert {"key": "toy_atom_norm", "label": "toy ‖u_k‖", "better": 0} in report["sort_keys"]
