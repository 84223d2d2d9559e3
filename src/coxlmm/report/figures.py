"""PNG figures of a grounded dictionary (matplotlib, Agg; no pyplot, so no global figure state).

- `concept_grid`: one row per concept k: its words T_k, then its N_MAS most activating images
  X_k,MAS with their activations v_k.
- `local_interpretation`: for a few test samples: the image (and its caption), its top concepts as
  bars normalised to the top one, each with its words and a couple of its X_k,MAS images.

`row_to_index` maps a row of Z_train (or Z_test) to the dataset index of its sample (a list, as
`EvalContext.train_indices`, or a dict); images come from `dataset[index].image`.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image

from coxlmm.grounding.local import rank_concepts

if TYPE_CHECKING:
    from coxlmm.concepts.base import Dictionary
    from coxlmm.grounding.concept_set import ConceptSet

THUMB_PX = 160  # images are shrunk before plotting: small PNGs, fast drawing
DPI = 100
RANK_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"]  # bar k <-> frame of its images


def _thumbnail(dataset: Any, index: int | None) -> tuple[np.ndarray | None, str]:
    """(H, W, 3) uint8 thumbnail of dataset[index] and its first caption; (None, "") when unreadable."""
    if index is None:
        return None, ""
    sample = dataset[int(index)]
    caption = sample.captions[0] if getattr(sample, "captions", None) else ""
    if sample.image is None:
        return None, caption
    im = sample.image.convert("RGB")
    im.thumbnail((THUMB_PX, THUMB_PX), Image.Resampling.BILINEAR)
    return np.asarray(im), caption


def _index(row_to_index: Sequence[int] | Mapping[int, int], row: int) -> int | None:
    try:
        return int(row_to_index[row])
    except (IndexError, KeyError):
        return None


def _show(ax, image: np.ndarray | None, title: str = "", colour: str | None = None, fontsize: float = 8) -> None:
    """An image (or a grey 'no image' square of the same shape, so cells stay aligned)."""
    ax.set_xticks([])
    ax.set_yticks([])
    if image is None:
        ax.imshow(np.full((THUMB_PX, THUMB_PX, 3), 238, dtype=np.uint8))
        ax.text(0.5, 0.5, "no image", ha="center", va="center", fontsize=fontsize, color="#888888",
                transform=ax.transAxes)
    else:
        ax.imshow(image)
    for spine in ax.spines.values():
        spine.set_visible(colour is not None)
        if colour is not None:
            spine.set_edgecolor(colour)
            spine.set_linewidth(2.5)
    if title:
        ax.set_title(title, fontsize=fontsize, pad=2)


def _blank(ax) -> None:
    ax.axis("off")


def _wrap(text: str, width: int) -> str:
    return "\n".join(textwrap.wrap(text, width)) if text else ""


def _header(cs: "ConceptSet") -> str:
    parts = [cs.method or "dictionary", f"token '{cs.token}'" if cs.token else "", f"layer {(cs.extra or {}).get('layer_name', cs.layer)}",
             f"K = {cs.n_concepts}"]
    return " · ".join(p for p in parts if p)


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
    then its X_k,MAS images titled with v_k. Rows with fewer than N_MAS samples leave blanks.
    """
    cs = concept_set
    ks = list(range(cs.n_concepts)) if concepts is None else list(concepts)
    n_mas = max([len(r) for r in cs.top_indices] + [1])
    text_w, cell = 2.6, 1.25  # inches
    fig = Figure(figsize=(text_w + n_mas * cell, 0.55 + len(ks) * (cell + 0.15)), dpi=DPI)
    grid = fig.add_gridspec(len(ks), 1 + n_mas, width_ratios=[text_w / cell] + [1] * n_mas,
                            left=0.01, right=0.99, top=1 - 0.45 / fig.get_figheight(), bottom=0.01,
                            wspace=0.06, hspace=0.28)
    fig.suptitle(title or f"Concepts — {_header(cs)}", fontsize=12, y=1 - 0.12 / fig.get_figheight(), va="top")
    for i, k in enumerate(ks):
        ax = fig.add_subplot(grid[i, 0])
        _blank(ax)
        words = ", ".join(cs.words[k][:n_words]) or "(no words)"
        ax.text(0.0, 0.92, f"concept {k}", fontsize=10, fontweight="bold", va="top", transform=ax.transAxes)
        ax.text(0.0, 0.70, _wrap(words, 30), fontsize=9, va="top", transform=ax.transAxes,
                color="#222222" if cs.words[k] else "#888888", linespacing=1.3)
        activations = cs.top_activations(k)
        for j in range(n_mas):
            ax = fig.add_subplot(grid[i, 1 + j])
            if j >= len(cs.top_indices[k]):
                _blank(ax)
                if j == 0:
                    ax.text(0.0, 0.5, "no activating sample", fontsize=8, color="#888888", va="center",
                            transform=ax.transAxes)
                continue
            image, _ = _thumbnail(dataset, _index(row_to_index, cs.top_indices[k][j]))
            _show(ax, image, f"v = {activations[j]:.3g}", fontsize=7)
    return _save(fig, path)


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
    """
    cs = concept_set
    V = dictionary.encode(Z_test) if V_test is None else V_test
    top = min(top, cs.n_concepts)
    ranking = rank_concepts(V, top)
    M = V.shape[0]
    img_w, bar_w, cell = 1.6, 3.4, 1.05
    fig = Figure(figsize=(img_w + bar_w + top * n_mas * cell + 0.3, 0.6 + M * 1.95), dpi=DPI)
    width_ratios = [img_w, bar_w] + [cell] * (top * n_mas)
    grid = fig.add_gridspec(M, 2 + top * n_mas, width_ratios=width_ratios, left=0.01, right=0.99,
                            top=1 - 0.5 / fig.get_figheight(), bottom=0.35 / fig.get_figheight(),
                            wspace=0.08, hspace=0.55)
    fig.suptitle(title or f"Local interpretation of test samples — {_header(cs)}", fontsize=12,
                 y=1 - 0.12 / fig.get_figheight(), va="top")
    for i in range(M):
        image, caption = _thumbnail(test_dataset, _index(test_row_to_index, i))
        ax = fig.add_subplot(grid[i, 0])
        _show(ax, image)
        ax.set_xlabel(_wrap(caption, 26), fontsize=7, labelpad=3)

        order, scores = ranking.order[i].tolist(), ranking.scores[i].tolist()
        ax = fig.add_subplot(grid[i, 1])
        _bars(ax, order, scores, cs, n_words)

        for r, k in enumerate(order):
            rows = cs.top_indices[k][:n_mas]
            for j in range(n_mas):
                ax = fig.add_subplot(grid[i, 2 + r * n_mas + j])
                if j >= len(rows):
                    _blank(ax)
                    if j == 0:
                        ax.text(0.5, 0.5, f"concept {k}\nno activating\nsample", ha="center", va="center",
                                fontsize=7, color="#888888", transform=ax.transAxes)
                    continue
                mas, _ = _thumbnail(train_dataset, _index(train_row_to_index, rows[j]))
                _show(ax, mas, colour=RANK_COLOURS[r % len(RANK_COLOURS)])
                if j == 0:  # one label centred over the concept's images
                    x = 0.5 * min(len(rows), n_mas) + 0.04 * (min(len(rows), n_mas) - 1)
                    ax.text(x, 1.04, f"concept {k}", ha="center", va="bottom", fontsize=8, transform=ax.transAxes)
    return _save(fig, path)


def _bars(ax, order: list[int], scores: list[float], cs: "ConceptSet", n_words: int) -> None:
    """Horizontal bars, best on top, each labelled 'c_k: words' above it."""
    n = len(order)
    y = np.arange(n)[::-1]
    colours = [RANK_COLOURS[r % len(RANK_COLOURS)] for r in range(n)]
    ax.barh(y, [max(s, 0.0) for s in scores], height=0.42, color=colours, alpha=0.85)
    for yi, k, s in zip(y, order, scores):
        ax.text(0.0, yi + 0.26, _ellipsis(cs.label(k, n_words), 46), fontsize=8, va="bottom", ha="left")
        ax.text(max(s, 0.0) + 0.02, yi, f"{s:.2f}", fontsize=7, va="center", color="#444444")
    ax.set_xlim(0, 1.18)
    ax.set_ylim(-0.5, n - 0.2)
    ax.set_yticks([])
    ax.set_xticks([0, 0.5, 1.0])
    ax.tick_params(axis="x", labelsize=7)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)


def _ellipsis(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _save(fig: Figure, path: str | Path) -> str:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, facecolor="white")
    return str(path)
