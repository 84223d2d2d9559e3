"""The shapes world: deterministic for a seed, labels agree with captions and pixels, fixed splits."""

import numpy as np
import pytest

from coxlmm.data.shapes import (
    COLOURS,
    FACTORS,
    POSITIONS,
    ShapesWorld,
    objects_of,
    parse_caption,
)
from coxlmm.errors import CoxlmmError


def test_same_seed_same_samples_and_pixels():
    a, b = ShapesWorld("train", n_train=20, seed=3), ShapesWorld("train", n_train=20, seed=3)
    for i in (0, 7, 19):
        sa, sb = a[i], b[i]
        assert (sa.id, sa.captions, sa.attributes) == (sb.id, sb.captions, sb.attributes)
        assert np.array_equal(np.asarray(sa.image), np.asarray(sb.image))
    c = ShapesWorld("train", n_train=20, seed=4)
    assert [r.attributes for r in a.records] != [r.attributes for r in c.records]


def test_splits_are_fixed_and_independent_of_size():
    small, big = ShapesWorld("test", n_test=5), ShapesWorld("test", n_test=50)
    assert [r.attributes for r in small.records] == [r.attributes for r in big.records[:5]]
    train = ShapesWorld("train", n_train=50)
    assert [r.attributes for r in train.records] != [r.attributes for r in big.records]
    assert ShapesWorld("val", n_val=7).records[0].id == "shapes-val-000000"


def test_labels_match_captions():
    ds = ShapesWorld("train", n_train=300)
    n_two = 0
    for rec in ds.records:
        a = rec.attributes
        assert a["n_objects"] in (1, 2) and all(len(a[f]) == a["n_objects"] for f in FACTORS)
        n_two += a["n_objects"] == 2
        assert len(rec.captions) == 3
        for cap in rec.captions:
            assert parse_caption(cap) == objects_of(a), cap
        if a["n_objects"] == 2:
            assert len(set(a["position"])) == 2 and "center" not in a["position"]
    assert 100 < n_two < 200
    assert len({s for r in ds.records for s in r.attributes["shape"]}) >= 6
    assert len({c for r in ds.records for c in r.attributes["colour"]}) >= 6


def test_pixels_match_labels():
    """The object's colour is the dominant non-background colour near its labelled position."""
    ds = ShapesWorld("train", n_train=40, image_size=128)
    for i in range(40):
        s = ds[i]
        px = np.asarray(s.image).astype(float)
        assert px.shape == (128, 128, 3)
        for colour, pos in zip(s.attributes["colour"], s.attributes["position"]):
            fx, fy = POSITIONS[pos]
            patch = px[int(fy * 128) - 12: int(fy * 128) + 12, int(fx * 128) - 12: int(fx * 128) + 12].reshape(-1, 3)
            dists = {c: np.linalg.norm(patch - np.array(rgb), axis=1) for c, rgb in COLOURS.items()}
            counts = {c: int((d < 60).sum()) for c, d in dists.items()}
            assert max(counts, key=counts.get) == colour, (s.id, counts)


def test_parse_caption_reads_partial_objects():
    objs = parse_caption("A red circle and a large star at the top.")
    assert objs == [
        {"shape": "circle", "colour": "red", "size": None, "position": None},
        {"shape": "star", "colour": None, "size": "large", "position": "top"},
    ]
    assert parse_caption("nothing here") == []


def test_bad_split_is_a_clear_error():
    with pytest.raises(CoxlmmError, match="split"):
        ShapesWorld("dev")
