"""GPU check of the model stages and GPU throughput (run it once on a CUDA machine; it skips cleanly,
exit 0, without CUDA).

On the tiny LLaVA (built on the fly), with `trainer=gpu`:
1. every model stage in turn (extraction of train and test, the noise source of both), checking after
   each that the model's parameters are still on CUDA (Lightning's teardown moves the LightningModule
   to the CPU after `predict`; the model must not be part of it);
2. the whole CLI with `trainer=gpu metrics=paper scorer=embedded` (dictionaries and scorers on
   `device=cuda`), and its metrics.json;
and prints each stage's time and device. Then the throughput:
3. extraction: greedy captioning of world images by DePALM-mini (the tiny LLaVA when DePALM-mini's weight
   packages are missing), `trainer=gpu` (bf16), batch 64: images captioned/s and selected samples/s, with
   the GPU's utilisation sampled during the stage (torch.cuda.utilization, else nvidia-smi);
4. the TopK SAE trainer (`method=topk_sae`, its public class through the method config) on synthetic
   features, d = 4096, width 16,384, k = 32, batch 4096, bf16-mixed: training samples/s, measured as the
   difference between a 1-epoch and a 4-epoch fit (start-up and the final encode cancel); the bar, from
   SAELens' synthetic tutorial, is >= 150k samples/s on one H100.

    python bench/gpu_check.py [--images 1024] [--sae-rows 131072] [--skip-cli]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")


def devices(lmm) -> set[str]:
    return {str(p.device) for p in lmm.parameters()}


SAE_BAR = 150_000  # samples/s on one H100 (SAELens' synthetic-data tutorial)


class GPUUtilisation:
    """Samples the GPU's utilisation (%) every `every_s` in a thread while the `with` body runs."""

    def __init__(self, every_s: float = 0.2):
        self.every_s, self.samples = every_s, []
        self._stop = threading.Event()

    @staticmethod
    def read() -> float | None:
        import torch

        try:
            return float(torch.cuda.utilization())  # needs pynvml
        except Exception:  # noqa: BLE001 - fall back on nvidia-smi
            pass
        if shutil.which("nvidia-smi") is None:
            return None
        out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-i",
                              "0"], capture_output=True, text=True)
        try:
            return float(out.stdout.strip().splitlines()[0])
        except (ValueError, IndexError):
            return None

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            value = self.read()
            if value is not None:
                self.samples.append(value)

    def __enter__(self) -> "GPUUtilisation":
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> str:
        if not self.samples:
            return "GPU utilisation: not readable (no pynvml, no nvidia-smi)"
        mean = sum(self.samples) / len(self.samples)
        return f"GPU utilisation mean {mean:.0f} %, max {max(self.samples):.0f} % ({len(self.samples)} samples)"


def extraction_throughput(tmp: Path, n_images: int, fallback_model_dir: Path, word: str) -> None:
    """Images captioned/s and selected samples/s of one extraction stage on the GPU."""
    from coxlmm.extraction import ExtractionSettings, extract

    trainer = {"accelerator": "gpu", "devices": 1, "precision": "bf16-mixed", "enable_progress_bar": False}
    try:
        from coxlmm.data.shapes import ShapesWorld
        from coxlmm.models.depalm_mini import load_depalm_mini

        lmm, what = load_depalm_mini(), "DePALM-mini"
        ds, token = ShapesWorld(split="train", n_train=n_images), "circle"
    except Exception as e:  # noqa: BLE001 - the weight packages are not installed: the tiny LLaVA
        from coxlmm.data.folder import ImageFolderCaptions
        from coxlmm.models.hf import HFVisionLM
        from tests.extraction.conftest import make_folder_dataset

        print(f"  (DePALM-mini unavailable: {type(e).__name__}: {e}; timing the tiny LLaVA)")
        lmm, what, token = HFVisionLM(name_or_path=str(fallback_model_dir)), "tiny LLaVA", word
        ds = ImageFolderCaptions(str(make_folder_dataset(tmp / "throughput_data", n_train=n_images, n_test=0,
                                                         words=(word,))), split="train")
    s = ExtractionSettings(batch_size=64, max_new_tokens=50, require_gt=False)
    warm = ExtractionSettings(batch_size=64, max_new_tokens=50, require_gt=False, max_samples=64)
    extract(lmm, ds, token, [-1], warm, str(tmp / "warm"), trainer)  # CUDA context, kernels, first transfer
    with GPUUtilisation() as util:
        t0 = time.perf_counter()
        store = extract(lmm, ds, token, [-1], s, str(tmp / "throughput"), trainer)
        seconds = time.perf_counter() - t0
    m = store.manifest()
    print(f"extraction throughput ({what}, {m['n_extracted']} images, batch 64, bf16): "
          f"{m['n_extracted'] / seconds:.1f} images captioned/s, {m['counts'].get('selected', 0) / seconds:.1f} "
          f"selected samples/s ({seconds:.1f} s); {util.summary()}")


def sae_throughput(rows: int) -> bool:
    """Training samples/s of the TopK SAE (d 4096, width 16k, k 32, bf16): >= SAE_BAR?"""
    import torch

    from coxlmm.concepts import build_dictionary

    d, width, k, batch = 4096, 16384, 32, 4096
    Z = torch.randn(rows, d, generator=torch.Generator().manual_seed(0))
    trainer = {"accelerator": "gpu", "precision": "bf16-mixed"}

    def fit(epochs: int) -> float:
        sae = build_dictionary("topk_sae", n_concepts=width, k=k, max_epochs=epochs, batch_size=batch, device="cuda",
                               trainer=trainer)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        sae.fit(Z)
        torch.cuda.synchronize()
        return time.perf_counter() - t0

    fit(1)  # warm-up: CUDA context, kernels
    with GPUUtilisation() as util:
        one, four = fit(1), fit(4)
    rate = 3 * rows / max(four - one, 1e-9)
    ok = rate >= SAE_BAR
    print(f"TopK SAE training (d {d}, width {width}, k {k}, batch {batch}, bf16-mixed, {rows} rows): 1 epoch "
          f"{one:.2f} s, 4 epochs {four:.2f} s -> {rate:,.0f} samples/s (bar {SAE_BAR:,}: "
          f"{'met' if ok else 'NOT met'}); {util.summary()}")
    return ok


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=1024, help="world images captioned in the throughput stage")
    ap.add_argument("--sae-rows", type=int, default=131072, help="synthetic feature rows of the SAE benchmark")
    ap.add_argument("--skip-cli", action="store_true", help="skip the end-to-end CLI run")
    args = ap.parse_args()
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

    if args.skip_cli:
        return finish(ok, tmp, model_dir, word, args)
    run = tmp / "run"
    cmd = [sys.executable, "-m", "coxlmm", "trainer=gpu", "model=hf", f"model.name_or_path={model_dir}", "data=folder",
           f"data.root={data}", f"token={word}", "extraction.max_new_tokens=20", "metrics=paper", "scorer=embedded",
           "method.n_concepts=5", "logger=csv", f"paths.cache_dir={tmp / 'cli_cache'}", f"hydra.run.dir={run}"]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    print(f"CLI trainer=gpu metrics=paper: exit {out.returncode} in {time.perf_counter() - t0:.1f} s")
    for line in out.stdout.splitlines() + out.stderr.splitlines():
        words = ("extraction", "noise source", "metric", "fit", "report", "thread budget")
        if "][INFO] - " in line and any(w in line for w in words):
            print("   ", line.split("][INFO] - ", 1)[1])
    if out.returncode != 0:
        print(out.stderr[-3000:])
        return 1
    metrics = json.loads((run / "metrics.json").read_text())
    print(f"metrics.json: {len(metrics)} keys; seconds_model_stages {metrics['seconds_model_stages']:.1f}, "
          f"seconds_tensor_stages {metrics['seconds_tensor_stages']:.1f}")
    return finish(ok, tmp, model_dir, word, args)


def finish(ok: bool, tmp: Path, model_dir: Path, word: str, args) -> int:
    print("model stayed on CUDA through every model stage:", "yes" if ok else "NO")
    extraction_throughput(tmp, args.images, model_dir, word)
    sae_throughput(args.sae_rows)  # a bar to read, not a failure of the check
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
