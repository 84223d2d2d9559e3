"""GPU check of the model stages (run it once on a CUDA machine; it skips cleanly without CUDA).

On the tiny LLaVA (built on the fly), with `trainer=gpu`:
1. every model stage in turn (extraction of train and test, the noise source of both), checking after
   each that the model's parameters are still on CUDA (Lightning's teardown moves the LightningModule
   to the CPU after `predict`; the model must not be part of it);
2. the whole CLI with `trainer=gpu metrics=paper scorer=embedded` (dictionaries and scorers on
   `device=cuda`), and its metrics.json;
and prints each stage's time and device.

    python bench/gpu_check.py
"""

from __future__ import annotations

import json
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


def devices(lmm) -> set[str]:
    return {str(p.device) for p in lmm.parameters()}


def main() -> int:
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; nothing to check (skipped).")
        return 0
    from coxlmm.data.folder import ImageFolderCaptions
    from coxlmm.extraction import ExtractionSettings, ensure_readout, extract, extract_noise
    from coxlmm.models.hf import HFVisionLM
    from tests.extraction.conftest import make_folder_dataset
    from tests.fixtures.tiny_models import build, load_card

    tmp = Path(tempfile.mkdtemp(prefix="coxlmm-gpu-"))
    model_dir = build("llava", tmp / "tiny_llava", tmp / "work")
    word = load_card(model_dir).single_piece_word
    data = make_folder_dataset(tmp / "data", n_train=64, n_test=16, words=(word,))
    trainer = {"accelerator": "gpu", "devices": 1, "precision": "bf16-mixed", "enable_progress_bar": False}
    lmm = HFVisionLM(name_or_path=str(model_dir))
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}; model built on {sorted(devices(lmm))}")
    s = ExtractionSettings(batch_size=16, max_new_tokens=20)
    root = str(tmp / "cache" / "features")
    stores, ok = {}, True
    for split in ("train", "test"):
        ds = ImageFolderCaptions(str(data), split=split)
        t0 = time.perf_counter()
        stores[split] = extract(lmm, ds, word, [-1], s, root, trainer)
        print(f"extraction {split}: {time.perf_counter() - t0:.2f} s, model on {sorted(devices(lmm))}")
        ok &= devices(lmm) == {"cuda:0"}
        t0 = time.perf_counter()
        extract_noise(lmm, stores[split], ds, s, root, trainer=trainer)
        print(f"noise source {split}: {time.perf_counter() - t0:.2f} s, model on {sorted(devices(lmm))}")
        ok &= devices(lmm) == {"cuda:0"}
    t0 = time.perf_counter()
    readout = ensure_readout(lmm, root, device="cuda")
    print(f"readout: {time.perf_counter() - t0:.2f} s on {readout.device}")

    run = tmp / "run"
    cmd = [sys.executable, "-m", "coxlmm", "trainer=gpu", "model=hf", f"model.name_or_path={model_dir}", "data=folder",
           f"data.root={data}", f"token={word}", "extraction.max_new_tokens=20", "metrics=paper", "scorer=embedded",
           "method.n_concepts=5", "logger=csv", f"paths.cache_dir={tmp / 'cli_cache'}", f"hydra.run.dir={run}"]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    print(f"CLI trainer=gpu metrics=paper: exit {out.returncode} in {time.perf_counter() - t0:.1f} s")
    for line in out.stdout.splitlines() + out.stderr.splitlines():
        if "][INFO] - " in line and any(w in line for w in ("extraction", "noise source", "metric", "fitted", "report")):
            print("   ", line.split("][INFO] - ", 1)[1])
    if out.returncode != 0:
        print(out.stderr[-3000:])
        return 1
    metrics = json.loads((run / "metrics.json").read_text())
    print(f"metrics.json: {len(metrics)} keys; seconds_model_stages {metrics['seconds_model_stages']:.1f}, "
          f"seconds_tensor_stages {metrics['seconds_tensor_stages']:.1f}")
    print("model stayed on CUDA through every model stage:", "yes" if ok else "NO")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
