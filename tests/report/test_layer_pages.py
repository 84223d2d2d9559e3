"""The layer value (coxlmm/layer.py) and the pages it names: a sweep over `layers=[-1,norm]` links the
`norm` layer's page from the run's page and the sweep's index (no layer is parsed back from a name)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from coxlmm.errors import CoxlmmError
from coxlmm.layer import Layer
from coxlmm.report.tables import collect, main as tables_main

REPO = Path(__file__).resolve().parents[2]


def test_a_layer_is_resolved_once_and_named_from_its_value():
    assert Layer.of(-1, 30) == Layer(29, "29") and Layer.of("29", 30) == Layer(29, "29")
    assert Layer.of("norm", 30) == Layer(30, "norm") == Layer.at(30, 30)
    norm = Layer.of("NORM ", 30)
    assert (norm.dir, norm.prefix, norm.tensor) == ("layer_norm", "layer_norm/", "layer_030")
    assert sorted([Layer.of("norm", 30), Layer.of(0, 30), Layer.of(-1, 30)]) == [Layer(0, "0"), Layer(29, "29"),
                                                                                 Layer(30, "norm")]
    assert Layer.from_json({"layer": 30, "extra": {"layer_name": "norm"}}) == norm
    for bad in (30, -31, "last", 1.5, True):
        with pytest.raises(CoxlmmError, match="out of range"):
            Layer.of(bad, 30)


def links(page: Path) -> list[str]:
    return re.findall(r'<a href="([^"]+)"', page.read_text(encoding="utf-8"))


@pytest.mark.timeout(400)
def test_a_sweep_over_a_block_and_the_norm_links_both_layer_pages(tiny_llava_path, tmp_path):
    from tests.extraction.conftest import make_folder_dataset
    from tests.fixtures.tiny_models import load_card

    card = load_card(tiny_llava_path)
    data = make_folder_dataset(tmp_path / "data", n_train=10, n_test=4, words=(card.single_piece_word,))
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "coxlmm", "-m", "model=hf", f"model.name_or_path={tiny_llava_path}", "data=folder",
           f"data.root={data}", f"paths.cache_dir={tmp_path / 'cache'}", "extraction.max_new_tokens=20",
           "method=simple", "method.n_concepts=3", f"token={card.single_piece_word}", "layers=[-1,norm]",
           "logger=none", "figures=false", f"hydra.sweep.dir={sweep}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=360, cwd=REPO,
                         env={**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    (job,) = [p.parent.parent for p in sweep.glob("*/.hydra/config.yaml")]
    n = 3  # the tiny LLaVA's decoder blocks: -1 is block 2, norm is index 3
    assert {(r["layer"], r["layer_name"]) for r in collect(sweep)} == {(n - 1, str(n - 1)), (n, "norm")}
    assert links(job / "report.html") == ["layer_2/report.html", "layer_norm/report.html"]
    for sub, name in (("layer_2", "2"), ("layer_norm", "norm")):
        page = (job / sub / "report.html").read_text(encoding="utf-8")
        assert '"up":"../report.html"' in page and f"· layer {name}</title>" in page
        assert json.loads((job / sub / "report.json").read_text())["layer_name"] == name
    assert tables_main([str(sweep), "--no-figures"]) == 0
    assert f"{job.name}/report.html" in links(sweep / "index.html")
