"""Semi-NMF: coxlmm's torch solver against the reference code's scikit-learn solver, same run.

    python bench/semi_nmf_vs_sklearn.py            # Z of 2000 × 4096, K = 20 (sklearn: minutes)
    python bench/semi_nmf_vs_sklearn.py --quick    # Z of 500 × 512, seconds

Both minimise ½‖Z − V U‖²_F + α‖V‖₁ with V >= 0, ‖u_k‖ <= 1, α = 1. The reference is
`DictionaryLearning(n_components=K, alpha=1.0, positive_code=True, fit_algorithm="cd",
transform_algorithm="lasso_cd", max_iter=5000, tol=1e-8, random_state=0)`, as in the paper's code.
Both objectives are computed here, in float64, from the returned (V, U): for scikit-learn the
codes of `fit_transform` and `components_` (its own last `error_`), and, for information, the
codes of a fresh `transform(Z)`. Targets (issue 3): our objective <= 1.001 × the reference's, in
at least 50× less wall time. Both solvers run with the same number of CPU threads (`--threads`,
torch and BLAS alike); 1 is the fastest setting for both on a shared 2-core machine. When CUDA is
available our solver is also timed on the GPU. Our solver is timed `--repeats` times and its
fastest run is reported (the reference, minutes long, runs once): on a machine shared with other
jobs the spread is large, and every run is printed.

The speed-up moves with the reference's speed on a shared machine, so the comparison is made
`--runs` times (5 by default; each run: our fastest of `--repeats` fits, then one reference fit)
and the median of the per-run ratios is reported beside every ratio.

After the timed fits, one more fit runs with every part of the solver wrapped in a timer and
prints where an iteration's time goes (V-step, U-step, the products with Z, the fixed costs),
and the floor of an iteration on this machine, measured in the same run: an iteration must read
the (M, M) Gram matrix H once (PM = P H, a K-row product; the atoms' image XM is updated atom by
atom; feature space: Z twice) and do 2 K M² flops there, so its floor is the larger of those bytes over the
measured copy bandwidth and those flops over the measured float64 matmul rate. The report says
how far the measured iteration is above that floor and which part holds the rest.

Z mimics LLM hidden states (all with a fixed seed): a sparse non-negative mixture of 40 unit
directions (about 3 active per sample, exponential weights), a large offset shared by every
sample, a few outlier dimensions of huge magnitude, and isotropic noise.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from collections import defaultdict
from contextlib import contextmanager

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from coxlmm.concepts.semi_nmf import SemiNMF


def realistic_features(M: int, B: int, n_directions: int = 40, seed: int = 0) -> torch.Tensor:
    """Z (M, B) float32 with the structure of LLM hidden states (see module docstring)."""
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    D = torch.randn(n_directions, B, generator=g, dtype=f64)
    D /= D.norm(dim=1, keepdim=True)
    active = torch.rand(M, n_directions, generator=g, dtype=f64) < 3 / n_directions
    W = active * (-torch.rand(M, n_directions, generator=g, dtype=f64).log()) * 10.0
    offset = torch.randn(B, generator=g, dtype=f64)
    offset *= 50.0 / offset.norm()  # the common direction, larger than any sample's own signal
    Z = W @ D + offset + 0.3 * torch.randn(M, B, generator=g, dtype=f64)
    outlier_dims = torch.randperm(B, generator=g)[:4]
    scale = torch.tensor([60.0, -40.0, 30.0, 80.0], dtype=f64)  # "massive activations"
    Z[:, outlier_dims] += scale * (1 + 0.05 * torch.randn(M, 1, generator=g, dtype=f64))
    return Z.float()


def objective(Z: np.ndarray, V: np.ndarray, U: np.ndarray, alpha: float) -> float:
    """½‖Z − V U‖²_F + α‖V‖₁ in float64."""
    Z, V, U = (np.asarray(a, dtype=np.float64) for a in (Z, V, U))
    return float(0.5 * ((Z - V @ U) ** 2).sum() + alpha * np.abs(V).sum())


def time_ours(Z: torch.Tensor, K: int, alpha: float, device: str, repeats: int
              ) -> tuple[list[float], SemiNMF]:
    """Wall times of `repeats` fits (after a small warm-up fit) and the last fitted model."""
    SemiNMF(K, alpha=alpha, device=device, max_iter=3).fit(Z[: 4 * K])  # warm-up (kernels, caches)
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        d = SemiNMF(K, alpha=alpha, device=device).fit(Z)  # fit returns U, V_train on the CPU
        times.append(time.perf_counter() - t)
    return times, d


@contextmanager
def timed_parts():
    """Wall time spent in each part of the Semi-NMF solver during the fits inside the block:
    the solver's functions are wrapped with timers (module attributes, restored afterwards)."""
    import coxlmm.concepts.semi_nmf as sn

    parts: dict[str, float] = defaultdict(float)
    targets = [  # (owner, attribute, label)
        (sn._Space, "__init__", "Gram matrix Z Zᵀ or Zᵀ Z (once per fit)"),
        (sn._Space, "svd_init", "SVD initialisation (top eigenpairs, once)"),
        (sn._Space, "data", "C = Z Uᵀ from the metric image (W XMᵀ)"),
        (sn._Space, "targets", "P = Vᵀ W and PM = P H, (K, r) x (r, r)"),
        (sn, "nonneg_quadratic", "V-step: exact non-negative lasso (BPP)"),
        (sn, "_update_atoms", "U-step: one sweep over the K atoms"),
        (sn, "nonneg_lasso", "final V-step on Z (Z Uᵀ + BPP)"),
    ]
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in targets]

    def wrap(fn, label):
        def timed(*args, **kwargs):
            t = time.perf_counter()
            out = fn(*args, **kwargs)
            parts[label] += time.perf_counter() - t
            return out
        return timed

    for (owner, name, label), (_, _, fn) in zip(targets, saved):
        setattr(owner, name, wrap(fn, label))
    try:
        yield parts
    finally:
        for owner, name, fn in saved:
            setattr(owner, name, fn)


def profile_ours(Z: torch.Tensor, K: int, alpha: float) -> None:
    """One more fit with every part of the solver timed; prints ms per iteration per part and the
    iteration's floor on this machine (see the module doc)."""
    with timed_parts() as parts:
        t = time.perf_counter()
        d = SemiNMF(K, alpha=alpha).fit(Z)
        total = time.perf_counter() - t
    n = d.n_iter_
    print(f"profile of one fit ({total:.2f} s, {n} iterations, {1e3 * total / n:.1f} ms per iteration "
          "on average; timers add a little):")
    for label, sec in sorted(parts.items(), key=lambda kv: -kv[1]):
        print(f"  {1e3 * sec:9.1f} ms  {100 * sec / total:5.1f} %  {1e3 * sec / n:7.2f} ms/it  {label}")
    rest = total - sum(parts.values())
    print(f"  {1e3 * rest:9.1f} ms  {100 * rest / total:5.1f} %  {1e3 * rest / n:7.2f} ms/it  "
          "the rest (objective, extrapolation, bookkeeping)", flush=True)
    once = [k for k in parts if "once" in k or "final" in k]
    per_it = (total - sum(parts[k] for k in once)) / n
    bandwidth, flops = machine_rates()
    floor, bound = iteration_floor(*Z.shape, K, bandwidth, flops)
    print(f"one iteration: {1e3 * per_it:.2f} ms measured (the fit less its once-per-fit parts) against a floor of "
          f"{1e3 * floor:.2f} ms, {per_it / floor:.1f}x the floor; the floor is {bound}")
    steps = {k: parts[k] / n for k in parts if k not in once}
    worst = max(steps, key=steps.get)
    print(f"  above the floor: {worst}: {1e3 * steps[worst]:.2f} ms/it; the products with H "
          f"(C from XM, P H): {1e3 * sum(v for k, v in steps.items() if 'P = ' in k or 'C = ' in k):.2f} ms/it", flush=True)


def run_reference(Z64: np.ndarray, K: int, alpha: float) -> tuple[float, float]:
    """Fit the paper's scikit-learn solver; its wall time and objective (printed)."""
    from sklearn.decomposition import DictionaryLearning

    ref = DictionaryLearning(n_components=K, alpha=alpha, positive_code=True, fit_algorithm="cd",
                             transform_algorithm="lasso_cd", max_iter=5000, tol=1e-8,
                             random_state=0)
    with warnings.catch_warnings():  # its inner lasso warns about convergence, a lot
        warnings.simplefilter("ignore")
        t = time.perf_counter()
        V_ref = ref.fit_transform(Z64)
        t_ref = time.perf_counter() - t
        f_ref = objective(Z64, V_ref, ref.components_, alpha)
        f_ref_transform = objective(Z64, ref.transform(Z64), ref.components_, alpha)
    print(f"sklearn DictionaryLearning: {t_ref:8.2f} s  {ref.n_iter_:5d} iterations  "
          f"objective {f_ref:.6f} (fit_transform codes; with transform(Z) codes: "
          f"{f_ref_transform:.6f})", flush=True)
    return t_ref, f_ref


def machine_rates() -> tuple[float, float]:
    """(memory bandwidth in bytes/s, float64 matmul rate in flop/s) of one thread, measured now:
    the best of 3 copies of a 256 MB tensor (read + write) and of 3 products of 1024² matrices."""
    src, dst = torch.empty(32 * 2**20, dtype=torch.float64), torch.empty(32 * 2**20, dtype=torch.float64)
    src.fill_(1.0)
    dst.fill_(0.0)
    best_copy = min(_timed(lambda: dst.copy_(src)) for _ in range(3))
    a = torch.randn(1024, 1024, dtype=torch.float64)
    best_mm = min(_timed(lambda: a @ a) for _ in range(3))
    return 2 * src.numel() * 8 / best_copy, 2 * 1024**3 / best_mm


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def iteration_floor(M: int, B: int, K: int, bandwidth: float, flops: float) -> tuple[float, str]:
    """The least time of one iteration (seconds) and what bounds it (see the module doc)."""
    r = min(M, B)  # the solver's coordinates: sample space (H = Z Zᵀ, M x M) when M <= B
    # One product with H per iteration (PM = P H; the atoms' image XM is updated atom by atom in the
    # U-step); in feature space, Z is read twice (C = Z Uᵀ and P = Vᵀ Z).
    n_read = r * r * 8 if M <= B else 2 * M * B * 8
    n_flop = 2 * K * r * r if M <= B else 2 * 2 * K * M * B
    t_mem, t_flop = n_read / bandwidth, n_flop / flops
    return max(t_mem, t_flop), ("memory" if t_mem >= t_flop else "compute") + \
        f" ({n_read / 2**20:.0f} MB read at {bandwidth / 1e9:.1f} GB/s = {1e3 * t_mem:.2f} ms; " \
        f"{n_flop / 1e9:.2f} GFlop at {flops / 1e9:.1f} GFlop/s = {1e3 * t_flop:.2f} ms)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="Z of 500 × 512 instead of 2000 × 4096")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads for both solvers")
    ap.add_argument("--n-concepts", type=int, default=20)
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--no-reference", action="store_true",
                    help="skip scikit-learn (e.g. a GPU check): only our timings and objectives")
    ap.add_argument("--repeats", type=int, default=3,
                    help="fits of our solver per run (its time = the fastest; the machine is shared)")
    ap.add_argument("--runs", type=int, default=5,
                    help="paired runs (ours, then the reference); the median of their speed-ups is reported")
    args = ap.parse_args()
    M, B = (500, 512) if args.quick else (2000, 4096)
    K, alpha = args.n_concepts, args.alpha
    Z = realistic_features(M, B)
    Z64 = Z.double().numpy()
    torch.set_num_threads(args.threads)
    print(f"Z: {M} x {B} (mean row norm {Z.norm(dim=1).mean():.1f}), K={K}, alpha={alpha}, "
          f"threads={args.threads}, torch {torch.__version__}", flush=True)

    with threadpool_limits(args.threads):
        ratios, t_ref, f_ref = [], None, None
        for run in range(1 if args.no_reference else args.runs):
            times, d = time_ours(Z, K, alpha, "cpu", args.repeats)
            t_ours = min(times)
            f_ours = objective(Z64, d.V_train.numpy(), d.U.numpy(), alpha)
            print(f"run {run + 1}: coxlmm semi_nmf (cpu): {t_ours:8.2f} s  {d.n_iter_:5d} iterations  "
                  f"objective {f_ours:.6f}  (fastest of {', '.join(f'{t:.2f}' for t in times)} s)", flush=True)
            if not args.no_reference:
                t_ref, f_ref = run_reference(Z64, K, alpha)
                ratios.append(t_ref / t_ours)
                print(f"run {run + 1}: speed-up sklearn/ours {ratios[-1]:.1f}x", flush=True)
        profile_ours(Z, K, alpha)
    if not args.no_reference:
        ratio = f_ours / f_ref
        median = float(np.median(ratios))
        print(f"objective ratio ours/sklearn: {ratio:.7f}  (target <= 1.001: "
              f"{'met' if ratio <= 1.001 else 'NOT met'})")
        print(f"speed-up sklearn/ours (cpu), {len(ratios)} runs: {', '.join(f'{r:.1f}x' for r in ratios)}; "
              f"median {median:.1f}x, lowest {min(ratios):.1f}x (target >= 50x on every run: "
              f"{'met' if min(ratios) >= 50 else 'NOT met'}); load average {os.getloadavg()[0]:.2f}")

    if torch.cuda.is_available():
        times_gpu, d_gpu = time_ours(Z, K, alpha, "cuda", args.repeats)
        t_gpu = min(times_gpu)
        f_gpu = objective(Z64, d_gpu.V_train.numpy(), d_gpu.U.numpy(), alpha)
        vs = (f"ratio to sklearn {f_gpu / f_ref:.7f}, speed-up vs sklearn {t_ref / t_gpu:.0f}x"
              if not args.no_reference else f"ratio to our cpu fit {f_gpu / f_ours:.9f}")
        print(f"coxlmm semi_nmf (cuda, {torch.cuda.get_device_name()}): {t_gpu:8.3f} s  "
              f"{d_gpu.n_iter_:5d} iterations  objective {f_gpu:.6f}  ({vs}; fastest of "
              f"{', '.join(f'{t:.3f}' for t in times_gpu)} s)")
    else:
        print("cuda: not available, GPU timing skipped")


if __name__ == "__main__":
    main()
