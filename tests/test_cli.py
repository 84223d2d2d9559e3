"""The `coxlmm` command on a tiny LLaVA: the run-directory contract and bad input.

Bad input must give one clear paragraph and a non-zero exit, never a deep traceback.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.extraction.conftest import make_folder_dataset
from tests.fixtures.tiny_models import load_card

REPO = Path(__file__).resolve().parents[1]


def coxlmm(*overrides, timeout=300):
    cmd = [sys.executable, "-m", "coxlmm", *overrides]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env={**__import__("os").environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"})


@pytest.fixture(scope="module")
def setup(tiny_llava_path, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    card = load_card(tiny_llava_path)
    data = make_folder_dataset(tmp / "data", n_train=12, n_test=4, words=(card.single_piece_word,))
    base = ["model=hf", f"model.name_or_path={tiny_llava_path}", "data=folder", f"data.root={data}",
            f"paths.cache_dir={tmp / 'cache'}", "extraction.max_new_tokens=20", "method.n_concepts=3"]
    return tmp, card, base


def test_run_writes_the_contract(setup):
    tmp, card, base = setup
    run_dir = tmp / "run"
    out = coxlmm(*base, f"token={card.single_piece_word}", "layers=[-1,0]", f"hydra.run.dir={run_dir}",
                 "logger=csv")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "outputs in" in out.stdout
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert all(isinstance(v, float) for v in metrics.values())
    assert {"layer_2/overlap", "layer_0/overlap", "n_train", "n_test"} <= set(metrics)
    for layer in (0, 2):
        sub = run_dir / f"layer_{layer}"
        concepts = json.loads((sub / "concepts.json").read_text())
        assert concepts["layer"] == layer and concepts["method"] == "semi_nmf" and len(concepts["concepts"]) == 3
        assert {"id", "words", "top_samples"} <= set(concepts["concepts"][0])
        assert (sub / "dictionary.safetensors").exists() and (sub / "concept_grid.png").exists()
    assert (run_dir / ".hydra" / "config.yaml").exists()
    manifest = next((tmp / "cache" / "features").glob("*/manifest.json"))
    man = json.loads(manifest.read_text())
    assert man["model"]["prompt"] and man["generation"]["max_new_tokens"] == 20
    assert man["samples"][0]["caption"] and man["samples"][0]["token_ids"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["tokne=dog"], "tokne"),  # typo in a key: Hydra's own error at composition
        # a value that is not one of the key's choices (config.py's enums): at composition, naming them
        (["noise.images=blur"], "Invalid value 'blur', expected one of [noise, real]"),
        (["extraction.store_dtype=int8"], "expected one of [float32, float16, bfloat16]"),
        (["token="], "token is empty"),
        pytest.param(["layers=[7]"], "layer 7 is out of range", marks=pytest.mark.slow),
        (["data.root=/does/not/exist"], "is not a directory"),
        pytest.param(["model.name_or_path=/no/such/model"], "/no/such/model", marks=pytest.mark.slow),
        (["method=nope"], "nope"),
    ],
)
def test_bad_input_exits_nonzero_with_a_clear_message(setup, overrides, message):
    tmp, card, base = setup
    out = coxlmm(*base, f"token={card.single_piece_word}", f"hydra.run.dir={tmp / 'bad'}", "logger=none", *overrides)
    assert out.returncode != 0
    assert message in out.stderr + out.stdout
    assert "Traceback" not in out.stderr or overrides == ["tokne=dog"]
