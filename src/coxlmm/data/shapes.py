"""The generated world: captioned images of coloured shapes with known factors (`data=shapes`).

Every image holds 1 or 2 objects. Each object has a shape, a colour, a size and a position; the
image has a background. Factors are drawn independently from a seeded stream per
(seed, split, index), so a sample is the same on every machine and the splits never share a
stream. Images are rendered on the fly with PIL (about 1 ms each at 128 px), so nothing is cached.

Attributes of a sample (`SampleRecord.attributes`, JSON-friendly), objects in caption order:

    {"n_objects": 2,
     "background": "black",
     "shape":    ["circle", "star"],       # one entry per object, aligned across the lists
     "colour":   ["red", "blue"],
     "size":     ["large", "small"],
     "position": ["left", "top"],
     "heldout_pair": [False, False]}       # is (shape, colour) a held-out pair (never in train)?

A recovery metric asks "does the image hold a <value> object" with `value in attributes[factor]`.
Objects are listed in a canonical order (left, right, top, bottom, center), the order in which the
captions name them. Two objects never share a position and never use "center" (so they never
overlap). The background is a nuisance factor: it is labelled but never named in a caption.

Two caption styles (grammars), 3 reference captions each (openings "A", "There is a",
"An image of a"); DePALM-mini's prompt selects which one it writes (models/depalm_mini.py):

    attribute_first  "A large red circle on the left."
                     "A large red circle on the left and a small blue star at the top."
                     (also "A ... with a ...", "There is a ... and a ...")
                     The state that predicts a shape word sits on its colour word: the text
                     already holds the object's size and colour.
    shape_first      "A circle, large and red on the left."
                     "A circle and a star, large and red on the left, small and blue at the top."
                     = opening + shapes (" and a " between) + per object, in the same order,
                     ", {size} and {colour} {where}". Every shape word comes before any other
                     factor word, so the state that predicts it has read the opening (and the
                     shapes named before it) only: every other factor must come from the image.

A record's reference captions (`record.captions`) are those of `caption_style`
(attribute_first by default, shape_first, or both = the 3 attribute-first then the 3 shape-first).

Held-out pairs: the (shape, colour) pairs in `heldout_pairs` (default `HELDOUT_PAIRS`, 4 of the
36, none with circle, square, star or heart) never occur in the train split (an object of a
held-out shape draws its colour among the others); val and test draw freely, so ~11 % of their
objects are held-out pairs, flagged per object in `attributes["heldout_pair"]`.

`parse_caption` reads objects back from a caption of either style; `annotate` says, for a
generated caption and the text before a matched word, which object the word names and which of
its factors the text had already given (used by the extraction, see `ShapesWorld.annotate`).
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from coxlmm.data.base import CaptionDataset, SampleRecord
from coxlmm.errors import CoxlmmError
from coxlmm.words import GENERATOR_VERSION, STYLES  # the world's caption language (version, grammars)


SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "heart", "cross")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 30, 30),
    "green": (40, 170, 60),
    "blue": (35, 75, 225),
    "yellow": (240, 215, 30),
    "orange": (245, 135, 20),
    "purple": (135, 45, 185),
}
SIZES: dict[str, float] = {"small": 0.09, "large": 0.16}  # radius as a fraction of the image side
# Object centres as fractions of the image side; listed in the canonical caption order.
POSITIONS: dict[str, tuple[float, float]] = {
    "left": (0.22, 0.5),
    "right": (0.78, 0.5),
    "top": (0.5, 0.22),
    "bottom": (0.5, 0.78),
    "center": (0.5, 0.5),
}
WHERE: dict[str, str] = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "center": "in the center",
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245),
    "light gray": (185, 185, 185),
    "dark gray": (70, 70, 70),
    "black": (15, 15, 15),
}
FACTORS: tuple[str, ...] = ("shape", "colour", "size", "position")
FACTOR_VALUES: dict[str, tuple[str, ...]] = {
    "shape": SHAPES, "colour": tuple(COLOURS), "size": tuple(SIZES), "position": tuple(POSITIONS)}
SPLITS: dict[str, int] = {"train": 0, "val": 1, "test": 2}
# Never in the train split. Triangle and cross only: the paper's tokens (circle, square, star,
# heart) keep all their colours, so their dictionaries see the same data as with no held-out pairs.
HELDOUT_PAIRS: tuple[tuple[str, str], ...] = (
    ("triangle", "blue"), ("triangle", "yellow"), ("cross", "green"), ("cross", "purple"))

CAPTION_STYLES: tuple[str, ...] = (*STYLES, "both")  # values of data.caption_style
OPENINGS = ("A", "There is a", "An image of a")  # shape_first: one caption per opening
ONE_OBJECT_TEMPLATES = ("A {0}.", "There is a {0}.", "An image of a {0}.")  # attribute_first
TWO_OBJECT_TEMPLATES = ("A {0} and a {1}.", "A {0} with a {1}.", "There is a {0} and a {1}.")

SUPERSAMPLE = 2  # draw at 2x and downsample: smooth edges without an antialiasing rasteriser


# --- factors ---------------------------------------------------------------------------------------
def sample_attributes(rng: np.random.Generator, p_two: float,
                      exclude: frozenset[tuple[str, str]] = frozenset()) -> dict[str, Any]:
    """Draw the factors of one image (objects in canonical position order).

    An object's colour is drawn among the colours c with (shape, c) not in `exclude`; with nothing
    excluded the draws are those of generator v1 (val and test splits are unchanged since v1)."""
    n = 2 if rng.random() < p_two else 1
    pos_names = list(POSITIONS)
    # Two objects take two distinct non-centre places, so even two large ones never overlap.
    places = pos_names if n == 1 else pos_names[:4]
    chosen = sorted(rng.choice(len(places), size=n, replace=False).tolist())
    objs = []
    for i in chosen:
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        colours = [c for c in COLOURS if (shape, c) not in exclude]
        objs.append({"shape": shape, "colour": colours[int(rng.integers(len(colours)))],
                     "size": list(SIZES)[int(rng.integers(len(SIZES)))], "position": places[i]})
    attrs: dict[str, Any] = {"n_objects": n, "background": list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]}
    for f in FACTORS:
        attrs[f] = [o[f] for o in objs]
    return attrs


def objects_of(attrs: dict[str, Any]) -> list[dict[str, str]]:
    """Per-object dicts {shape, colour, size, position} from the flat per-factor lists."""
    return [{f: attrs[f][i] for f in FACTORS} for i in range(attrs["n_objects"])]


# --- captions (the two grammars) -----------------------------------------------------------------
def object_phrase(obj: dict[str, str]) -> str:
    """attribute_first phrase of one object: "large red circle on the left"."""
    return f"{obj['size']} {obj['colour']} {obj['shape']} {WHERE[obj['position']]}"


def description(obj: dict[str, str]) -> str:
    """shape_first description of one object (after its shape): "large and red on the left"."""
    return f"{obj['size']} and {obj['colour']} {WHERE[obj['position']]}"


def captions_for(attrs: dict[str, Any], style: str = "attribute_first") -> list[str]:
    """The reference captions of an image in one style (3), or in both ("both": 6)."""
    if style == "both":
        return [c for s in STYLES for c in captions_for(attrs, s)]
    objs = objects_of(attrs)
    if style == "attribute_first":
        phrases = [object_phrase(o) for o in objs]
        templates = ONE_OBJECT_TEMPLATES if len(phrases) == 1 else TWO_OBJECT_TEMPLATES
        return [t.format(*phrases) for t in templates]
    if style == "shape_first":
        shapes = " and a ".join(o["shape"] for o in objs)
        descs = ", ".join(description(o) for o in objs)
        return [f"{opening} {shapes}, {descs}." for opening in OPENINGS]
    raise CoxlmmError(f"caption style {style!r} is not a style of the shapes world: use one of {list(CAPTION_STYLES)}.")


def _alt(words) -> str:
    return "|".join(re.escape(w) for w in words)


_OBJECT_RE = re.compile(
    r"\b(?:(?P<size>{sizes})\s+)?(?:(?P<colour>{colours})\s+)?(?P<shape>{shapes})s?\b(?:\s+(?P<where>{wheres}))?".format(
        sizes=_alt(SIZES), colours=_alt(COLOURS), shapes=_alt(SHAPES), wheres=_alt(WHERE.values())),
    re.IGNORECASE,
)
_POSITION_OF = {w: p for p, w in WHERE.items()}
_WORLD_WORD_RE = re.compile(rf"\b(?:{_alt([*SIZES, *COLOURS, *SHAPES, *POSITIONS])})\b", re.IGNORECASE)
_SHAPE_RE = re.compile(rf"\b(?:{_alt(SHAPES)})\b", re.IGNORECASE)
# a shape word that opens a shape_first caption: followed by a comma or by "and a <shape>"
_SHAPE_FIRST_RE = re.compile(rf"\s*,|\s+and\s+an?\s+(?:{_alt(SHAPES)})\b", re.IGNORECASE)


def caption_style(text: str) -> str:
    """The grammar of a caption: "shape_first" when its first world word (a size, colour, shape or
    position word) is a shape followed by a comma or by "and a <shape>", else "attribute_first"."""
    first = _WORLD_WORD_RE.search(text)
    if first and _SHAPE_RE.fullmatch(first.group(0)) and _SHAPE_FIRST_RE.match(text, first.end()):
        return "shape_first"
    return "attribute_first"


def _first_word(words, text: str) -> str | None:
    m = re.search(rf"\b(?:{_alt(words)})\b", text, re.IGNORECASE)
    return m.group(0).lower() if m else None


def _parse_shape_first(text: str) -> list[dict[str, str | None]]:
    """Opening + shapes up to the first comma; then one comma-separated description per shape, in order."""
    head, *descs = text.split(",")
    out = []
    for k, m in enumerate(_SHAPE_RE.finditer(head)):
        d = descs[k] if k < len(descs) else ""
        where = _first_word(WHERE.values(), d)
        out.append({"shape": m.group(0).lower(), "colour": _first_word(COLOURS, d), "size": _first_word(SIZES, d),
                    "position": _POSITION_OF[where] if where else None})
    return out


def parse_caption(text: str, style: str | None = None) -> list[dict[str, str | None]]:
    """Objects named in a caption, in order: [{shape, colour, size, position}] (None where missing).

    style: "attribute_first", "shape_first", or None to detect it (`caption_style`)."""
    style = style or caption_style(text)
    if style == "shape_first":
        return _parse_shape_first(text)
    if style != "attribute_first":
        raise CoxlmmError(f"caption style {style!r} is not a style of the shapes world: use one of {list(STYLES)}.")
    out = []
    for m in _OBJECT_RE.finditer(text):
        where = m.group("where")
        out.append(
            {
                "shape": m.group("shape").lower(),
                "colour": m.group("colour").lower() if m.group("colour") else None,
                "size": m.group("size").lower() if m.group("size") else None,
                "position": _POSITION_OF[where.lower()] if where else None,
            }
        )
    return out


# --- what a caption prefix already says (pure) -----------------------------------------------------
def factor_of_word(word: str) -> str | None:
    """The factor whose value `word` is (case-insensitive), e.g. "circle" -> "shape"; None if none."""
    w = word.strip().lower()
    return next((f for f, values in FACTOR_VALUES.items() if w in values), None)


def target_object(attrs: dict[str, Any], caption: str, token: str) -> int | None:
    """Index (canonical order) of the object that the matched word `token` names, or None.

    The word's factor f (shape for "circle"); candidates: the true objects with that value. With
    two, the object the caption names first with that value is matched to the candidate that agrees
    with its stated position (first) and other stated factors; no agreement: the first candidate."""
    f = factor_of_word(token)
    if f is None:
        return None
    value = token.strip().lower()
    objs = objects_of(attrs)
    candidates = [i for i, o in enumerate(objs) if o[f] == value]
    if len(candidates) <= 1:
        return candidates[0] if candidates else None
    named = next((p for p in parse_caption(caption) if p[f] == value), None)
    if named is None:
        return candidates[0]

    def agreement(i: int) -> tuple[int, int]:
        o = objs[i]
        return (int(named["position"] == o["position"]),
                sum(named[g] == o[g] for g in FACTORS if g not in (f, "position") and named[g] is not None))

    return max(candidates, key=agreement)  # max keeps the first of equal scores: canonical order


# (factor, value, its whole-word pattern), compiled once: every job re-annotates each selected sample
_VALUE_PATTERNS = tuple((f, v, re.compile(rf"(?<![A-Za-z0-9]){re.escape(v)}(?![A-Za-z0-9])", re.IGNORECASE))
                        for f, values in FACTOR_VALUES.items() for v in values)


def named_values(prefix: str) -> dict[str, str]:
    """factor -> the value word of that factor the text names last (nearest the end), for every factor
    the text names at all ("a large red circle and a small blue" -> colour: blue, size: small)."""
    out: dict[str, tuple[int, str]] = {}
    for f, v, pattern in _VALUE_PATTERNS:
        for m in pattern.finditer(prefix):
            if f not in out or m.start() > out[f][0]:
                out[f] = (m.start(), v)
    return {f: v for f, (_, v) in out.items()}



def annotate_caption(attrs: dict[str, Any], caption: str, prefix: str, token: str,
                     heldout_pairs: frozenset[tuple[str, str]] = frozenset(HELDOUT_PAIRS)) -> dict[str, Any]:
    """Which object a matched word names and which of its factors the text before it had already given.

    attrs: a sample's attributes; caption: the generated caption; prefix: the generated text before
    the matched word (what the state that predicts it has read); token: the word. Returns
    (JSON-friendly)

        target        {factor: value} of the object the word names (`target_object`), or None
        companion     {factor: value} of the other object of a two-object image, else None
        text_known    the target's factors, other than the word's own, of which the prefix names *some*
                      value, right or wrong: what the state that predicts the word could read from the text
        text_named    {factor: value} the prefix names last for each text-known factor (it may not be the
                      target's: the model can caption a red circle "blue")
        image_only    the target's other factors (not the word's own): only the image carries them
        style         the caption's grammar (`caption_style`)
        heldout_pair  whether the target's (shape, colour) is a held-out pair
    """
    objs = objects_of(attrs)
    i = target_object(attrs, caption, token)
    own = factor_of_word(token)
    target = objs[i] if i is not None else None
    companion = objs[1 - i] if i is not None and len(objs) == 2 else None
    others = [f for f in FACTORS if f != own] if target else []
    named = named_values(prefix)
    known = [f for f in others if f in named]
    return {
        "target": dict(target) if target else None,
        "companion": dict(companion) if companion else None,
        "text_known": known,
        "text_named": {f: named[f] for f in known},
        "image_only": [f for f in others if f not in known],
        "style": caption_style(caption),
        "heldout_pair": bool(target and (target["shape"], target["colour"]) in heldout_pairs),
    }


# --- rendering ----------------------------------------------------------------------------------
def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """Vertices of a shape of 'radius' r centred at (cx, cy) (y grows downwards)."""
    if shape == "square":
        s = 0.85 * r  # similar area to the circle
        return [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    if shape == "triangle":
        cy += 0.25 * r  # centre the bounding box, not the centroid
        return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in np.deg2rad([-90, 30, 150])]
    if shape == "star":
        pts = []
        for k in range(10):
            a = math.radians(-90 + 36 * k)
            rr = r if k % 2 == 0 else 0.45 * r
            pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
        return pts
    if shape == "heart":
        t = np.linspace(0, 2 * np.pi, 60, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
        k = r / 16.5
        return list(zip((cx + k * x).tolist(), (cy - k * (y + 2.5)).tolist()))
    if shape == "cross":
        a, w = r, 0.36 * r  # arm half-length, arm half-width
        return [(cx - w, cy - a), (cx + w, cy - a), (cx + w, cy - w), (cx + a, cy - w), (cx + a, cy + w),
                (cx + w, cy + w), (cx + w, cy + a), (cx - w, cy + a), (cx - w, cy + w), (cx - a, cy + w),
                (cx - a, cy - w), (cx - w, cy - w)]
    raise ValueError(f"unknown shape {shape!r}")


def render(attrs: dict[str, Any], image_size: int, rng: np.random.Generator) -> Image.Image:
    """Draw an image of the given factors; rng only jitters places, radii and colours slightly."""
    S = image_size * SUPERSAMPLE

    def jitter(rgb: tuple[int, int, int], amount: int) -> tuple[int, int, int]:
        return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in rgb)  # type: ignore[return-value]

    im = Image.new("RGB", (S, S), jitter(BACKGROUNDS[attrs["background"]], 8))
    draw = ImageDraw.Draw(im)
    for obj in objects_of(attrs):
        fx, fy = POSITIONS[obj["position"]]
        cx = S * fx + rng.uniform(-0.025, 0.025) * S
        cy = S * fy + rng.uniform(-0.025, 0.025) * S
        r = S * SIZES[obj["size"]] * rng.uniform(0.92, 1.08)
        fill = jitter(COLOURS[obj["colour"]], 12)
        if obj["shape"] == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        else:
            draw.polygon(_polygon(obj["shape"], cx, cy, r), fill=fill)
    return im.resize((image_size, image_size), Image.LANCZOS)


# --- dataset ----------------------------------------------------------------------------------
@dataclass
class ShapeRecord(SampleRecord):
    index: int = 0  # position in the split: with (seed, split) it determines the image


class LazyRecords(Sequence):
    """A split's records, each drawn the first time it is read, then kept: a job whose features are cached
    reads the selected samples' records only (the store key needs the count and the first and last ids),
    not all of them (1 s for `make run`'s 10,300 images)."""

    def __init__(self, n: int, make: Callable[[int], "ShapeRecord"]):
        self._n, self._make, self._made = n, make, {}

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self._n))]
        i = operator.index(i)
        if not -self._n <= i < self._n:
            raise IndexError(f"record {i} of a split of {self._n}")
        i %= self._n
        if i not in self._made:
            self._made[i] = self._make(i)
        return self._made[i]


def _heldout_set(pairs: Any) -> frozenset[tuple[str, str]]:
    """Validate data.heldout_pairs: a list of [shape, colour] pairs of the world."""
    out = set()
    for p in pairs or ():
        pair = (p,) if isinstance(p, str) else tuple(p)  # a list, tuple or OmegaConf ListConfig
        if len(pair) != 2 or pair[0] not in SHAPES or pair[1] not in COLOURS:
            raise CoxlmmError(
                f"data.heldout_pairs entry {list(pair)!r} is not a (shape, colour) "
                f"pair of the shapes world: give [shape, colour] with shape in {list(SHAPES)} and colour in "
                f"{list(COLOURS)}, e.g. [triangle, blue]."
            )
        out.add((str(pair[0]), str(pair[1])))
    if any(all((s, c) in out for c in COLOURS) for s in SHAPES):
        raise CoxlmmError(f"data.heldout_pairs={sorted(out)} holds out every colour of a shape: keep at least one.")
    return frozenset(out)


class ShapesWorld(CaptionDataset):
    """The shapes world as a captioning dataset.

    Args:
        split: "train", "val" or "test" (independent random streams: fixed splits).
        n_train, n_val, n_test: number of images in each split; this split uses its own.
        seed: world seed; (seed, split, index) determines a sample.
        image_size: side of the square RGB images, pixels.
        p_two: probability that an image holds two objects (else one).
        caption_style: the reference captions of each record: "attribute_first" (default),
            "shape_first" or "both" (see the module docstring).
        heldout_pairs: (shape, colour) pairs that never occur in the train split; None = HELDOUT_PAIRS,
            [] = none.
    """

    name = "shapes"

    def __init__(self, split: str = "train", n_train: int = 4000, n_val: int = 200, n_test: int = 400,
                 seed: int = 0, image_size: int = 128, p_two: float = 0.5, caption_style: str = "attribute_first",
                 heldout_pairs: Any = None):
        if split not in SPLITS:
            raise CoxlmmError(f"split {split!r} (train_split / test_split) is not a split of the shapes world: "
                              f"use one of {list(SPLITS)}.")
        n = {"train": n_train, "val": n_val, "test": n_test}[split]
        if n < 0 or image_size < 32 or not 0.0 <= p_two <= 1.0:
            raise CoxlmmError(
                f"invalid shapes world settings: n_{split}={n} (needs >= 0), image_size={image_size} "
                f"(needs >= 32), p_two={p_two} (needs a probability in [0, 1])."
            )
        if caption_style not in CAPTION_STYLES:
            raise CoxlmmError(f"data.caption_style={caption_style!r} is not a caption style of the shapes world: "
                              f"use one of {list(CAPTION_STYLES)}.")
        self.split, self.seed, self.image_size, self.p_two = split, seed, image_size, p_two
        self.caption_style = caption_style
        self.heldout_pairs = _heldout_set(HELDOUT_PAIRS if heldout_pairs is None else heldout_pairs)
        self._exclude = self.heldout_pairs if split == "train" else frozenset()
        super().__init__(LazyRecords(n, self._record))

    def _record(self, i: int) -> ShapeRecord:
        """Record i of the split: its factors (stream 0 of (seed, split, i)) and reference captions."""
        attrs = sample_attributes(self._rng(i, stream=0), self.p_two, self._exclude)
        attrs["heldout_pair"] = [(s, c) in self.heldout_pairs for s, c in zip(attrs["shape"], attrs["colour"])]
        return ShapeRecord(id=f"shapes-{self.split}-{i:06d}", captions=captions_for(attrs, self.caption_style),
                           attributes=attrs, index=i)

    def _rng(self, index: int, stream: int) -> np.random.Generator:
        # stream 0 draws the factors, stream 1 the rendering jitter: changing one never shifts the other.
        return np.random.default_rng([self.seed, SPLITS[self.split], index, stream])

    def load_image(self, record: SampleRecord) -> Image.Image:
        assert isinstance(record, ShapeRecord)
        return render(record.attributes, self.image_size, self._rng(record.index, stream=1))

    def factor_values(self) -> dict[str, list[str]]:
        """The object factors and their values: shape, colour, size, position."""
        return {f: list(v) for f, v in FACTOR_VALUES.items()}

    def annotate(self, record: Any, caption: str, prefix: str, token: str) -> dict[str, Any]:
        """Target object, companion, text-known / image-only factors, style, held-out flag of a
        selected sample (`annotate_caption`); `record` is a SampleRecord or Sample of this world."""
        return annotate_caption(record.attributes, caption, prefix, token, self.heldout_pairs)

    def named_target(self, caption: str, token: str) -> dict[str, Any] | None:
        """The first object of shape `token` the caption names, with the factors it states (None: missing)."""
        try:
            return next((o for o in parse_caption(caption) if o["shape"] == token.lower()), None)
        except CoxlmmError:  # a steered caption in neither grammar names no object
            return None

    def fingerprint(self) -> dict[str, Any]:
        return {**super().fingerprint(), "generator_version": GENERATOR_VERSION, "split": self.split,
                "seed": self.seed, "image_size": self.image_size, "p_two": self.p_two,
                "caption_style": self.caption_style, "heldout_pairs": sorted(map(list, self.heldout_pairs))}
