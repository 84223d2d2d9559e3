"""bench/gpu_check.py on a machine without CUDA: a clean skip (exit 0, says so), nothing else run."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_skips_cleanly_without_cuda():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU visible, even on a GPU machine
    out = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py")], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "no CUDA device here" in out.stdout and "skipped" in out.stdout
    assert "Traceback" not in out.stderr
