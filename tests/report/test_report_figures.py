"""The concept grid and local-interpretation figures are written as valid PNGs of sensible size."""

from __future__ import annotations

import pytest
import torch
from PIL import Image, ImageDraw

from coxlmm.data.base import CaptionDataset, SampleRecord
from coxlmm.grounding.concept_set import ConceptSet
from coxlmm.grounding.visual import top_samples
from coxlmm.report.figures import concept_grid, local_interpretation

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
pytestmark = pytest.mark.filterwarnings("ignore:skipping unreadable image")  # the 'broken' sample


class TinyShapes(CaptionDataset):
    """Coloured discs drawn on the fly; sample 'broken' has no readable image."""

    def load_image(self, rec: SampleRecord) -> Image.Image:
        if rec.id == "broken":
            raise OSError("unreadable")
        im = Image.new("RGB", (64, 64), "white")
        ImageDraw.Draw(im).ellipse([12, 12, 52, 52], fill=rec.attributes["colour"])
        return im


def make(K: int, M: int = 12):
    colours = ["red", "blue", "green", "orange"]
    recs = [SampleRecord(id=f"s{i}", captions=[f"a {colours[i % 4]} disc"], attributes={"colour": colours[i % 4]})
            for i in range(M)]
    recs[3] = SampleRecord(id="broken", captions=["?"])
    ds = TinyShapes(recs)
    g = torch.Generator().manual_seed(0)
    V = torch.rand(M, K, generator=g) * (torch.rand(M, K, generator=g) > 0.4)
    V[:, 0] = 0  # a dead concept: no images, no words
    rows = top_samples(V, 5)
    words = [[] if k == 0 else ["red", "disc", "round", "circle", "scarlet"][: 1 + k % 5] for k in range(K)]
    cs = ConceptSet(U=torch.randn(K, 8, generator=g), V=V, words=words,
                    top_samples=[[recs[r].id for r in rk] for rk in rows], top_indices=rows,
                    method="semi_nmf", layer=-1, token="disc")
    return ds, cs


def check_png(path) -> tuple[int, int]:
    with open(path, "rb") as f:
        assert f.read(8) == PNG_MAGIC
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        return im.size


def test_concept_grid_png(tmp_path):
    ds, cs = make(K=4)
    # rows of Z_train are samples in reverse dataset order: row r <-> dataset index M-1-r
    row_to_index = list(range(len(ds)))[::-1]
    w, h = check_png(concept_grid(cs, ds, row_to_index, tmp_path / "grid.png"))
    assert 600 <= w <= 1500 and 400 <= h <= 1000
    ds20, cs20 = make(K=20)
    w20, h20 = check_png(concept_grid(cs20, ds20, list(range(len(ds20))), tmp_path / "sub" / "grid20.png"))
    assert w20 == w and 2000 <= h20 <= 3500  # one row per concept: tall, same width


def test_local_interpretation_png(tmp_path):
    ds, cs = make(K=6)

    class Dict:  # encode: a fixed V_test, so the ranking is known
        def encode(self, Z):
            return torch.rand(Z.shape[0], 6, generator=torch.Generator().manual_seed(1))

    path = local_interpretation(Dict(), cs, torch.zeros(3, 8), ds, [0, 3, 5], ds, list(range(len(ds))),
                                tmp_path / "local.png")
    w, h = check_png(path)
    assert 900 <= w <= 1600 and 500 <= h <= 900
