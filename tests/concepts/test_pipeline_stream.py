"""`fit.stream=true`: the run fits its dictionary from the feature store's shards, and gets the
dictionary the in-memory fit gets (PCA: exact either way; on a tiny LLaVA through the CLI)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.extraction.conftest import make_folder_dataset
from tests.fixtures.tiny_models import load_card

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # two CLI runs on a tiny LLaVA (~1 min on 2 cores)
def test_a_streamed_run_fits_the_same_dictionary(tiny_llava_path, tmp_path):
    card = load_card(tiny_llava_path)
    data = make_folder_dataset(tmp_path / "data", n_train=12, n_test=4, words=(card.single_piece_word,))
    base = ["model=hf", f"model.name_or_path={tiny_llava_path}", "data=folder", f"data.root={data}",
            f"paths.cache_dir={tmp_path / 'cache'}", "extraction.max_new_tokens=20", "method=pca",
            "method.n_concepts=3", f"token={card.single_piece_word}", "logger=none", "figures=false",
            "report=false"]
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    U = {}
    for stream in ("false", "true"):
        run = tmp_path / f"run_{stream}"
        out = subprocess.run([sys.executable, "-m", "coxlmm", *base, f"fit.stream={stream}", "fit.block_rows=2",
                              f"hydra.run.dir={run}"], capture_output=True, text=True, timeout=600, cwd=REPO, env=env)
        assert out.returncode == 0, out.stderr[-3000:]
        U[stream] = load_file(str(run / "dictionary.safetensors"))["U"]
        assert json.loads((run / "metrics.json").read_text())["n_train"] > 3
    assert (U["true"] - U["false"]).abs().max() < 1e-4
