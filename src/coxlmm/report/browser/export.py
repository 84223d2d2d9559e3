"""The concept browser's data: one JSON document per run (layer), built from in-memory objects.

    U        (K, B)   concept dictionary (`concepts.U`)
    V_train  (M, K)   activations of the M training samples; row i <-> train[i]
    V_test   (M', K)  activations of the M' test samples (U fixed); row i <-> test[i]; or None
    logits   (K, vocab) = lens.unembed(U): the logit lens of each concept

`logit_lens` reads the model (its unembedding and tokenizer), `build_export` is pure: tensors and
rows in, a JSON-ready dict out. The schema (field names follow SAEDashboard / Neuronpedia where
they mean the same) is documented in docs/browser.md; `SCHEMA` names its version.

Every image a page shows is named by `thumb_name(split, index)` (a file next to the page); the
page, not this module, writes those files.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from coxlmm.grounding.local import rank_concepts
from coxlmm.metrics.schema import ConceptColumn
from coxlmm.grounding.text import KEPT, filter_reasons, pieces_of, top_token_ids

SCHEMA = "coxlmm.browser/2"
THUMB_DIR = "thumbs"
N_HIST_BINS = 24


def thumb_name(split: str, index: int) -> str:
    """Relative path of a sample's thumbnail next to the page: thumbs/<split>_<dataset index>.jpg."""
    return f"{THUMB_DIR}/{split}_{int(index)}.jpg"


def _num(x: Any, digits: int = 5) -> float | None:
    """A JSON number (rounded), None for NaN / inf / non-numbers."""
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return round(x, digits) if math.isfinite(x) else None


# --- logit lens (reads the model) -------------------------------------------------------------------

@torch.no_grad()
def logit_lens(lens: Any, U: torch.Tensor, words: Sequence[Sequence[str]], *, n_top: int, n_words: int,
               keep_words: Iterable[str] = frozenset()) -> list[dict[str, list]]:
    """The top `n_top` tokens of W_U · norm(u_k) for each concept, with the word filter's verdict.

    lens: anything with `.unembed(U (K, B)) -> (K, vocab)` and `.tokenizer` or `.pieces` (`grounding.text.pieces_of`).
    words: T_k as the run computed them (`ConceptSet.words`); they decide what is shown as kept: a
    token the filter keeps whose word is not in T_k (other filter settings) reads "not in T_k".
    keep_words: the dataset's factor words, which the filter never drops (`filter_words(keep=...)`).
    Returns K dicts of parallel lists: pos_token_ids, pos_str, pos_values, pos_filter.
    """
    logits = lens.unembed(U).float().cpu()  # (K, vocab), computed once
    top = top_token_ids(lambda _: logits, U, n_top)  # (K, n_top)
    pieces_of_ids = pieces_of(lens)
    out = []
    for k, row in enumerate(top.tolist()):
        pieces = pieces_of_ids(row)
        reasons = filter_reasons(pieces, n_words, keep=keep_words)
        T_k = {w.casefold() for w in words[k]}
        verdict = [r if r != KEPT or p.strip().lstrip("Ġ▁").casefold() in T_k else "not in T_k"
                   for p, r in zip(pieces, reasons)]
        out.append({"pos_token_ids": row, "pos_str": pieces,
                    "pos_values": [_num(v, 4) for v in logits[k, row].tolist()], "pos_filter": verdict})
    return out


# --- the document (pure) ------------------------------------------------------------------------------

def _sample(split: str, row: Mapping[str, Any], **values: Any) -> dict[str, Any]:
    return {"split": split, "index": int(row["index"]), "id": str(row["id"]),
            "caption": row.get("caption", ""), "captions": list(row.get("captions", [])),
            **values, "image": thumb_name(split, row["index"])}


def histogram(v_train: np.ndarray, v_test: np.ndarray | None, n_bins: int = N_HIST_BINS) -> dict[str, list]:
    """Equal-width bins over the non-zero activations of both splits (zeros are the 1 - density mass).
    Returns bin centres (`freq_hist_data_bar_values`), counts per split and the edges."""
    both = np.concatenate([v_train, v_test if v_test is not None else np.empty(0)])
    nz = both[both != 0]
    if nz.size == 0:
        return {"freq_hist_data_bar_values": [], "freq_hist_data_bar_heights": [],
                "freq_hist_data_bar_heights_test": [], "freq_hist_data_bin_edges": []}
    lo, hi = float(nz.min()), float(nz.max())
    if hi <= lo:
        lo, hi = lo - 0.5 * abs(lo or 1), hi + 0.5 * abs(hi or 1)
    edges = np.linspace(lo, hi, n_bins + 1)
    train_h = np.histogram(v_train[v_train != 0], bins=edges)[0]
    test_h = np.histogram(v_test[v_test != 0], bins=edges)[0] if v_test is not None else np.zeros(n_bins, int)
    return {"freq_hist_data_bar_values": [_num(c) for c in (edges[:-1] + edges[1:]) / 2],
            "freq_hist_data_bar_heights": train_h.tolist(),
            "freq_hist_data_bar_heights_test": test_h.tolist(),
            "freq_hist_data_bin_edges": [_num(e) for e in edges]}


def quantile_bins(v: np.ndarray, n_bins: int, per_bin: int, skip: Iterable[int] = ()) -> list[dict[str, Any]]:
    """Train rows with v_k > 0 in `n_bins` equal-count bins, highest first; `per_bin` rows evenly
    spread through each bin, avoiding `skip` (the X_k,MAS rows) where the bin has others."""
    active = np.flatnonzero(v > 0)
    if active.size == 0:
        return []
    order = active[np.argsort(v[active], kind="stable")]  # ascending activation
    skip = set(int(i) for i in skip)
    out = []
    for chunk in reversed(np.array_split(order, min(n_bins, order.size))):
        pool = [int(i) for i in chunk if int(i) not in skip] or [int(i) for i in chunk]
        picks = sorted({pool[j] for j in np.linspace(0, len(pool) - 1, min(per_bin, len(pool))).round().astype(int)},
                       key=lambda i: -v[i])
        out.append({"bin_min": _num(v[chunk].min()), "bin_max": _num(v[chunk].max()),
                    "bin_contains": _num(chunk.size / v.size), "rows": picks})
    return out


def build_export(
    concepts: Any,
    V_train: torch.Tensor,
    V_test: torch.Tensor | None,
    train: Sequence[Mapping[str, Any]],
    test: Sequence[Mapping[str, Any]],
    lens_table: Sequence[Mapping[str, list]],
    *,
    metrics: Mapping[str, Any] | None = None,
    schema: Any = None,
    concept_scores: Mapping[str, Sequence[Any]] | None = None,
    settings: Mapping[str, Any] | None = None,
    n_bins: int = 5,
    per_bin: int = 4,
    n_local: int = 24,
    n_local_top: int = 3,
) -> dict[str, Any]:
    """The browser document of one run (layer) — schema: docs/browser.md.

    concepts: a `ConceptSet` (words, top_indices = X_k,MAS rows of V_train, method, layer, token)
    train / test: one dict per row of V_train / V_test: id, index (dataset index), caption
        (generated), captions (references)
    lens_table: `logit_lens(...)`, one dict per concept
    metrics: the run's flat scores; schema: their description (metrics/schema.py), which gives every
        score its label and table, and every per-concept column (`concept_scores`: key -> K values) its
        label and whether the page offers it as a sort key. Nothing here knows a metric's keys.
    """
    from coxlmm.metrics.schema import Schema

    schema = schema if schema is not None else Schema()
    concept_scores = concept_scores or {}
    Vtr = V_train.detach().float().cpu().numpy()
    Vte = V_test.detach().float().cpu().numpy() if V_test is not None else None
    K = Vtr.shape[1]
    if len(train) != Vtr.shape[0] or (Vte is not None and len(test) != Vte.shape[0]):
        raise ValueError(f"browser export: V_train has {Vtr.shape[0]} rows for {len(train)} train rows, "
                         f"V_test {None if Vte is None else Vte.shape[0]} for {len(test)} test rows; "
                         "pass one row dict per row of V")
    if len(lens_table) != K:
        raise ValueError(f"browser export: {len(lens_table)} logit-lens rows for K={K} concepts")

    columns = [c for c in schema.concepts if c.key in concept_scores]
    columns += [ConceptColumn(k, k) for k in concept_scores if k not in {c.key for c in columns}]

    def concept_values(k: int) -> list[dict[str, Any]]:
        out = []
        for c in columns:
            values = concept_scores[c.key]
            v = values[k] if k < len(values) else None
            if v is not None:
                out.append({"key": c.key, "label": c.label, "value": v if isinstance(v, str) else _num(v)})
        return out

    def sample(r: int, k: int, max_act: float) -> dict[str, Any]:  # a train row as an example of concept k
        value = float(Vtr[r, k])
        return _sample("train", train[r], value=_num(value), ratio=_num(value / max_act) if max_act > 0 else None)

    out_concepts = []
    for k in range(K):
        v = Vtr[:, k]
        active = v[v > 0]
        max_act = float(v.max()) if v.size else 0.0
        mas_rows = [int(i) for i in concepts.top_indices[k]]
        bins = quantile_bins(v, n_bins, per_bin, skip=mas_rows)
        out_concepts.append({
            "index": k,
            "words": list(concepts.words[k]),
            "frac_nonzero": _num(active.size / v.size) if v.size else None,
            "n_active": int(active.size),
            "max_act": _num(max_act),
            "median_act": _num(np.median(active)) if active.size else None,
            "scores": concept_values(k),
            **{key: list(val) for key, val in lens_table[k].items()},
            **histogram(v, Vte[:, k] if Vte is not None else None),
            "top_activations": [sample(r, k, max_act) for r in mas_rows],
            "activations": [{**{n: b[n] for n in ("bin_min", "bin_max", "bin_contains")},
                             "examples": [sample(r, k, max_act) for r in b["rows"]]} for b in bins],
        })

    local = []
    if Vte is not None and len(test):
        n = min(n_local, len(test))
        ranking = rank_concepts(torch.from_numpy(Vte[:n]), n_local_top)
        for i in range(n):
            top = [{"concept": int(k), "value": _num(Vte[i, k]), "ratio": _num(s)}
                   for k, s in zip(ranking.order[i].tolist(), ranking.scores[i].tolist()) if Vte[i, k] > 0]
            local.append(_sample("test", test[i], top=top))

    return {
        "schema": SCHEMA,
        "method": concepts.method, "layer": concepts.layer, "token": concepts.token,
        "layer_name": str((concepts.extra or {}).get("layer_name", concepts.layer)),
        "n_concepts": K, "n_train": int(Vtr.shape[0]), "n_test": int(Vte.shape[0]) if Vte is not None else 0,
        "settings": {"n_bins": n_bins, "per_bin": per_bin, "n_local": n_local, **(settings or {})},
        "metrics": metric_rows(metrics or {}, schema),
        "sort_keys": [{"key": c.key, "label": c.label, "better": c.better} for c in columns if c.sortable],
        "concepts": out_concepts,
        "local": local,
    }


def metric_rows(metrics: Mapping[str, Any], schema: Any) -> list[dict[str, Any]]:
    """The run's numbers as the page lists them: each described score under its table, row and label
    (the schema's order), then any score no metric described, under its key."""
    rows, seen = [], set()
    for s in schema.scores:
        if s.key in metrics and _num(metrics[s.key]) is not None:
            rows.append({"key": s.key, "label": s.label, "row": s.row, "of": s.of,
                         "table": schema.table(s.tables[0]).title if s.tables else "other",
                         "value": _num(metrics[s.key]), "summary": s.summary})
            seen.add(s.key)
    rows += [{"key": k, "label": k, "row": None, "of": None, "table": "other", "value": _num(v), "summary": False}
             for k, v in sorted(metrics.items()) if k not in seen and _num(v) is not None]
    return rows


def samples(export: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every sample dict of the document (X_k,MAS, quantile examples, local), in page order."""
    out = []
    for c in export["concepts"]:
        out += c["top_activations"] + [e for b in c["activations"] for e in b["examples"]]
    return out + list(export["local"])


def thumbnails_needed(export: Mapping[str, Any]) -> list[tuple[str, int]]:
    """Every (split, index) whose thumbnail the document refers to, each once, in first-use order."""
    return list(dict.fromkeys((s["split"], s["index"]) for s in samples(export)))


def drop_missing_images(export: dict[str, Any], written: set[tuple[str, int]]) -> dict[str, Any]:
    """Set `image` to null for samples whose thumbnail was not written (no image); in place."""
    for s in samples(export):
        if (s["split"], s["index"]) not in written:
            s["image"] = None
    return export
