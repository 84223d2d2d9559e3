"""How much of each factor DePALM-mini's visual tokens carry: linear probes on the frozen encoder.

    python bench/depalm_probe.py [--n-train 1200] [--n-test 400]

For each feature set, a multinomial logistic regression (sklearn, L2, C=1, standardised inputs)
predicts an object's colour and shape from the flattened 4×4 grid of visual tokens of
one-object world images (train split -> test split), and, on two-object images, the colour of the
object at a named position from that position's grid cells (the hard case for the captioner:
the second object). Feature sets (see `coxlmm.models.depalm_mini.visual_tokens`):

    last   EfficientNet-Lite0's last map, 1280 channels per cell (the connector input until v2)
    fine   the stride-8 block-4 map, pooled 2×2 and folded into the grid: 160 per cell
    both   the concatenation = DePALM-mini's visual tokens (1440 per cell)

Prints a table and writes JSON (default outputs/depalm_probe.json). About a minute on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from coxlmm.data.shapes import POSITIONS, ShapesWorld, objects_of
from coxlmm.models.depalm_mini import LAST_DIM, load_vision_encoder, pixel_values, visual_tokens
from coxlmm.paths import OUTPUTS_DIR

SETS = {"last": slice(0, LAST_DIM), "fine": slice(LAST_DIM, None), "both": slice(0, None)}


def encode(world: ShapesWorld, encoder: torch.nn.Module, batch: int = 64) -> np.ndarray:
    """(n, 16, 1440) visual tokens of every image of `world`."""
    out = []
    for s in range(0, len(world), batch):
        images = [world[i].image for i in range(s, min(s + batch, len(world)))]
        out.append(visual_tokens(encoder, pixel_values(images, world.image_size)).numpy())
    return np.concatenate(out)


def cells_of(position: str, grid: int = 4) -> list[int]:
    """Grid cells (row-major) under an object centred at `position` (the 2×2 block nearest it)."""
    cx, cy = POSITIONS[position]
    c0 = min(grid - 2, max(0, round(cx * grid - 1)))
    r0 = min(grid - 2, max(0, round(cy * grid - 1)))
    return [r * grid + c for r in (r0, r0 + 1) for c in (c0, c0 + 1)]


def probe(x_tr: np.ndarray, y_tr: list[str], x_te: np.ndarray, y_te: list[str]) -> float:
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=300))
    clf.fit(x_tr, y_tr)
    return float(clf.score(x_te, y_te))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-train", type=int, default=1200)
    ap.add_argument("--n-test", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(str(OUTPUTS_DIR), "depalm_probe.json"))
    args = ap.parse_args(argv)
    t0 = time.time()
    encoder = load_vision_encoder(128)
    worlds = {"train": ShapesWorld("train", n_train=args.n_train, seed=args.seed, p_two=0.5),
              "test": ShapesWorld("test", n_test=args.n_test, seed=args.seed, p_two=0.5)}
    feats = {k: encode(w, encoder) for k, w in worlds.items()}

    def rows(split: str, n_objects: int):
        """(tokens, objects) of the images of `split` with n_objects objects."""
        keep = [(i, objects_of(r.attributes)) for i, r in enumerate(worlds[split].records)
                if r.attributes["n_objects"] == n_objects]
        return feats[split][[i for i, _ in keep]], [o for _, o in keep]

    results: dict[str, dict[str, float]] = {}
    (one_tr, obj_tr), (one_te, obj_te) = rows("train", 1), rows("test", 1)
    (two_tr, pair_tr), (two_te, pair_te) = rows("train", 2), rows("test", 2)

    def at_position(x: np.ndarray, pairs: list[list[dict]], sl: slice):
        """One row per object of a two-object image: its position's cells -> its colour."""
        xs, ys = [], []
        for feat, objs in zip(x, pairs):
            for o in objs:
                xs.append(feat[cells_of(o["position"]), sl].reshape(-1))
                ys.append(o["colour"])
        return np.stack(xs), ys

    for name, sl in SETS.items():
        flat_tr, flat_te = one_tr[:, :, sl].reshape(len(one_tr), -1), one_te[:, :, sl].reshape(len(one_te), -1)
        results[name] = {
            "colour_1obj": probe(flat_tr, [o[0]["colour"] for o in obj_tr], flat_te, [o[0]["colour"] for o in obj_te]),
            "shape_1obj": probe(flat_tr, [o[0]["shape"] for o in obj_tr], flat_te, [o[0]["shape"] for o in obj_te]),
            "colour_2obj_at_position": probe(*at_position(two_tr, pair_tr, sl), *at_position(two_te, pair_te, sl)),
        }
    print(f"linear probes on frozen EfficientNet-Lite0 tokens ({args.n_train} train / {args.n_test} test images)")
    cols = list(next(iter(results.values())))
    print(f"{'features':<10}" + "".join(f"{c:>26}" for c in cols))
    for name, r in results.items():
        print(f"{name:<10}" + "".join(f"{r[c]:26.3f}" for c in cols))
    seconds = time.time() - t0
    print(f"{seconds:.0f} s")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"results": results, "n_train": args.n_train, "n_test": args.n_test, "seconds": round(seconds, 1)},
                  f, indent=2)
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    raise SystemExit(main())
