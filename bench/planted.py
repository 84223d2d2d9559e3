"""Which method recovers planted concepts best: every conf/method file on features with known
directions, scored with SynthSAEBench's metrics (src/coxlmm/metrics/planted.py).

    python bench/planted.py            # two worlds, every method, about a minute
    python bench/planted.py --seeds 3  # mean over three data seeds

Worlds (Z = A D + offset + noise; `planted_features`):
  separate       T = 20 directions in B = 128 dimensions (nearly orthogonal), p_fire = 0.1,
                 a common offset of norm 5 (LLM hidden states share a large direction)
  separate, no offset   the same without the offset
  superposition  T = 32 directions in B = 24 dimensions (more features than dimensions), offset 5
all with magnitudes |N(1, 0.5)| and noise of norm 0.05. Every method gets K = T concepts; the SAEs get k = the
planted mean L0 (T · p_fire, rounded), so methods are compared at matched sparsity where they
have a knob (SAEBench's advice). DiffMean is given the planted activity (A > 0) as labels: the
supervised reference, not a competitor. nmf refuses signed features (nmf_shifted is the same
class with the opt-in shift) and is skipped, as is PCA where K > B (it has at most B directions).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from coxlmm.concepts import method_factory, method_names  # noqa: E402
from coxlmm.concepts.factory import compose_method  # noqa: E402
from coxlmm.concepts.diffmean import DiffMean  # noqa: E402
from coxlmm.errors import CoxlmmError  # noqa: E402
from coxlmm.metrics.planted import planted_features, planted_scores  # noqa: E402

WORLDS = {
    "separate": dict(M=3000, B=128, T=20, p_fire=0.1, offset=5.0),
    "separate, no offset": dict(M=3000, B=128, T=20, p_fire=0.1, offset=0.0),
    "superposition": dict(M=3000, B=24, T=32, p_fire=0.08, offset=5.0),
}
COLUMNS = ("mcc", "uniqueness", "precision", "recall", "f1", "dead", "rel_error", "l0", "seconds")


def score_method(name: str, Z: torch.Tensor, A: torch.Tensor, D: torch.Tensor, k: int) -> dict | None:
    params = {"n_concepts": D.shape[0]}
    if "k" in compose_method(name):  # methods with a sparsity knob get the planted L0
        params["k"] = k
    d = method_factory(name, **params)(seed=0)
    t = time.perf_counter()
    try:
        d.fit(Z)
    except CoxlmmError:
        return None  # refused by design: plain nmf on signed features, PCA with K > B
    seconds = time.perf_counter() - t
    V = d.V_train
    out = planted_scores(d.U, V, D, A)
    out["rel_error"] = float((Z - d.decode(V)).pow(2).sum() / Z.pow(2).sum())
    out["l0"] = float((V > 0).sum(1).float().mean())
    out["seconds"] = seconds
    return out


def diffmean_row(Z: torch.Tensor, A: torch.Tensor, D: torch.Tensor) -> dict:
    t = time.perf_counter()
    d = DiffMean().fit(Z, A > 0)
    seconds = time.perf_counter() - t
    out = planted_scores(d.U, d.V_train, D, A)
    out["rel_error"] = float("nan")  # a detector, not a reconstruction
    out["l0"] = float((d.V_train > 0).sum(1).float().mean())
    out["seconds"] = seconds
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=1, help="data seeds to average over")
    args = ap.parse_args()
    torch.set_num_threads(1)
    methods = method_names()
    best_lines = []
    for world, spec in WORLDS.items():
        spec = dict(spec)
        offset = spec.pop("offset")
        k = max(1, round(spec["T"] * spec["p_fire"]))
        rows: dict[str, list[dict]] = {}
        for seed in range(args.seeds):
            Z, A, D = planted_features(**spec, offset=offset, noise=0.05, seed=seed)
            for name in methods:
                r = score_method(name, Z, A, D, k)
                if r is not None:
                    rows.setdefault(name, []).append(r)
            rows.setdefault("diffmean (labels)", []).append(diffmean_row(Z, A, D))
        print(f"\n== {world}: T={spec['T']} planted directions in B={spec['B']}, M={spec['M']}, "
              f"p_fire={spec['p_fire']} (planted L0 {spec['T'] * spec['p_fire']:.1f}), offset {offset}, "
              f"K=T, SAE k={k}, {args.seeds} seed(s)")
        print(f"  {'method':18s} " + " ".join(f"{c:>10s}" for c in COLUMNS))
        means = {}
        for name, rs in rows.items():
            means[name] = {c: float(np.mean([r[c] for r in rs])) for c in COLUMNS}
            print(f"  {name:18s} " + " ".join(f"{means[name][c]:10.3f}" for c in COLUMNS), flush=True)
        unsupervised = {n: m for n, m in means.items() if not n.startswith("diffmean")}
        for metric in ("mcc", "f1"):
            top = max(unsupervised, key=lambda n: unsupervised[n][metric])
            best_lines.append(f"{world}: best {metric} (unsupervised) = {top} ({unsupervised[top][metric]:.3f}); "
                              f"DiffMean with labels {means['diffmean (labels)'][metric]:.3f}")
    print("\n== which method recovers planted concepts best")
    for line in best_lines:
        print(f"  {line}")


if __name__ == "__main__":
    main()
