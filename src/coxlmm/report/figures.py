"""PNG figures of a grounded dictionary, each drawn as ONE RGB image (PIL; no matplotlib figure, no global state).

- `concept_grid`: one row per concept k: its words T_k, then its N_MAS most activating images
  X_k,MAS with their activations v_k.
- `local_interpretation`: for a few test samples: the image (and its caption), its top concepts as
  bars normalised to the top one, each with its words and a couple of its X_k,MAS images.

`row_to_index` maps a row of Z_train (or Z_test) to the dataset index of its sample (a list, as
`EvalContext.train_indices`, or a dict); images come from `dataset[index].image`.

How a figure is made: a white canvas (W, H) of the size its layout (`GridLayout`, `LocalLayout`) gives;
each thumbnail is shrunk (or grown) to fit its square cell and pasted, centred; 'no image' cells are
grey squares, frames and bars are rectangles; the texts are drawn with DejaVu Sans (matplotlib's font
file). One PNG write. Drawing each image in a matplotlib Axes of its own cost ~20 ms an image (152 Axes for
K = 20 x 7); pasting one costs ~1 ms. Coordinates are pixels, x right and y down from the top-left corner,
boxes are (x0, y0, x1, y1) with x1, y1 exclusive.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image, ImageColor, ImageDraw, ImageFont

from coxlmm.errors import CoxlmmError
from coxlmm.grounding.local import rank_concepts
from coxlmm.io import atomic_write
from coxlmm.packages import package_dir

if TYPE_CHECKING:
    from coxlmm.concepts.base import Dictionary
    from coxlmm.grounding.concept_set import ConceptSet

Box = tuple[int, int, int, int]  # (x0, y0, x1, y1), pixels, x1 and y1 exclusive

RANK_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"]  # bar k <-> frame of its images
WHITE, INK, GREY_INK, NO_IMAGE = (255, 255, 255), (34, 34, 34), (136, 136, 136), (238, 238, 238)
DPI = 100  # written into the PNG, as the matplotlib figures had it
FRAME_PX = 3  # coloured frame drawn around (outside) an image
PNG_COMPRESS_LEVEL = 1  # zlib level: the grid writes in 125 ms, not 170 ms (level 6), files ~15% larger
# text sizes in pixels (the old figures' points at 100 dpi)
TITLE_PX, NAME_PX, WORDS_PX, LABEL_PX, SMALL_PX = 17, 14, 12, 11, 10


# --- geometry ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GridLayout:
    """Concept grid: a header, then one row per concept:

        | pad | 'concept k' + words (text_w) | gap | cell | gap | cell | ... (n_mas cells) | pad |

    Each row is a `title_h` strip ('v = ...' over each cell), then the cells (cell x cell), then `row_gap`.
    """

    n_rows: int
    n_mas: int
    cell: int = 112
    text_w: int = 250
    gap: int = 8
    title_h: int = 14
    row_gap: int = 14
    header_h: int = 40
    pad: int = 10

    @property
    def row_h(self) -> int:
        return self.title_h + self.cell + self.row_gap

    @property
    def size(self) -> tuple[int, int]:
        """(W, H) of the PNG."""
        return (self.pad + self.text_w + self.n_mas * (self.gap + self.cell) + self.pad,
                self.header_h + self.n_rows * self.row_h + self.pad)

    def row_top(self, i: int) -> int:
        return self.header_h + i * self.row_h

    def cell_box(self, i: int, j: int) -> Box:
        """Square of row i's X_k,MAS image j (under its 'v = ...' strip)."""
        x0 = self.pad + self.text_w + self.gap + j * (self.cell + self.gap)
        y0 = self.row_top(i) + self.title_h
        return x0, y0, x0 + self.cell, y0 + self.cell


@dataclass(frozen=True)
class LocalLayout:
    """Local interpretation: a header, then one row per test sample:

        | pad | test image, caption under it | col_gap | bars (bar_w) | col_gap | concept 1's n_mas images |
          group_gap | concept 2's ... | pad

    Bar r: its label 'c_k: words' on a `slot`-high line, the bar under it (bar_h high, bar_len long at
    score 1.0), its score after it; an axis with ticks 0, 0.5, 1 under the last bar. Each concept's images
    sit under a 'concept k' label (label_h high).
    """

    n_rows: int
    top: int
    n_mas: int
    image: int = 135
    caption_h: int = 30
    bar_w: int = 330
    bar_len: int = 270
    bar_h: int = 14
    slot: int = 36
    axis_h: int = 24
    mas: int = 100
    gap: int = 8
    group_gap: int = 18
    label_h: int = 18
    col_gap: int = 20
    row_gap: int = 24
    header_h: int = 40
    pad: int = 10

    @property
    def row_h(self) -> int:
        return max(self.image + self.caption_h, self.top * self.slot + self.axis_h, self.label_h + self.mas + FRAME_PX)

    @property
    def group_w(self) -> int:
        """Width of one concept's n_mas images."""
        return self.n_mas * self.mas + (self.n_mas - 1) * self.gap

    @property
    def size(self) -> tuple[int, int]:
        """(W, H) of the PNG."""
        w = (self.pad + self.image + self.col_gap + self.bar_w + self.col_gap
             + self.top * self.group_w + (self.top - 1) * self.group_gap + self.pad)
        return w, self.header_h + self.n_rows * self.row_h + max(self.n_rows - 1, 0) * self.row_gap + self.pad

    def row_top(self, i: int) -> int:
        return self.header_h + i * (self.row_h + self.row_gap)

    def image_box(self, i: int) -> Box:
        """Square of test sample i's image (its caption goes under it)."""
        x0, y0 = self.pad, self.row_top(i)
        return x0, y0, x0 + self.image, y0 + self.image

    def bar_box(self, i: int, r: int) -> Box:
        """Where row i's bar r would be at score 1.0 (a bar of score s ends at x0 + round(s * bar_len))."""
        x0 = self.pad + self.image + self.col_gap
        y0 = self.row_top(i) + r * self.slot + (self.slot - self.bar_h - 2)
        return x0, y0, x0 + self.bar_len, y0 + self.bar_h

    def mas_box(self, i: int, r: int, j: int) -> Box:
        """Square of row i's concept r's X_k,MAS image j (frame drawn outside it)."""
        x0 = (self.pad + self.image + self.col_gap + self.bar_w + self.col_gap
              + r * (self.group_w + self.group_gap) + j * (self.mas + self.gap))
        y0 = self.row_top(i) + self.label_h
        return x0, y0, x0 + self.mas, y0 + self.mas


# --- drawing -----------------------------------------------------------------------------------------
@lru_cache(maxsize=None)
def _font(px: int, bold: bool = False) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVu Sans at `px` pixels (the file matplotlib ships, found without importing matplotlib: 0.2 s); Pillow's
    own font if it cannot be read."""
    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    try:
        fonts = Path(package_dir("matplotlib", "matplotlib")) / "mpl-data" / "fonts" / "ttf"
        return ImageFont.truetype(str(fonts / name), px)
    except (CoxlmmError, OSError):  # no matplotlib, or another layout
        return ImageFont.load_default(px)


def _fade(colour: str, alpha: float = 0.85) -> tuple[int, int, int]:
    """The colour at `alpha` over white (the bars' look)."""
    return tuple(round(alpha * c + (1 - alpha) * 255) for c in ImageColor.getrgb(colour))


def _fit_line(text: str, font, width: int) -> str:
    """`text`, cut and ended with '…' when wider than `width` pixels."""
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "…") > width:
        text = text[:-1]
    return text.rstrip(" ,") + "…"


def _wrap(text: str, font, width: int, max_lines: int) -> list[str]:
    """Greedy word wrap to `width` pixels, at most `max_lines` lines (the last ends in '…' if cut)."""
    lines: list[str] = []
    for word in text.split():
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1].rstrip(",") + " …"
    return [_fit_line(line, font, width) for line in lines]


def _text_lines(draw: ImageDraw.ImageDraw, xy: tuple[float, float], lines: Sequence[str], font, line_h: int, *,
                fill=INK, anchor: str = "la") -> None:
    """Lines from xy down, `line_h` apart, each placed by `anchor` ('la': left/top, 'ma': centre/top)."""
    x, y = xy
    for n, line in enumerate(lines):
        draw.text((x, y + n * line_h), line, font=font, fill=fill, anchor=anchor)


def _paste(canvas: Image.Image, draw: ImageDraw.ImageDraw, image: Image.Image | None, box: Box,
           frame: str | None = None) -> None:
    """The image centred in the square `box` (already fitted to it), or a grey 'no image' square;
    with `frame`, a FRAME_PX frame of that colour around it."""
    x0, y0, x1, y1 = box
    if image is None:
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=NO_IMAGE)
        draw.text(((x0 + x1) / 2, (y0 + y1) / 2), "no image", font=_font(SMALL_PX), fill=GREY_INK, anchor="mm")
    else:
        w, h = image.size
        x0, y0 = x0 + (x1 - x0 - w) // 2, y0 + (y1 - y0 - h) // 2
        x1, y1 = x0 + w, y0 + h
        canvas.paste(image, (x0, y0))
    if frame is not None:
        draw.rectangle((x0 - FRAME_PX, y0 - FRAME_PX, x1 - 1 + FRAME_PX, y1 - 1 + FRAME_PX),
                       outline=ImageColor.getrgb(frame), width=FRAME_PX)


def _title(draw: ImageDraw.ImageDraw, width: int, text: str) -> None:
    font = _font(TITLE_PX)
    draw.text((width / 2, 10), _fit_line(text, font, width - 20), font=font, fill=(0, 0, 0), anchor="ma")


# --- data --------------------------------------------------------------------------------------------
def _index(row_to_index: Sequence[int] | Mapping[int, int], row: int) -> int | None:
    try:
        return int(row_to_index[row])
    except (IndexError, KeyError):
        return None


class _Thumbnails:
    """row -> (RGB image of that row's sample fitted in px x px, its first caption); (None, caption) when
    the image is unreadable, (None, "") when the row has no sample. Each sample is loaded once per figure."""

    def __init__(self, dataset: Any, row_to_index: Sequence[int] | Mapping[int, int], px: int):
        self.dataset, self.row_to_index, self.px = dataset, row_to_index, px
        self._done: dict[int, tuple[Image.Image | None, str]] = {}

    def __call__(self, row: int) -> tuple[Image.Image | None, str]:
        index = _index(self.row_to_index, row)
        if index is None:
            return None, ""
        if index not in self._done:
            sample = self.dataset[index]
            caption = sample.captions[0] if getattr(sample, "captions", None) else ""
            image = None
            if sample.image is not None:
                image = sample.image.convert("RGB")
                scale = self.px / max(image.size)  # the long side fills the cell (small images grow)
                size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
                image = image.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)
            self._done[index] = (image, caption)
        return self._done[index]


def _header(cs: "ConceptSet") -> str:
    parts = [cs.method or "dictionary", f"token '{cs.token}'" if cs.token else "", f"layer {(cs.extra or {}).get('layer_name', cs.layer)}",
             f"K = {cs.n_concepts}"]
    return " · ".join(p for p in parts if p)


# --- the figures -------------------------------------------------------------------------------------
def concept_grid(
    concept_set: "ConceptSet",
    dataset: Any,
    row_to_index: Sequence[int] | Mapping[int, int],
    path: str | Path,
    *,
    n_words: int = 8,
    concepts: Sequence[int] | None = None,
    title: str | None = None,
) -> str:
    """Write the concept grid PNG to `path`; returns the path.

    One row per concept (all K, or `concepts`): 'concept k' and its words T_k (first `n_words`),
    then its X_k,MAS images titled with v_k. Rows with fewer than N_MAS samples leave blanks
    ('no activating sample' when there is none); a sample without a readable image is a grey cell.
    Geometry: `GridLayout(len(concepts), N_MAS)`, N_MAS the longest X_k,MAS of the set.
    """
    cs = concept_set
    ks = list(range(cs.n_concepts)) if concepts is None else list(concepts)
    n_mas = max([len(r) for r in cs.top_indices] + [1])
    lay = GridLayout(len(ks), n_mas)
    canvas = Image.new("RGB", lay.size, WHITE)
    draw = ImageDraw.Draw(canvas)
    _title(draw, lay.size[0], title or f"Concepts — {_header(cs)}")
    thumbs = _Thumbnails(dataset, row_to_index, lay.cell)
    name_font, words_font, small = _font(NAME_PX, bold=True), _font(WORDS_PX), _font(SMALL_PX)
    words_lines = (lay.row_h - lay.row_gap - 22) // (WORDS_PX + 4)
    for i, k in enumerate(ks):
        y = lay.row_top(i) + 6
        draw.text((lay.pad, y), f"concept {k}", font=name_font, fill=(0, 0, 0))
        words = ", ".join(cs.words[k][:n_words]) or "(no words)"
        _text_lines(draw, (lay.pad, y + 22), _wrap(words, words_font, lay.text_w - 10, words_lines), words_font,
                    WORDS_PX + 4, fill=INK if cs.words[k] else GREY_INK)
        rows, activations = cs.top_indices[k][:n_mas], cs.top_activations(k)
        if not rows:
            x0, y0, _, y1 = lay.cell_box(i, 0)
            draw.text((x0, (y0 + y1) / 2), "no activating sample", font=_font(LABEL_PX), fill=GREY_INK, anchor="lm")
        for j, row in enumerate(rows):
            box = lay.cell_box(i, j)
            draw.text(((box[0] + box[2]) / 2, box[1] - 2), f"v = {activations[j]:.3g}", font=small, fill=(0, 0, 0),
                      anchor="md")
            _paste(canvas, draw, thumbs(row)[0], box)
    return _save(canvas, path)


def local_interpretation(
    dictionary: "Dictionary",
    concept_set: "ConceptSet",
    Z_test: torch.Tensor,
    test_dataset: Any,
    test_row_to_index: Sequence[int] | Mapping[int, int],
    train_dataset: Any,
    train_row_to_index: Sequence[int] | Mapping[int, int],
    path: str | Path,
    *,
    top: int = 3,
    n_mas: int = 2,
    n_words: int = 5,
    V_test: torch.Tensor | None = None,
    title: str | None = None,
) -> str:
    """Write the local-interpretation PNG for the test samples Z_test (M, B); returns the path.

    Each row: the test image with its caption | its `top` concepts as bars v_k / max v (top = 1.0),
    labelled with their words | `n_mas` of each concept's X_k,MAS (frames coloured like its bar).
    `V_test` (M, K), when already encoded, skips `dictionary.encode(Z_test)`.
    Geometry: `LocalLayout(M, top, n_mas)`.
    """
    cs = concept_set
    V = dictionary.encode(Z_test) if V_test is None else V_test
    top = min(top, cs.n_concepts)
    ranking = rank_concepts(V, top)
    M = V.shape[0]
    lay = LocalLayout(M, top, n_mas)
    canvas = Image.new("RGB", lay.size, WHITE)
    draw = ImageDraw.Draw(canvas)
    _title(draw, lay.size[0], title or f"Local interpretation of test samples — {_header(cs)}")
    test_thumbs = _Thumbnails(test_dataset, test_row_to_index, lay.image)
    mas_thumbs = _Thumbnails(train_dataset, train_row_to_index, lay.mas)
    small, label = _font(SMALL_PX), _font(LABEL_PX)
    for i in range(M):
        image, caption = test_thumbs(i)
        box = lay.image_box(i)
        _paste(canvas, draw, image, box)
        _text_lines(draw, ((box[0] + box[2]) / 2, box[3] + 4), _wrap(caption, small, lay.image + lay.col_gap - 4, 2),
                    small, SMALL_PX + 2, anchor="ma")

        order, scores = ranking.order[i].tolist(), ranking.scores[i].tolist()
        _bars(draw, lay, i, order, scores, cs, n_words)

        for r, k in enumerate(order):
            rows = cs.top_indices[k][:n_mas]
            colour = RANK_COLOURS[r % len(RANK_COLOURS)]
            if not rows:
                x0, y0, x1, y1 = lay.mas_box(i, r, 0)
                _text_lines(draw, ((x0 + x1) / 2, y0 + 25), [f"concept {k}", "no activating", "sample"], small,
                            SMALL_PX + 3, fill=GREY_INK, anchor="ma")
                continue
            for j, row in enumerate(rows):
                _paste(canvas, draw, mas_thumbs(row)[0], lay.mas_box(i, r, j), frame=colour)
            x0, y0 = lay.mas_box(i, r, 0)[:2]  # one label centred over the concept's images
            x1 = lay.mas_box(i, r, len(rows) - 1)[2]
            draw.text(((x0 + x1) / 2, y0 - FRAME_PX - 3), f"concept {k}", font=label, fill=(0, 0, 0), anchor="md")
    return _save(canvas, path)


def _bars(draw: ImageDraw.ImageDraw, lay: LocalLayout, i: int, order: list[int], scores: list[float],
          cs: "ConceptSet", n_words: int) -> None:
    """Row i's horizontal bars, best on top, each labelled 'c_k: words' above it and its score after it;
    an axis 0 - 0.5 - 1 under them."""
    label, small = _font(LABEL_PX), _font(SMALL_PX)
    for r, (k, s) in enumerate(zip(order, scores)):
        x0, y0, _, y1 = lay.bar_box(i, r)
        end = x0 + round(max(s, 0.0) * lay.bar_len)
        draw.text((x0, y0 - 3), _fit_line(cs.label(k, n_words), label, lay.bar_w - 5), font=label, fill=(0, 0, 0),
                  anchor="ld")
        if end > x0:
            draw.rectangle((x0, y0, end - 1, y1 - 1), fill=_fade(RANK_COLOURS[r % len(RANK_COLOURS)]))
        draw.text((end + 5, (y0 + y1) / 2), f"{s:.2f}", font=small, fill=(68, 68, 68), anchor="lm")
    x0 = lay.bar_box(i, 0)[0]
    y = lay.row_top(i) + len(order) * lay.slot + 4
    draw.line((x0, y, x0 + round(1.18 * lay.bar_len), y), fill=(0, 0, 0), width=1)
    for t in (0.0, 0.5, 1.0):
        x = x0 + round(t * lay.bar_len)
        draw.line((x, y, x, y + 4), fill=(0, 0, 0), width=1)
        draw.text((x, y + 6), f"{t:.1f}", font=small, fill=(0, 0, 0), anchor="ma")


def _save(canvas: Image.Image, path: str | Path) -> str:
    atomic_write(path, lambda tmp: canvas.save(tmp, format="PNG", compress_level=PNG_COMPRESS_LEVEL, dpi=(DPI, DPI)))
    return str(path)
