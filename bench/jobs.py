"""Helpers of the job benchmarks (cached_job.py, concurrent_jobs.py): run `coxlmm` jobs from this checkout or
from an older commit, timed, each in a fresh process (imports included)."""

from __future__ import annotations

import atexit
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def source_tree(rev: str | None) -> Path:
    """`src/` of this checkout, or of commit `rev` (exported once to a temporary folder with `git archive`)."""
    if rev is None:
        return REPO / "src"
    out = Path(tempfile.mkdtemp(prefix=f"coxlmm-{rev[:10]}-"))
    atexit.register(shutil.rmtree, out, True)
    archive = subprocess.run(["git", "archive", "--format=tar", rev, "src", "conf"], cwd=REPO, capture_output=True,
                             check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(out, filter="tar")
    return out / "src"


def command(src: Path, *overrides: str, multirun: bool = False) -> tuple[list[str], dict[str, str]]:
    env = {**ENV, "PYTHONPATH": str(src)}
    return [sys.executable, "-m", "coxlmm", *(["-m"] if multirun else []), *overrides], env


def run(src: Path, *overrides: str, multirun: bool = False) -> tuple[float, str]:
    """(seconds, log) of one `coxlmm` process; exits on failure."""
    cmd, env = command(src, *overrides, multirun=multirun)
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{out.stderr[-3000:]}")
    return time.perf_counter() - t0, out.stdout + out.stderr


def run_at_once(jobs: list[tuple[Path, list[str]]]) -> float:
    """Seconds until every one of several `coxlmm` processes, started together, has finished."""
    t0 = time.perf_counter()
    procs = []
    for src, overrides in jobs:
        cmd, env = command(src, *overrides)
        procs.append((cmd, subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.PIPE, text=True)))
    for cmd, p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            sys.exit(f"failed: {' '.join(cmd)}\n{err[-3000:]}")
    return time.perf_counter() - t0


def load_line() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg()) + f" on {os.cpu_count()} CPUs"
