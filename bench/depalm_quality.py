"""DePALM-mini caption quality on held-out world images, per caption style (`make quality`).

    python bench/depalm_quality.py [--n-test 400] [--styles attribute_first shape_first] [--batch-size 32]
                                   [--connector PATH] [--device cpu]

Greedy captions of the shapes world's *test* split (never seen in training, which uses the train
split), once per caption style, each with the instruction that the connector was trained with for
it (its `styles`), read back with the world's grammar (`coxlmm.data.shapes.parse_caption`). Objects
named in the caption are matched to the true objects by the best assignment (at most 2 objects, so
all orders are tried); an object the caption misses counts as wrong on every factor.

    accuracy[f]   share of true objects whose factor f (shape, colour, size, position) is right
    object_exact  share of true objects with all four factors right
    count_acc     share of images whose caption names the right number of objects
    exact_match   share of images whose caption names exactly the true objects, all factors right
    style_acc     share of captions written in the style the prompt asks for

split by the number of objects in the image and, per object, by whether its (shape, colour) is a
held-out pair (never in the connector's training images; ~11 % of test objects) or a seen one;
for held-out objects, the colour word the caption gave them (what the model says instead).

Bars (issues 4 and 11), for every style: shape >= 0.95, colour >= 0.90 of all objects. Prints a
table per style, writes JSON (default outputs/depalm_quality.json) and exits 0 (1 if a bar is
missed, with --strict).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time

import torch

from coxlmm.data.shapes import FACTORS, STYLES, ShapesWorld, caption_style, captions_for, objects_of, parse_caption
from coxlmm.models.depalm_mini import load_depalm_mini
from coxlmm.paths import OUTPUTS_DIR

BARS = {"shape": 0.95, "colour": 0.90}
GROUPS = ("all", "1_object", "2_object", "heldout_pair", "seen_pair")


def assign(gt: list[dict], pred: list[dict]) -> list[dict | None]:
    """The predicted object matched to each true object (None: missed), best assignment by right factors."""
    padded = pred + [None] * max(0, len(gt) - len(pred))
    best, best_hits = None, -1
    for perm in itertools.permutations(padded, len(gt)):
        total = sum(int(p is not None and p[f] == g[f]) for g, p in zip(gt, perm) for f in FACTORS)
        if total > best_hits:
            best, best_hits = list(perm), total
    return best


def hits_of(gt: list[dict], matched: list[dict | None]) -> list[dict[str, int]]:
    """Per true object, {factor: 1 if right} against its matched prediction (`assign`)."""
    return [{f: int(p is not None and p[f] == g[f]) for f in FACTORS} for g, p in zip(gt, matched)]


def evaluate(captions: list[str], world: ShapesWorld, style: str | None = None) -> dict:
    """Scores of captions[i] against world.records[i]: all images, by number of objects, and per
    object by held-out / seen (shape, colour) pair (image-level scores only in the image groups)."""
    counters = {g: {k: 0 for k in (*FACTORS, "object_exact", "objects", "images", "count_ok", "exact", "style_ok")}
                for g in GROUPS}
    said: dict[str, dict[str, int]] = {}  # held-out pair -> colour word the caption gave its object
    for cap, rec in zip(captions, world.records):
        gt = objects_of(rec.attributes)
        pred = parse_caption(cap)
        matched = assign(gt, pred)
        hits = hits_of(gt, matched)
        count_ok = len(pred) == len(gt)
        exact = count_ok and all(all(h.values()) for h in hits)
        for g, p, held in zip(gt, matched, rec.attributes["heldout_pair"]):
            if held:
                colour = (p or {}).get("colour") or "(none)"
                pair = said.setdefault(f"{g['colour']} {g['shape']}", {})
                pair[colour] = pair.get(colour, 0) + 1
        for g in ("all", f"{len(gt)}_object"):
            c = counters[g]
            c["images"] += 1
            c["count_ok"] += int(count_ok)
            c["exact"] += int(exact)
            c["style_ok"] += int(style is None or caption_style(cap) == style)
        for h, held in zip(hits, rec.attributes["heldout_pair"]):
            for g in ("all", f"{len(gt)}_object", "heldout_pair" if held else "seen_pair"):
                c = counters[g]
                c["objects"] += 1
                c["object_exact"] += int(all(h.values()))
                for f in FACTORS:
                    c[f] += h[f]

    def summary(c: dict[str, int]) -> dict:
        n, m = max(c["objects"], 1), max(c["images"], 1)
        out = {"objects": c["objects"], "accuracy": {f: c[f] / n for f in FACTORS}, "object_exact": c["object_exact"] / n}
        if c["images"]:
            out |= {"images": c["images"], "count_acc": c["count_ok"] / m, "exact_match": c["exact"] / m,
                    "style_acc": c["style_ok"] / m}
        return out

    out = {g: summary(c) for g, c in counters.items() if c["objects"]}
    out["heldout_colour_said"] = {k: dict(sorted(v.items(), key=lambda kv: -kv[1])) for k, v in sorted(said.items())}
    return out


def caption_all(model, world: ShapesWorld, batch_size: int, max_new_tokens: int) -> list[str]:
    captions: list[str] = []
    for start in range(0, len(world), batch_size):
        images = [world[i].image for i in range(start, min(start + batch_size, len(world)))]
        out = model.generate(model.prepare(images), max_new_tokens)
        captions += [c.strip() for c in model.tokenizer.batch_decode(out.sequences, skip_special_tokens=True)]
        print(f"\r{model.caption_style}: {len(captions)}/{len(world)} captioned", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return captions


def print_table(style: str, prompt: str, res: dict) -> bool:
    """One style's table; returns whether its bars are met."""
    cols = [g for g in GROUPS if g in res]  # groups with objects
    names = {"all": "all", "1_object": "1 obj", "2_object": "2 obj", "heldout_pair": "held-out", "seen_pair": "seen"}
    print(f"\nstyle {style}  (prompt {prompt!r})")
    print(f"{'':<13}" + "".join(f"{names[g]:>10}" for g in cols) + f"{'bar':>7}")
    print(f"{'objects':<13}" + "".join(f"{res[g]['objects']:>10}" for g in cols))
    for f in (*FACTORS, "object_exact"):
        cells = "".join(f"{(res[g]['accuracy'][f] if f in FACTORS else res[g][f]):10.3f}" for g in cols)
        print(f"{f:<13}{cells}{(f'{BARS[f]:.2f}' if f in BARS else '-'):>7}")
    for k in ("count_acc", "exact_match", "style_acc"):
        print(f"{k:<13}" + "".join(f"{res[g][k]:10.3f}" if k in res[g] else f"{'-':>10}" for g in cols))
    said = "; ".join(f"{pair}: " + ", ".join(f"{c} {n}" for c, n in counts.items())
                     for pair, counts in res["heldout_colour_said"].items())
    print(f"held-out pairs, colour the caption gave: {said}")
    passed = all(res["all"]["accuracy"][f] >= b for f, b in BARS.items())
    print(f"bar (shape >= 0.95, colour >= 0.90 of all objects): {'PASSED' if passed else 'NOT MET'}")
    return passed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-test", type=int, default=400)
    ap.add_argument("--styles", nargs="+", default=list(STYLES), choices=list(STYLES))
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
    prompts = model.connector.config["styles"]
    n_held = sum(sum(r.attributes["heldout_pair"]) for r in world.records)
    n_obj = sum(r.attributes["n_objects"] for r in world.records)
    print(f"DePALM-mini on {len(world)} held-out world images ({n_obj} objects, {n_held} of them in the held-out "
          f"(shape, colour) pairs {sorted(map(list, world.heldout_pairs))}), greedy decoding")
    report = {"model": model.fingerprint(), "world": world.fingerprint(), "bars": BARS, "device": args.device,
              "styles": {}}
    all_passed = True
    for style in args.styles:
        model.set_prompt(prompts[style])
        t0 = time.time()
        captions = caption_all(model, world, args.batch_size, args.max_new_tokens)
        seconds = time.time() - t0
        res = evaluate(captions, world, style)
        passed = print_table(style, prompts[style], res)
        print(f"{len(world) / seconds:.1f} images/s on {args.device}")
        all_passed &= passed
        report["styles"][style] = {
            "prompt": prompts[style], "results": res, "passed": passed, "seconds": round(seconds, 1),
            "images_per_s": round(len(world) / seconds, 2),
            "examples": [{"caption": c, "truth": captions_for(r.attributes, style)[0]}
                         for c, r in zip(captions[:12], world.records)]}
    report["passed"] = all_passed
    print(f"\nbars for every style ({', '.join(args.styles)}): {'PASSED' if all_passed else 'NOT MET'}")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"-> {args.out}")
    return 1 if args.strict and not all_passed else 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    raise SystemExit(main())
