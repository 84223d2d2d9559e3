"""Extraction benchmark on the tiny LLaVA (built on the fly, random weights, real code path).

1. Throughput (selected samples/s) of `extract` at batch sizes 1, 8, 32, and the ratio to batch 1.
2. Four layers against one, each from an empty feature cache: in one run (`layers=[0,1,2,-1]`) and
   as a Hydra multirun (`-m layers=[0],[1],[2],[-1]`, 4 jobs). The features are extracted once
   either way (the store keeps every layer), so the extra cost is the per-layer fits and, for the
   multirun, each job's start-up (model load, metrics).

    python bench/extraction_throughput.py [--n 96] [--max-new-tokens 20]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=96, help="images")
    ap.add_argument("--max-new-tokens", type=int, default=20)
    args = ap.parse_args()

    from coxlmm.data.folder import ImageFolderCaptions
    from coxlmm.extraction import ExtractionSettings, extract
    from coxlmm.models.hf import HFVisionLM
    from tests.extraction.conftest import make_folder_dataset
    from tests.fixtures.tiny_models import build, load_card

    tmp = Path(tempfile.mkdtemp(prefix="coxlmm-bench-"))
    model_dir = build("llava", tmp / "llava", tmp / "work")
    word = load_card(model_dir).single_piece_word
    data = make_folder_dataset(tmp / "data", n_train=args.n, n_test=8, words=(word,))
    lmm = HFVisionLM(name_or_path=str(model_dir))
    ds = ImageFolderCaptions(str(data), split="train")
    trainer = {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False}

    print(f"tiny LLaVA ({lmm.num_layers} blocks, hidden {lmm.hidden_size}), {len(ds)} images, "
          f"max_new_tokens={args.max_new_tokens}, torch threads={__import__('torch').get_num_threads()}")
    rates = {}
    for bs in (1, 8, 32):
        t0 = time.perf_counter()
        store = extract(lmm, ds, word, [-1], ExtractionSettings(batch_size=bs, max_new_tokens=args.max_new_tokens),
                        str(tmp / f"cache-bs{bs}"), trainer)
        dt = time.perf_counter() - t0
        n = store.manifest()["counts"]["selected"]
        rates[bs] = n / dt
        print(f"  batch {bs:>2}: {n} samples in {dt:6.2f} s = {rates[bs]:7.1f} samples/s "
              f"(x{rates[bs] / rates[1]:.2f} vs batch 1)")

    base = ["model=hf", f"model.name_or_path={model_dir}", "data=folder",
            f"data.root={data}", f"token={word}", "logger=none", "method.n_concepts=5", "figures=false",
            "extraction.batch_size=32", f"extraction.max_new_tokens={args.max_new_tokens}", "print_summary=false"]

    def timed(*extra, multirun: bool = False) -> float:
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "coxlmm", *(["-m"] if multirun else []), *base, *extra]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        if out.returncode:
            sys.exit(out.stderr[-3000:])
        return time.perf_counter() - t0

    timed("layers=[0]", f"paths.cache_dir={tmp / 'c0'}", f"hydra.run.dir={tmp / 'run0'}")  # warm-up (imports, disk)
    one = timed("layers=[0]", f"paths.cache_dir={tmp / 'c1'}", f"hydra.run.dir={tmp / 'run1'}")
    four = timed("layers=[0],[1],[2],[-1]", f"paths.cache_dir={tmp / 'c4'}", f"hydra.sweep.dir={tmp / 'sweep'}",
                 multirun=True)
    inrun = timed("layers=[0,1,2,-1]", f"paths.cache_dir={tmp / 'c5'}", f"hydra.run.dir={tmp / 'run5'}")
    print(f"  1-layer run: {one:.1f} s")
    print(f"  4 layers in one run (layers=[0,1,2,-1]): {inrun:.1f} s, ratio {inrun / one:.2f} (target <= 1.3)")
    print(f"  4-layer Hydra multirun (one extraction, 4 jobs, each loading the model): {four:.1f} s, "
          f"ratio {four / one:.2f}")


if __name__ == "__main__":
    main()
