"""The shapes world: deterministic for a seed, labels agree with captions and pixels, fixed splits;
both caption styles parse back; held-out pairs stay out of the train split; `annotate` says what a
caption prefix already holds."""

import json

import numpy as np
import pytest

from coxlmm.data.base import CaptionDataset, SampleRecord, contains_word
from coxlmm.data.shapes import (
    COLOURS,
    FACTORS,
    HELDOUT_PAIRS,
    POSITIONS,
    SHAPES,
    SIZES,
    STYLES,
    ShapesWorld,
    annotate_caption,
    caption_style,
    captions_for,
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


def test_records_are_drawn_when_read_in_any_order_and_the_store_key_reads_two():
    """A cached job reads the records of its selected samples only: the dataset's fingerprint (the store key) draws
    the first and the last; a record read alone, backwards or by a negative index equals the same record read in
    order."""
    world = ShapesWorld("train", n_train=300, seed=2)
    world.fingerprint()
    assert len(world.records._made) == 2
    alone = [world.records[i] for i in (250, 17, -1)]
    assert len(world.records._made) == 4  # 250 and 17; -1 is the last one, already drawn
    in_order = list(ShapesWorld("train", n_train=300, seed=2).records)
    assert alone == [in_order[250], in_order[17], in_order[299]] and world.records[295:] == in_order[295:]
    with pytest.raises(IndexError):
        world.records[300]


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


# --- v2: two caption styles -------------------------------------------------------------------------
def test_both_styles_parse_back_to_the_factors():
    ds = ShapesWorld("test", n_test=300)
    for rec in ds.records:
        for style in STYLES:
            caps = captions_for(rec.attributes, style)
            assert len(caps) == 3 and len(set(caps)) == 3
            for cap in caps:
                assert caption_style(cap) == style, cap
                assert parse_caption(cap) == objects_of(rec.attributes), cap
                assert parse_caption(cap, style=style) == objects_of(rec.attributes), cap


def test_shape_first_grammar_names_every_shape_before_any_other_factor_word():
    two = {"n_objects": 2, "background": "white", "shape": ["circle", "star"], "colour": ["red", "blue"],
           "size": ["large", "small"], "position": ["left", "top"]}
    assert captions_for(two, "shape_first") == [
        "A circle and a star, large and red on the left, small and blue at the top.",
        "There is a circle and a star, large and red on the left, small and blue at the top.",
        "An image of a circle and a star, large and red on the left, small and blue at the top."]
    assert captions_for(two)[0] == "A large red circle on the left and a small blue star at the top."
    assert captions_for(two, "both") == captions_for(two, "attribute_first") + captions_for(two, "shape_first")
    words = [*COLOURS, *SIZES, *POSITIONS]
    for rec in ShapesWorld("train", n_train=200).records:
        for cap in captions_for(rec.attributes, "shape_first"):
            last_shape = max(cap.find(" " + s + ",") for s in rec.attributes["shape"])
            assert last_shape > 0 and not any(contains_word(cap[:last_shape], w) for w in words), cap


def test_caption_style_selects_the_reference_captions():
    for style, n in (("attribute_first", 3), ("shape_first", 3), ("both", 6)):
        rec = ShapesWorld("test", n_test=3, caption_style=style).records[0]
        assert rec.captions == captions_for(rec.attributes, style) and len(rec.captions) == n
    a, b = ShapesWorld("test", n_test=3), ShapesWorld("test", n_test=3, caption_style="shape_first")
    assert [r.attributes for r in a.records] == [r.attributes for r in b.records]
    assert a.fingerprint() != b.fingerprint()  # another feature-store key
    with pytest.raises(CoxlmmError, match=r"caption_style='colour_first'.*attribute_first.*shape_first.*both"):
        ShapesWorld("test", n_test=3, caption_style="colour_first")


def test_parse_caption_reads_partial_shape_first_objects():
    assert parse_caption("A circle and a star, red, small at the top.") == [
        {"shape": "circle", "colour": "red", "size": None, "position": None},
        {"shape": "star", "colour": None, "size": "small", "position": "top"}]
    assert parse_caption("A circle, large.") == [{"shape": "circle", "colour": None, "size": "large", "position": None}]
    assert caption_style("A circle on the left.") == "attribute_first"  # shape word, but no shape-first grammar
    assert parse_caption("A circle on the left.") == [{"shape": "circle", "colour": None, "size": None, "position": "left"}]


# --- v2: held-out (shape, colour) pairs ---------------------------------------------------------
def test_heldout_pairs_never_occur_in_the_train_split():
    assert len(HELDOUT_PAIRS) == 4 and {s for s, _ in HELDOUT_PAIRS} <= {"triangle", "cross"}
    train = ShapesWorld("train", n_train=3000)
    pairs = {(o["shape"], o["colour"]) for r in train.records for o in objects_of(r.attributes)}
    assert pairs.isdisjoint(HELDOUT_PAIRS) and len(pairs) == 36 - 4
    assert not any(f for r in train.records for f in r.attributes["heldout_pair"])
    # shapes stay uniform: an object of a held-out shape draws its colour among the others
    counts = {s: sum(r.attributes["shape"].count(s) for r in train.records) for s in SHAPES}
    assert max(counts.values()) / min(counts.values()) < 1.2, counts
    # with none held out, the train split holds every pair
    free = ShapesWorld("train", n_train=3000, heldout_pairs=[])
    assert {(o["shape"], o["colour"]) for r in free.records for o in objects_of(r.attributes)} >= set(HELDOUT_PAIRS)


def test_test_split_has_the_heldout_pairs_flagged_and_is_unchanged_by_them():
    test = ShapesWorld("test", n_test=400)
    flagged = 0
    for rec in test.records:
        a = rec.attributes
        assert a["heldout_pair"] == [(s, c) in HELDOUT_PAIRS for s, c in zip(a["shape"], a["colour"])]
        flagged += sum(a["heldout_pair"])
    n_objects = sum(r.attributes["n_objects"] for r in test.records)
    assert 0.06 < flagged / n_objects < 0.17  # ~4/36 of the objects
    # val/test draws do not depend on the held-out set (the same images as generator v1)
    other = ShapesWorld("test", n_test=400, heldout_pairs=[["circle", "red"]])
    assert [objects_of(r.attributes) for r in test.records] == [objects_of(r.attributes) for r in other.records]


def test_bad_heldout_pairs_are_a_clear_error():
    with pytest.raises(CoxlmmError, match=r"\['triangle', 'pink'\].*\(shape, colour\)"):
        ShapesWorld("test", n_test=2, heldout_pairs=[["triangle", "pink"]])
    with pytest.raises(CoxlmmError, match="every colour"):
        ShapesWorld("test", n_test=2, heldout_pairs=[["cross", c] for c in COLOURS])


# --- v2: factors and annotations for the extraction ----------------------------------------------
def test_factor_values_are_declared_and_default_to_none():
    fv = ShapesWorld("test", n_test=1).factor_values()
    assert list(fv) == list(FACTORS) and fv["position"] == ["left", "right", "top", "bottom", "center"]
    assert fv["shape"] == list(SHAPES) and set(fv["colour"]) == set(COLOURS) and fv["size"] == ["small", "large"]
    plain = CaptionDataset([SampleRecord(id="a", captions=["x"])])
    assert plain.factor_values() == {} and plain.annotate(plain.records[0], "x", "", "x") == {}


TWO = {"n_objects": 2, "background": "white", "shape": ["circle", "star"], "colour": ["red", "blue"],
       "size": ["large", "large"], "position": ["left", "top"], "heldout_pair": [False, False]}


def prefix_before(caption: str, word: str) -> str:
    """Text before the first whole-word occurrence (what the extraction's matching selects)."""
    import re
    return caption[: re.search(rf"(?<![A-Za-z]){word}(?![A-Za-z])", caption).start()]


def test_annotate_attribute_first_flags_match_the_caption_text():
    cap = "A large red circle on the left and a large blue star at the top."
    a = annotate_caption(TWO, cap, prefix_before(cap, "star"), "star")
    # Every factor some word of the prefix names is text-known, whoever's value it is: the state that
    # predicts "star" has read "on the left" (the circle's position), and the named value says so.
    assert a == {"target": {"shape": "star", "colour": "blue", "size": "large", "position": "top"},
                 "companion": {"shape": "circle", "colour": "red", "size": "large", "position": "left"},
                 "text_known": ["colour", "size", "position"],
                 "text_named": {"colour": "blue", "size": "large", "position": "left"},
                 "image_only": [], "style": "attribute_first", "heldout_pair": False}
    a = annotate_caption(TWO, cap, prefix_before(cap, "circle"), "circle")
    assert a["target"]["shape"] == "circle" and a["text_known"] == ["colour", "size"] and a["image_only"] == ["position"]


def test_annotate_shape_first_prefix_holds_no_target_factor_word():
    cap = "A circle and a star, large and red on the left, large and blue at the top."
    for token in ("circle", "star"):
        a = annotate_caption(TWO, cap, prefix_before(cap, token), token)
        assert a["target"]["shape"] == token and a["style"] == "shape_first"
        assert a["text_known"] == [] and a["image_only"] == ["colour", "size", "position"]


def test_text_known_flags_a_wrongly_named_colour_as_text_known():
    """The flags read the generated words, not the truth: a wrongly named colour is text-known (the state
    read a colour word), and the named value says it was wrong."""
    a = annotate_caption(TWO, "A large red star at the top.", "A large red ", "star")
    assert a["text_known"] == ["colour", "size"] and a["image_only"] == ["position"]
    assert a["text_named"] == {"colour": "red", "size": "large"} and a["target"]["colour"] == "blue"
    assert a["companion"]["shape"] == "circle"


def test_annotate_two_objects_of_the_token_shape_take_the_one_named_first():
    both = {**TWO, "shape": ["circle", "circle"]}
    # the caption names the top circle first (wrong order, but its position says which it is)
    cap = "A large blue circle at the top and a large red circle on the left."
    a = annotate_caption(both, cap, prefix_before(cap, "circle"), "circle")
    assert a["target"]["position"] == "top" and a["companion"]["position"] == "left"
    assert a["text_known"] == ["colour", "size"]  # "large blue" before the first circle
    # no stated position: the attributes decide; nothing stated: the first in canonical order
    assert annotate_caption(both, "A blue circle.", "A blue ", "circle")["target"]["position"] == "top"
    assert annotate_caption(both, "A circle.", "A ", "circle")["target"]["position"] == "left"
    cap = "A circle and a circle, large and blue at the top, large and red on the left."
    assert annotate_caption(both, cap, "A ", "circle")["target"]["position"] == "top"


def test_annotate_other_tokens_and_heldout_flag():
    held = {"n_objects": 1, "background": "white", "shape": ["cross"], "colour": ["green"], "size": ["small"],
            "position": ["center"], "heldout_pair": [True]}
    cap = "A small green cross in the center."
    a = annotate_caption(held, cap, prefix_before(cap, "cross"), "cross")
    assert a["heldout_pair"] is True and a["companion"] is None and a["text_known"] == ["colour", "size"]
    # a colour token: the target is the object of that colour; its shape is text-known in shape_first
    cap = "A cross, small and green in the center."
    a = annotate_caption(held, cap, prefix_before(cap, "green"), "green")
    assert a["target"]["colour"] == "green" and a["text_known"] == ["shape", "size"] and a["image_only"] == ["position"]
    # a word that is no factor value, or a shape the image does not hold: no target
    for token in ("image", "heart"):
        a = annotate_caption(held, cap, "A ", token)
        assert a["target"] is None and a["text_known"] == a["image_only"] == [] and a["heldout_pair"] is False
    ds = ShapesWorld("test", n_test=40)
    rec = next(r for r in ds.records if any(r.attributes["heldout_pair"]))
    i = rec.attributes["heldout_pair"].index(True)
    shape = rec.attributes["shape"][i]
    cap = rec.captions[0]
    assert ds.annotate(rec, cap, prefix_before(cap, shape), shape)["heldout_pair"] == (
        rec.attributes["shape"].index(shape) == i)
    json.dumps(ds.annotate(ds[0], cap, "", shape))  # JSON-friendly, from a Sample too
