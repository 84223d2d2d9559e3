"""Three cached jobs at once against the same three one after another (DePALM-mini, token circle, Semi-NMF).

The jobs differ by seed (0, 1, 2); their features, readout and fits are cached by a first pass. Each job
sizes its threads from the CPUs it is given, divided among the jobs its launcher runs at once
(coxlmm/threads.py). Timed, each from the first process's start to the last one's end:

    in a row             3 `coxlmm seed=<s>` processes, one after another (each takes every CPU)
    at once, one sweep   `coxlmm -m seed=0,1,2 hydra/launcher=joblib hydra.launcher.n_jobs=3` (1 thread each
                         on 2 CPUs: the budget divides them)
    at once, apart       3 `coxlmm seed=<s>` processes started together with no launcher between them (each
                         takes every CPU: what several users' jobs on one workstation do), and the same with
                         `threads=1`
    before (--before)    the last two rows from an older commit (without the thread budget)

and prints each against "in a row" (the issue's bar: 3 at once within 2x of 3 in a row).

    python bench/concurrent_jobs.py [--n-train 9000 --n-test 1300] [--before REV]

Run it on a quiet machine (the load average is printed).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from jobs import load_line, run, run_at_once, source_tree  # noqa: E402

SEEDS = (0, 1, 2)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-train", type=int, default=9000)
    ap.add_argument("--n-test", type=int, default=1300)
    ap.add_argument("--before", default=None, help="a commit to compare with (git rev)")
    ap.add_argument("--logger", default="default")
    args = ap.parse_args()
    settings = [f"data.n_train={args.n_train}", f"data.n_test={args.n_test}", f"logger={args.logger}",
                "print_summary=false"]
    after = source_tree(None)
    out = "outputs/bench/concurrent"

    def job(seed: int, *extra: str) -> list[str]:
        return [*settings, f"seed={seed}", *extra, f"hydra.run.dir={out}/seed{seed}"]

    print(load_line())
    for s in SEEDS:  # fills the caches (features once, each seed's fits)
        run(after, *job(s))
    rows: dict[str, float] = {}
    t0 = time.perf_counter()
    for s in SEEDS:
        run(after, *job(s))
    rows["in a row"] = time.perf_counter() - t0
    seconds, _ = run(after, *settings, "seed=0,1,2", "hydra/launcher=joblib", "hydra.launcher.n_jobs=3",
                     f"hydra.sweep.dir={out}/sweep", multirun=True)
    rows["at once, one sweep (joblib n_jobs=3)"] = seconds
    rows["at once, apart"] = run_at_once([(after, job(s)) for s in SEEDS])
    rows["at once, apart, threads=1"] = run_at_once([(after, job(s, "threads=1")) for s in SEEDS])
    if args.before:
        before = source_tree(args.before)
        t0 = time.perf_counter()
        for s in SEEDS:
            run(before, *job(s))
        rows[f"before ({args.before}): in a row"] = time.perf_counter() - t0
        rows[f"before ({args.before}): at once, apart"] = run_at_once([(before, job(s)) for s in SEEDS])
    base = rows["in a row"]
    for name, seconds in rows.items():
        print(f"{name:>45}: {seconds:6.1f} s   x{seconds / base:.2f} of in a row")
    print("bar: 3 at once within 2x of 3 in a row")
    print(load_line())


if __name__ == "__main__":
    main()
