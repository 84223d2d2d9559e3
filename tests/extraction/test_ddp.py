"""Two CPU processes (Lightning DDP, gloo) write their own shards; the store presents the same Z."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from coxlmm.extraction.store import FeatureStore
from tests.extraction.conftest import make_folder_dataset
from tests.fixtures.tiny_models import load_card

SCRIPT = Path(__file__).with_name("ddp_extract.py")


def _extract(model_dir, data_dir, root, token, devices):
    """The entry rank 0 finalized; every rank reports in its own file (`ddp_extract.py`)."""
    results = Path(root).with_name(Path(root).name + "-ranks")
    out = subprocess.run([sys.executable, str(SCRIPT), str(model_dir), str(data_dir), str(root), token, str(devices),
                          str(results)], capture_output=True, text=True, timeout=600, cwd=SCRIPT.parents[2])
    assert out.returncode == 0, out.stderr[-3000:]
    ranks = {int(p.stem.split("-")[1]): json.loads(p.read_text()) for p in results.glob("rank-*.json")}
    assert sorted(ranks) == list(range(devices)), out.stdout[-2000:] + out.stderr[-3000:]
    assert ranks[0]["complete"] and {r["store"] for r in ranks.values()} == {ranks[0]["store"]}
    return Path(ranks[0]["store"])


def _load(store_dir):
    s = FeatureStore(store_dir.parent, {})
    s.dir = store_dir
    return s.load(list(range(3)))


@pytest.mark.slow
def test_two_cpu_processes_match_one(tiny_llava_path, tmp_path):
    word = load_card(tiny_llava_path).single_piece_word
    data = make_folder_dataset(tmp_path / "data", n_train=7, n_test=0)
    one = _extract(tiny_llava_path, data, tmp_path / "one", word, 1)
    two = _extract(tiny_llava_path, data, tmp_path / "two", word, 2)
    ranks = {p.stem.rsplit("-r", 1)[1] for p in two.glob("shard-*.json")}
    assert ranks == {"0", "1"}, "each rank writes its own shards"
    Z1, r1 = _load(one)
    Z2, r2 = _load(two)
    assert [r["index"] for r in r1] == [r["index"] for r in r2] == list(range(7))
    for l in Z1:
        torch.testing.assert_close(Z2[l], Z1[l], atol=1e-4, rtol=1e-4)
