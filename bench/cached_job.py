"""A job over cached features against loading the model alone (DePALM-mini), side by side.

A sweep job whose features are cached must load no model weights (issue: "the path real users
take"): its whole wall time should be below the time it takes just to load the model. This bench
fills the cache once (the default `make run` settings, or fewer images with --n-train/--n-test),
then times, each in a fresh process (imports included):

    cached job   `coxlmm <settings>` with every feature cached (logger off, figures on, report on)
    model load   `load_depalm_mini()` and nothing else

    python bench/cached_job.py [--n-train 9000 --n-test 1300] [--repeats 3]

Run it on a quiet machine: two torch processes on 2 cores slow each other down far more than 2x.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
LOAD = "from coxlmm.models.depalm_mini import load_depalm_mini; load_depalm_mini()"


def timed(cmd: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{out.stderr[-3000:]}")
    return time.perf_counter() - t0, out.stdout + out.stderr


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-train", type=int, default=9000)
    ap.add_argument("--n-test", type=int, default=1300)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    job = [sys.executable, "-m", "coxlmm", f"data.n_train={args.n_train}", f"data.n_test={args.n_test}",
           "logger=none", "print_summary=false", "hydra.run.dir=outputs/bench/cached_job"]
    seconds, log = timed(job)  # fills the cache if needed
    print(f"first job (fills the cache when empty): {seconds:.1f} s")
    jobs, loads = [], []
    for _ in range(args.repeats):
        s, log = timed(job)
        if "loading model" in log:
            sys.exit("the cached job loaded the model: the feature cache was not used")
        jobs.append(s)
        loads.append(timed([sys.executable, "-c", LOAD])[0])
    j, m = statistics.median(jobs), statistics.median(loads)
    print(f"cached job (median of {args.repeats}): {j:.1f} s   [{', '.join(f'{x:.1f}' for x in jobs)}]")
    print(f"model load alone (median of {args.repeats}): {m:.1f} s   [{', '.join(f'{x:.1f}' for x in loads)}]")
    print(f"cached job / model load: {j / m:.2f} (target < 1)")


if __name__ == "__main__":
    main()
