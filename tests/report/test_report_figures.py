"""The concept grid and local-interpretation figures are written as valid PNGs of sensible size, and their
pixels show the right samples, bars and frames where their layouts say."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageColor, ImageDraw

from coxlmm.data.base import CaptionDataset, SampleRecord
from coxlmm.grounding.concept_set import ConceptSet
from coxlmm.grounding.local import rank_concepts
from coxlmm.grounding.visual import top_samples
from coxlmm.report.figures import (NO_IMAGE, RANK_COLOURS, GridLayout, LocalLayout, concept_grid,
                                   local_interpretation)

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


def pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.mode == "RGB"
        return np.asarray(im)


def probe(a: np.ndarray, box) -> tuple[int, int, int]:
    """The pixel 20 px under the centre of a cell: inside a disc, and under the 'no image' label of a grey cell."""
    x0, y0, x1, y1 = box
    return tuple(int(c) for c in a[(y0 + y1) // 2 + 20, (x0 + x1) // 2])


def disc_colour(ds, index: int) -> tuple[int, int, int]:
    """The colour inside a TinyShapes sample's disc (NO_IMAGE grey for the unreadable one)."""
    rec = ds.records[index]
    return NO_IMAGE if rec.id == "broken" else ImageColor.getrgb(rec.attributes["colour"])


def test_concept_grid_cells_show_each_concepts_samples(tmp_path):
    """Each MAS cell shows the sample of its row of Z_train (through row_to_index), the unreadable one as a
    grey cell; the dead concept's row has no image at all, only its 'no activating sample' label."""
    ds, cs = make(K=4)
    row_to_index = {r: (r + 5) % len(ds) for r in range(len(ds))}  # row 10 <-> index 3, the broken sample
    a = pixels(concept_grid(cs, ds, row_to_index, tmp_path / "grid.png"))
    lay = GridLayout(cs.n_concepts, max(len(r) for r in cs.top_indices))
    assert a.shape == (lay.size[1], lay.size[0], 3)
    seen = set()
    for k in range(1, cs.n_concepts):
        assert cs.top_indices[k]
        for j, row in enumerate(cs.top_indices[k]):
            expected = disc_colour(ds, row_to_index[row])
            assert probe(a, lay.cell_box(k, j)) == expected, (k, j, row)
            seen.add(expected)
    assert NO_IMAGE in seen and len(seen) >= 4  # the broken sample and several colours were checked
    x0, y0 = lay.cell_box(0, 0)[:2]
    x1, y1 = lay.cell_box(0, lay.n_mas - 1)[2:]
    dead = a[y0:y1, x0:x1].astype(int)
    grey_or_white = (dead[..., 0] == dead[..., 1]) & (dead[..., 1] == dead[..., 2])
    assert grey_or_white.all() and (dead == NO_IMAGE[0]).all(axis=-1).sum() < 50  # no disc, no grey cell
    assert (dead < 200).any()  # the label


def test_local_interpretation_bars_frames_and_images(tmp_path):
    """Per test sample: its image; bar r is rank r's colour (at 85 % over white) and score_r x bar_len
    long (the top one exactly bar_len); concept r's images show its X_k,MAS samples in frames of that colour."""
    ds, cs = make(K=6)
    g = torch.Generator().manual_seed(2)
    V_test = torch.rand(3, 6, generator=g) + torch.tensor([0.0, 0.5, 0.5, 0.5, 0.5, 0.5])  # dead concept 0 ranks low
    test_rows = [0, 3, 5]
    a = pixels(local_interpretation(None, cs, torch.zeros(3, 8), ds, test_rows, ds, list(range(len(ds))),
                                    tmp_path / "local.png", V_test=V_test))
    lay = LocalLayout(3, 3, 2)
    assert a.shape == (lay.size[1], lay.size[0], 3)
    ranking = rank_concepts(V_test, 3)
    for i in range(3):
        assert probe(a, lay.image_box(i)) == disc_colour(ds, test_rows[i])
        for r, (k, s) in enumerate(zip(ranking.order[i].tolist(), ranking.scores[i].tolist())):
            colour = ImageColor.getrgb(RANK_COLOURS[r])
            faded = tuple(round(0.85 * c + 0.15 * 255) for c in colour)
            x0, y0, x1, y1 = lay.bar_box(i, r)
            line = a[(y0 + y1) // 2, x0:x1 + 40]
            run = int((line == faded).all(axis=-1).sum())
            assert run == round(s * lay.bar_len) and (line[:run] == faded).all(), (i, r, run, s)
            assert cs.top_indices[k]  # not the dead concept 0
            for j, row in enumerate(cs.top_indices[k][:2]):
                x0, y0, x1, y1 = lay.mas_box(i, r, j)
                assert probe(a, (x0, y0, x1, y1)) == disc_colour(ds, row)
                assert tuple(a[(y0 + y1) // 2, x0 - 2]) == colour and tuple(a[y1 + 1, (x0 + x1) // 2]) == colour
