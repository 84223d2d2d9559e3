"""OpenMP's wait policy on a shared machine: a Semi-NMF fit with 1 thread, 2 threads spinning (OpenMP's default)
and 2 threads sleeping (`OMP_WAIT_POLICY=PASSIVE`, which the CLI sets), each in a fresh process (the policy is
read when torch loads OpenMP). Z (2129, 576) random, K = 20, 100 iterations.

    python bench/wait_policy.py [--iters 100] [--busy 2] [--limit 120]

First on the machine as it is, then beside `--busy` CPU-bound busy loops (what other jobs or users do to a
shared machine): spinning threads fight them for the cores. A fit still running after `--limit` seconds
is stopped and shown as "> limit". The load average is printed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

FIT = """
import sys, time, torch
from coxlmm.concepts import build_dictionary
torch.set_num_threads(int(sys.argv[1]))
Z = torch.randn(2129, 576, generator=torch.Generator().manual_seed(0)) + 3
d = build_dictionary("semi_nmf", n_concepts=20, max_iter=int(sys.argv[2]), tol=0.0)
t0 = time.perf_counter()
d.fit(Z)
print(f"{time.perf_counter() - t0:.2f}")
"""


def fits(iters: int, limit: float) -> None:
    for threads, policy in ((1, None), (2, None), (2, "PASSIVE")):
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
        if policy:
            env["OMP_WAIT_POLICY"] = policy
        try:
            out = subprocess.run([sys.executable, "-c", FIT, str(threads), str(iters)], env=env, capture_output=True,
                                 text=True, check=True, timeout=limit).stdout.strip()
        except subprocess.TimeoutExpired:
            out = f"> {limit:.0f}"
        print(f"  {threads} thread(s), OMP_WAIT_POLICY={policy or '(unset: spin)'}: {out} s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--busy", type=int, default=2, help="CPU-bound busy loops beside the second round")
    ap.add_argument("--limit", type=float, default=120.0)
    args = ap.parse_args()
    print("as the machine is; load average " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    fits(args.iters, args.limit)
    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    try:
        print(f"beside {args.busy} busy loops")
        fits(args.iters, args.limit)
    finally:
        for p in loops:
            p.kill()
            p.wait()
    print("load average " + " ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
