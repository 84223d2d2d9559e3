"""The generated world: captioned images of coloured shapes with known factors (`data=shapes`).

Every image holds 1 or 2 objects. Each object has a shape, a colour, a size and a position; the
image has a background. Factors are drawn independently from a seeded stream per
(seed, split, index), so a sample is the same on every machine and the splits never share a
stream. Images are rendered on the fly with PIL (about 1 ms each at 128 px), so nothing is cached.

Attributes of a sample (`SampleRecord.attributes`, JSON-friendly), objects in caption order:

    {"n_objects": 2,
     "background": "black",
     "shape":    ["circle", "star"],       # one entry per object, aligned across the four lists
     "colour":   ["red", "blue"],
     "size":     ["large", "small"],
     "position": ["left", "top"]}

A recovery metric asks "does the image hold a <value> object" with `value in attributes[factor]`.
Objects are listed in a canonical order (left, right, top, bottom, center), the order in which the
captions name them. Two objects never share a position and never use "center" (so they never
overlap). The background is a nuisance factor: it is labelled but never named in a caption.

Captions (3 per image, like COCO's several references; all name the same facts):

    one object:  "A large red circle on the left."  "There is a large red circle on the left."
                 "An image of a large red circle on the left."
    two objects: "A large red circle on the left and a small blue star at the top."
                 "A ... with a ..."   "There is a ... and a ..."

`parse_caption` reads objects back from any caption with the same grammar (used by the quality
bench and the tests).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from coxlmm.data.base import CaptionDataset, SampleRecord
from coxlmm.errors import CoxlmmError

GENERATOR_VERSION = 1

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
SPLITS: dict[str, int] = {"train": 0, "val": 1, "test": 2}

ONE_OBJECT_TEMPLATES = ("A {0}.", "There is a {0}.", "An image of a {0}.")
TWO_OBJECT_TEMPLATES = ("A {0} and a {1}.", "A {0} with a {1}.", "There is a {0} and a {1}.")

SUPERSAMPLE = 2  # draw at 2x and downsample: smooth edges without an antialiasing rasteriser


# --- factors and captions ---------------------------------------------------------------------
def sample_attributes(rng: np.random.Generator, p_two: float) -> dict[str, Any]:
    """Draw the factors of one image (objects in canonical position order)."""
    n = 2 if rng.random() < p_two else 1
    pos_names = list(POSITIONS)
    # Two objects take two distinct non-centre places, so even two large ones never overlap.
    places = pos_names if n == 1 else pos_names[:4]
    chosen = sorted(rng.choice(len(places), size=n, replace=False).tolist())
    objs = [
        {
            "shape": SHAPES[int(rng.integers(len(SHAPES)))],
            "colour": list(COLOURS)[int(rng.integers(len(COLOURS)))],
            "size": list(SIZES)[int(rng.integers(len(SIZES)))],
            "position": places[i],
        }
        for i in chosen
    ]
    attrs: dict[str, Any] = {"n_objects": n, "background": list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]}
    for f in FACTORS:
        attrs[f] = [o[f] for o in objs]
    return attrs


def objects_of(attrs: dict[str, Any]) -> list[dict[str, str]]:
    """Per-object dicts {shape, colour, size, position} from the flat per-factor lists."""
    return [{f: attrs[f][i] for f in FACTORS} for i in range(attrs["n_objects"])]


def object_phrase(obj: dict[str, str]) -> str:
    return f"{obj['size']} {obj['colour']} {obj['shape']} {WHERE[obj['position']]}"


def captions_for(attrs: dict[str, Any]) -> list[str]:
    """All reference captions of an image (one per template)."""
    phrases = [object_phrase(o) for o in objects_of(attrs)]
    templates = ONE_OBJECT_TEMPLATES if len(phrases) == 1 else TWO_OBJECT_TEMPLATES
    return [t.format(*phrases) for t in templates]


_OBJECT_RE = re.compile(
    r"\b(?:(?P<size>{sizes})\s+)?(?:(?P<colour>{colours})\s+)?(?P<shape>{shapes})s?\b(?:\s+(?P<where>{wheres}))?".format(
        sizes="|".join(SIZES),
        colours="|".join(COLOURS),
        shapes="|".join(SHAPES),
        wheres="|".join(re.escape(w) for w in WHERE.values()),
    ),
    re.IGNORECASE,
)
_POSITION_OF = {w: p for p, w in WHERE.items()}


def parse_caption(text: str) -> list[dict[str, str | None]]:
    """Objects named in a caption, in order: [{shape, colour, size, position}] (None where missing)."""
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


class ShapesWorld(CaptionDataset):
    """The shapes world as a captioning dataset.

    Args:
        split: "train", "val" or "test" (independent random streams: fixed splits).
        n_train, n_val, n_test: number of images in each split; this split uses its own.
        seed: world seed; (seed, split, index) determines a sample.
        image_size: side of the square RGB images, pixels.
        p_two: probability that an image holds two objects (else one).
    """

    name = "shapes"

    def __init__(self, split: str = "train", n_train: int = 4000, n_val: int = 200, n_test: int = 400,
                 seed: int = 0, image_size: int = 128, p_two: float = 0.5):
        if split not in SPLITS:
            raise CoxlmmError(f"data.split={split!r} is not a split of the shapes world: use one of {list(SPLITS)}.")
        n = {"train": n_train, "val": n_val, "test": n_test}[split]
        if n < 0 or image_size < 32 or not 0.0 <= p_two <= 1.0:
            raise CoxlmmError(
                f"invalid shapes world settings: n_{split}={n} (needs >= 0), image_size={image_size} "
                f"(needs >= 32), p_two={p_two} (needs a probability in [0, 1])."
            )
        self.split, self.seed, self.image_size, self.p_two = split, seed, image_size, p_two
        records = []
        for i in range(n):
            attrs = sample_attributes(self._rng(i, stream=0), p_two)
            records.append(ShapeRecord(id=f"shapes-{split}-{i:06d}", captions=captions_for(attrs),
                                       attributes=attrs, index=i))
        super().__init__(records)

    def _rng(self, index: int, stream: int) -> np.random.Generator:
        # stream 0 draws the factors, stream 1 the rendering jitter: changing one never shifts the other.
        return np.random.default_rng([self.seed, SPLITS[self.split], index, stream])

    def load_image(self, record: SampleRecord) -> Image.Image:
        assert isinstance(record, ShapeRecord)
        return render(record.attributes, self.image_size, self._rng(record.index, stream=1))

    def factor_values(self) -> dict[str, list[str]]:
        return {"shape": list(SHAPES), "colour": list(COLOURS), "size": list(SIZES), "position": list(POSITIONS)}

    def annotate(self, record: SampleRecord, caption: str, prefix: str, token: str) -> dict[str, Any]:
        """The target object (the one whose shape is t; of two, the first the caption names), its
        companion, and which of the target's factor values the prefix already names."""
        objs = objects_of(record.attributes)
        named = [o for o in parse_caption(caption) if o["shape"] == token.lower()]
        cands = [o for o in objs if o["shape"] == token.lower()]
        if not cands:
            return {}
        target = cands[0]
        if len(cands) > 1 and named and named[0]["position"]:
            target = next((o for o in cands if o["position"] == named[0]["position"]), target)
        companion = next((o for o in objs if o is not target), None)
        words = set(re.findall(r"[a-z]+", prefix.lower()))
        text_known = [f for f in FACTORS if f != "shape" and set(WHERE[target[f]].split()[-1:] if f == "position"
                                                                      else [target[f]]) <= words]
        return {"target": target, "companion": companion, "text_known": text_known,
                "image_only": [f for f in FACTORS if f != "shape" and f not in text_known]}

    def named_target(self, caption: str, token: str) -> dict[str, Any] | None:
        """The first object of shape `token` the caption names, with the factors it states (None: missing)."""
        return next((o for o in parse_caption(caption) if o["shape"] == token.lower()), None)

    def fingerprint(self) -> dict[str, Any]:
        return {**super().fingerprint(), "generator_version": GENERATOR_VERSION, "split": self.split,
                "seed": self.seed, "image_size": self.image_size, "p_two": self.p_two}
