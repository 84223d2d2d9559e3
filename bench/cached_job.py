"""A job whose features, readout and fits are cached: this checkout against an older commit, and against
loading the model alone (DePALM-mini), side by side.

A sweep job whose features are cached must load no model weights, and a job whose fits are cached too
(a report re-run, a metrics change) must take seconds. This bench fills the caches once (the default
`make run` settings, or fewer images with --n-train/--n-test), then times, each in a fresh process
(imports included), `--repeats` times, interleaved:

    cached job (after)    `coxlmm <settings>` from this checkout: features, readout and fits cached
    cached job (before)   the same command from commit `--before` (e.g. the commit before the fit cache)
    model load            `load_depalm_mini()` and nothing else

    python bench/cached_job.py [--n-train 9000 --n-test 1300] [--repeats 3] [--before REV] [--logger default]

Run it on a quiet machine (the load average is printed): two torch processes on 2 cores slow each
other down far more than 2x.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from jobs import load_line, run, source_tree  # noqa: E402

LOAD = "from coxlmm.models.depalm_mini import load_depalm_mini; load_depalm_mini()"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-train", type=int, default=9000)
    ap.add_argument("--n-test", type=int, default=1300)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--before", default=None, help="a commit to compare with (git rev), e.g. the one before a change")
    ap.add_argument("--logger", default="default", help="default (W&B offline + CSV, as make run), none, ...")
    args = ap.parse_args()
    settings = [f"data.n_train={args.n_train}", f"data.n_test={args.n_test}", f"logger={args.logger}",
                "print_summary=false"]
    trees = {"after": source_tree(None)}
    if args.before:
        trees["before"] = source_tree(args.before)
    print(load_line())
    for name, src in trees.items():  # fills the caches when empty (features once; fits for `after`)
        seconds, _ = run(src, *settings, f"hydra.run.dir=outputs/bench/cached_job_{name}")
        print(f"first job ({name}; fills the caches when empty): {seconds:.1f} s")
    times: dict[str, list[float]] = {name: [] for name in trees} | {"model load": []}
    for _ in range(args.repeats):
        for name, src in trees.items():
            seconds, log = run(src, *settings, f"hydra.run.dir=outputs/bench/cached_job_{name}")
            if "loading model" in log:
                sys.exit(f"the cached job ({name}) loaded the model: the feature cache was not used")
            if name == "after" and "fit: " in log:
                sys.exit("the cached job refitted a dictionary: the fit cache was not used")
            times[name].append(seconds)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", LOAD], check=True, capture_output=True,
                       env={**os.environ, "PYTHONPATH": str(trees["after"])})
        times["model load"].append(time.perf_counter() - t0)
    median = {name: statistics.median(ts) for name, ts in times.items()}
    for name, ts in times.items():
        print(f"{name:>20} (median of {args.repeats}): {median[name]:5.1f} s   [{', '.join(f'{x:.1f}' for x in ts)}]")
    if "before" in median:
        print(f"cached job after / before: {median['after'] / median['before']:.2f} "
              f"({median['before']:.1f} s -> {median['after']:.1f} s; target <= 5 s)")
    print(f"cached job / model load: {median['after'] / median['model load']:.2f} (target < 1)")
    print(load_line())


if __name__ == "__main__":
    main()
