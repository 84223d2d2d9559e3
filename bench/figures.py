"""The two report figures (`concept_grid`, `local_interpretation`) on a synthetic dictionary, timed in process.

    K = 20 concepts, N_MAS = 7 most activating images each (160x160 PIL images made here), and
    4 test samples for the local interpretation (top 3 concepts, 2 images each: the pipeline's defaults).

Each figure is drawn once (warm-up: imports, font cache), then `--repeats` times; the median is printed.
With `--before REV` the implementation of `git show REV:src/coxlmm/report/figures.py` is loaded as a
module from a temporary file and timed the same way, interleaved with this checkout's, and the ratio
before / after is printed.

    OMP_NUM_THREADS=1 python bench/figures.py [--before 36aeff3] [--repeats 5] [--out DIR]

`--out DIR` keeps the PNGs (after_*.png, before_*.png) to look at.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import torch
from PIL import Image, ImageDraw

from coxlmm.data.base import CaptionDataset, SampleRecord
from coxlmm.grounding.concept_set import ConceptSet
from coxlmm.grounding.visual import top_samples

ROOT = Path(__file__).resolve().parent.parent
K, N_MAS, M_TRAIN, M_TEST, PX = 20, 7, 300, 4, 160
PALETTE = ["red", "blue", "green", "orange", "purple", "teal", "gold", "black"]
SHAPES = ["disc", "square", "triangle"]


class Generated(CaptionDataset):
    """Sample i: a PX x PX image of a coloured shape on a tinted background, made once and kept."""

    def __init__(self, records: list[SampleRecord]):
        super().__init__(records)
        self._images = {r.id: self._draw(i, r) for i, r in enumerate(records)}

    @staticmethod
    def _draw(i: int, rec: SampleRecord) -> Image.Image:
        im = Image.new("RGB", (PX, PX), (235 - 7 * (i % 9), 235, 225 + 3 * (i % 7)))
        d = ImageDraw.Draw(im)
        box = [20 + i % 15, 25, 135, 130 - i % 11]
        colour, shape = rec.attributes["colour"], rec.attributes["shape"]
        if shape == "disc":
            d.ellipse(box, fill=colour)
        elif shape == "square":
            d.rectangle(box, fill=colour)
        else:
            d.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) // 2, box[1])], fill=colour)
        return im

    def load_image(self, rec: SampleRecord) -> Image.Image:
        return self._images[rec.id]


def make_inputs():
    """(ConceptSet over train, train dataset, train rows -> index, test dataset, test rows -> index, V_test)."""
    def records(prefix: str, n: int) -> list[SampleRecord]:
        return [SampleRecord(id=f"{prefix}{i}", captions=[f"a {PALETTE[i % 8]} {SHAPES[i % 3]} on a pale background"],
                             attributes={"colour": PALETTE[i % 8], "shape": SHAPES[i % 3]}) for i in range(n)]

    train, test = Generated(records("tr", M_TRAIN)), Generated(records("te", M_TEST))
    g = torch.Generator().manual_seed(0)
    V = torch.rand(M_TRAIN, K, generator=g) * (torch.rand(M_TRAIN, K, generator=g) > 0.5)
    rows = top_samples(V, N_MAS)
    vocab = ["red", "blue", "green", "disc", "square", "triangle", "large", "small", "round", "bright", "pale"]
    words = [[vocab[(k + j) % len(vocab)] for j in range(3 + k % 6)] for k in range(K)]
    cs = ConceptSet(U=torch.randn(K, 16, generator=g), V=V, words=words,
                    top_samples=[[train.records[r].id for r in rk] for rk in rows], top_indices=rows,
                    method="semi_nmf", layer=22, token="disc")
    V_test = torch.rand(M_TEST, K, generator=g)
    return cs, train, list(range(M_TRAIN)), test, list(range(M_TEST)), V_test


class Encoder:  # local_interpretation is given V_test: encode is never called
    def encode(self, Z):
        raise AssertionError("V_test is given")


def load_before(rev: str) -> ModuleType:
    src = subprocess.run(["git", "show", f"{rev}:src/coxlmm/report/figures.py"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    tmp = Path(tempfile.mkdtemp(prefix="figures_before_")) / "figures_before.py"
    tmp.write_text(src)
    spec = importlib.util.spec_from_file_location("figures_before", tmp)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", default=None, help="git rev whose figures.py to time too, e.g. 36aeff3")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=None, help="keep the PNGs here")
    args = ap.parse_args()

    from coxlmm.report import figures as after
    impls = {"after": after}
    if args.before:
        impls = {"before": load_before(args.before), **impls}
    cs, train, train_rows, test, test_rows, V_test = make_inputs()
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench_figures_"))
    Z_test = torch.zeros(M_TEST, 16)

    def grid(mod, tag):
        return mod.concept_grid(cs, train, train_rows, out / f"{tag}_concept_grid.png")

    def local(mod, tag):
        return mod.local_interpretation(Encoder(), cs, Z_test, test, test_rows, train, train_rows,
                                        out / f"{tag}_local_interpretation.png", V_test=V_test)

    figs = {"concept_grid": grid, "local_interpretation": local}
    times: dict[tuple[str, str], list[float]] = {(t, f): [] for t in impls for f in figs}
    for tag, mod in impls.items():  # warm-up
        for fn in figs.values():
            fn(mod, tag)
    for _ in range(args.repeats):  # interleaved, so a busy neighbour slows both alike
        for tag, mod in impls.items():
            for name, fn in figs.items():
                t0 = time.perf_counter()
                fn(mod, tag)
                times[(tag, name)].append(time.perf_counter() - t0)

    print(f"K = {K} concepts x {N_MAS} images ({PX}x{PX}), {M_TEST} test samples; median of {args.repeats}"
          f" after one warm-up; PNGs in {out}")
    for name in figs:
        med = {tag: statistics.median(times[(tag, name)]) for tag in impls}
        line = "  ".join(f"{tag} {med[tag] * 1000:7.1f} ms" for tag in impls)
        if "before" in med:
            line += f"  ratio {med['before'] / med['after']:5.1f}x"
        print(f"{name:22s} {line}")
    if len(impls) > 1:
        tot = {tag: sum(statistics.median(times[(tag, n)]) for n in figs) for tag in impls}
        print(f"{'both':22s} before {tot['before'] * 1000:7.1f} ms  after {tot['after'] * 1000:7.1f} ms"
              f"  ratio {tot['before'] / tot['after']:5.1f}x")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
