"""Semi-NMF at scale: online Semi-NMF (memory bounded by the batch) against the exact in-memory solver.

    python bench/semi_nmf_scale.py --part small     # objective vs the exact solver, seconds
    python bench/semi_nmf_scale.py --part 200k      # K = 256 on 200,000 x 128 (minutes)
    python bench/semi_nmf_scale.py --part 7b        # K = 256 on 50,000 x 4096, a 7B layer (minutes)

Both minimise ½‖Z − V U‖²_F + α‖V‖₁, V >= 0, ‖u_k‖ <= 1 (`concepts/semi_nmf.py`). `small`: on
problems the exact solver handles (the LLM-like features of bench/semi_nmf_vs_sklearn.py, and
sparse planted features), the objective of the online solver with each V-step (exact, FISTA)
divided by the exact solver's, and both times. `200k` / `7b`: sparse planted features
(`metrics.planted.planted_features`: 1,024 unit directions, about 8 active per row, a common
offset), K = 256, α = 0.1, batch 4,096, the default `v_solver: auto` (FISTA at K = 256), at most
`--passes` passes: wall time, passes, time per pass, the final objective, and the peak resident
memory of the fit above what the process held before it (VmHWM reset before the fit, large buffers
mmapped so that freed ones leave: run with MALLOC_MMAP_THRESHOLD_=1048576, as `main` re-executes
itself), next to the size of Z and the size of what the exact solver would hold (its M × M or
(M, |F|, |F|) systems). One thread.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from coxlmm.concepts.lasso import lasso_objective, nonneg_lasso
from coxlmm.concepts.semi_nmf import SemiNMF
from coxlmm.metrics.planted import planted_features

sys.path.insert(0, os.path.dirname(__file__))
from semi_nmf_vs_sklearn import realistic_features  # noqa: E402


def rss(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
    return 0


def small() -> None:
    cases = [("LLM-like 2000 x 256, K = 20, alpha = 1", realistic_features(2000, 256), 20, 1.0),
             ("planted 4000 x 128, K = 64, alpha = 0.1",
              planted_features(M=4000, B=128, T=256, p_fire=8 / 256, offset=1.0, seed=0)[0], 64, 0.1)]
    for label, Z, K, alpha in cases:
        t = time.perf_counter()
        exact = SemiNMF(K, alpha=alpha).fit(Z)
        t_exact = time.perf_counter() - t
        f_exact = lasso_objective(Z, exact.V_train, exact.U, alpha)
        print(f"{label}: exact in-memory solver {t_exact:.1f} s, objective {f_exact:.6g}")
        for v_solver in ("exact", "fista"):
            t = time.perf_counter()
            d = SemiNMF(K, alpha=alpha, batch_size=500, v_solver=v_solver, passes=20).fit(Z)
            sec = time.perf_counter() - t
            f = lasso_objective(Z, d.V_train, d.U, alpha)
            # the codes of the online fit's atoms, solved exactly: the atoms' own quality
            f_exact_codes = lasso_objective(Z, nonneg_lasso(Z.double(), d.U.double(), alpha), d.U, alpha)
            print(f"  online, batch 500, V-step {v_solver:<5}: {sec:6.1f} s, {d.n_iter_:2d} passes, objective "
                  f"{f:.6g} = {f / f_exact:.4f} x exact (with exact codes: {f_exact_codes / f_exact:.4f} x)", flush=True)


def at_scale(M: int, B: int, passes: int, batch: int) -> None:
    Z = planted_features(M=M, B=B, T=1024, p_fire=8 / 1024, offset=1.0, seed=0)[0]
    K, alpha = 256, 0.1
    d = SemiNMF(K, alpha=alpha, batch_size=batch, passes=passes)
    open("/proc/self/clear_refs", "w").write("5")
    base = rss("VmRSS:")
    t = time.perf_counter()
    d.fit_stream(Z)  # Z read block by block as from a store; no V_train (M x K) is formed
    sec = time.perf_counter() - t
    peak = rss("VmHWM:") - base
    print(f"Z {M} x {B} ({Z.numel() * 4 / 2**20:.0f} MB), K = {K}, alpha = {alpha}, batch {batch}, "
          f"V-step {d.v_step}: {sec:.0f} s for {d.n_iter_} passes ({sec / d.n_iter_:.1f} s per pass), "
          f"objective per pass {[f'{f:.5g}' for f in d.objective_]}; "
          f"peak memory above the baseline {peak / 2**20:.0f} MB "
          f"(the exact solver's BPP would gather (M, |F|, |F|) systems: {M * 64 * 64 * 8 / 2**30:.1f} GB at "
          f"|F| = 64); load average {os.getloadavg()[0]:.2f}", flush=True)


def main() -> None:
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:  # see the module doc
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 20)})
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=["small", "200k", "7b"], default="small")
    ap.add_argument("--passes", type=int, default=10)
    ap.add_argument("--batch", type=int, default=4096)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, load average {os.getloadavg()[0]:.2f}", flush=True)
    if args.part == "small":
        small()
    elif args.part == "200k":
        at_scale(200_000, 128, args.passes, args.batch)
    else:
        at_scale(50_000, 4096, args.passes, args.batch)


if __name__ == "__main__":
    main()
