"""DePALM-mini caption quality on held-out world images (`make quality`).

    python bench/depalm_quality.py [--n-test 400] [--batch-size 32] [--connector PATH] [--device cpu]

Greedy captions of the shapes world's *test* split (never seen in training, which uses the train
split), read back with the world's own grammar (`coxlmm.data.shapes.parse_caption`). Objects named
in the caption are matched to the true objects by the best assignment (at most 2 objects, so all
orders are tried); an object the caption misses counts as wrong on every factor.

    accuracy[f]   share of true objects whose factor f (shape, colour, size, position) is right
    count_acc     share of images whose caption names the right number of objects
    exact_match   share of images whose caption names exactly the true objects, all factors right

Bars (issue 4): shape >= 0.95, colour >= 0.90. Prints a table, writes JSON (default
outputs/depalm_quality.json) and exits 0 (1 if a bar is missed, with --strict).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time

import torch

from coxlmm.data.shapes import FACTORS, ShapesWorld, objects_of, parse_caption
from coxlmm.models.depalm_mini import load_depalm_mini
from coxlmm.paths import OUTPUTS_DIR

BARS = {"shape": 0.95, "colour": 0.90}


def score_image(gt: list[dict], pred: list[dict]) -> dict[str, int]:
    """Per-factor correct counts over the true objects (best matching), count and exact flags."""
    padded = pred + [None] * max(0, len(gt) - len(pred))
    best, best_hits = None, -1
    for perm in itertools.permutations(padded, len(gt)):
        hits = [{f: int(p is not None and p[f] == g[f]) for f in FACTORS} for g, p in zip(gt, perm)]
        total = sum(sum(h.values()) for h in hits)
        if total > best_hits:
            best, best_hits = hits, total
    out = {f: sum(h[f] for h in best) for f in FACTORS}
    out["count_ok"] = int(len(pred) == len(gt))
    out["exact"] = int(out["count_ok"] and best_hits == len(FACTORS) * len(gt))
    return out


def evaluate(captions: list[str], world: ShapesWorld) -> dict:
    """Aggregate scores of captions[i] against world.records[i]; also split by number of objects."""
    groups: dict[str, dict[str, int]] = {}
    for cap, rec in zip(captions, world.records):
        gt = objects_of(rec.attributes)
        s = score_image(gt, parse_caption(cap))
        for key in ("all", f"{len(gt)}_object"):
            g = groups.setdefault(key, {f: 0 for f in (*FACTORS, "count_ok", "exact", "objects", "images")})
            for k, v in s.items():
                g[k] += v
            g["objects"] += len(gt)
            g["images"] += 1

    def summary(g: dict[str, int]) -> dict:
        return {"images": g["images"], "objects": g["objects"],
                "accuracy": {f: g[f] / g["objects"] for f in FACTORS},
                "count_acc": g["count_ok"] / g["images"], "exact_match": g["exact"] / g["images"]}

    return {k: summary(g) for k, g in sorted(groups.items())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-test", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=40)
    ap.add_argument("--connector", default=None, help="connector checkpoint (default: the shipped one)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--seed", type=int, default=0, help="world seed (the test split of this world)")
    ap.add_argument("--out", default=os.path.join(str(OUTPUTS_DIR), "depalm_quality.json"))
    ap.add_argument("--strict", action="store_true", help="exit 1 when a bar is missed")
    args = ap.parse_args(argv)

    world = ShapesWorld("test", n_test=args.n_test, seed=args.seed)
    model = load_depalm_mini(connector_path=args.connector, device=args.device, dtype=args.dtype)
    t0 = time.time()
    captions: list[str] = []
    for start in range(0, len(world), args.batch_size):
        images = [world[i].image for i in range(start, min(start + args.batch_size, len(world)))]
        out = model.generate(model.prepare(images), args.max_new_tokens)
        captions += [c.strip() for c in model.tokenizer.batch_decode(out.sequences, skip_special_tokens=True)]
        print(f"\r{len(captions)}/{len(world)} captioned", end="", file=sys.stderr, flush=True)
    seconds = time.time() - t0
    print(file=sys.stderr)

    res = evaluate(captions, world)
    a = res["all"]
    print(f"DePALM-mini on {a['images']} held-out world images ({a['objects']} objects), greedy decoding")
    print(f"{'factor':<10}{'all':>8}{'1 obj':>8}{'2 obj':>8}{'bar':>7}")
    for f in FACTORS:
        by = [res.get(k, {}).get("accuracy", {}).get(f) for k in ("1_object", "2_object")]
        cells = "".join(f"{v:8.3f}" if v is not None else f"{'-':>8}" for v in by)
        bar = f"{BARS[f]:.2f}" if f in BARS else "-"
        print(f"{f:<10}{a['accuracy'][f]:8.3f}{cells}{bar:>7}")
    for k in ("count_acc", "exact_match"):
        by = "".join(f"{res[g][k]:8.3f}" if g in res else f"{'-':>8}" for g in ("1_object", "2_object"))
        print(f"{k:<10}{a[k]:8.3f}{by}")
    passed = all(a["accuracy"][f] >= b for f, b in BARS.items())
    print(f"bar (shape >= 0.95, colour >= 0.90): {'PASSED' if passed else 'NOT MET'};  "
          f"{len(world) / seconds:.1f} images/s on {args.device}")

    report = {"model": model.fingerprint(), "world": world.fingerprint(), "results": res, "bars": BARS,
              "passed": passed, "seconds": round(seconds, 1), "images_per_s": round(len(world) / seconds, 2),
              "device": args.device, "examples": [{"caption": c, "truth": r.captions[0]}
                                                  for c, r in zip(captions[:12], world.records)]}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"-> {args.out}")
    return 1 if args.strict and not passed else 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    raise SystemExit(main())
