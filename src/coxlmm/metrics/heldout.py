"""Compositional generalisation: does a colour concept fire for its colour on (shape, colour) pairs the
model and the dictionary never saw in training?

The shapes world holds four (shape, colour) pairs out of its train split (blue and yellow triangles,
green and purple crosses; `data.heldout_pairs`), and each selected sample's annotation says whether its
target is such a pair (`heldout_pair`). A dictionary fitted on the training states of several shape
words (`token=[circle,square,star,heart,triangle,cross]`: one union dictionary) learns colour concepts
from the seen pairs. For each colour value v matched to a concept on the *training* split (Hungarian on
the training AUROCs of the colour values, as recovery), on the test split:

    heldout_auroc/<v>   AUROC of the concept's activation for "the target is v" among the test samples of
                        held-out pairs (blue triangles against yellow triangles, green and purple crosses)
    seen_auroc/<v>      the same among the test samples of seen pairs (blue circles against other colours)
    heldout_caption_acc/<v>  share of the held-out samples of colour v whose caption names v (the model's
                        own generalisation, beside the concept's: it names a seen colour for 22-27 %)

and their means over the held-out colours. Null: a random dictionary (centred random directions,
matched on train the same way). A concept that is "blue" and not "blue things seen in training" has a
held-out AUROC near its seen one. Data without held-out pairs, or a run without held-out test samples,
is skipped with a message; the other metrics are written.
"""

from __future__ import annotations

import logging

import numpy as np

from coxlmm.metrics.base import EvalInput, Metric, MetricResult
from coxlmm.metrics.recovery import auroc, auroc_matrix, centred_relu, match_concepts, target_labels
from coxlmm.metrics.schema import Schema, Score, TableSpec

log = logging.getLogger(__name__)

HELDOUT = TableSpec("heldout", "Compositional generalisation: colour concepts on held-out (shape, colour) pairs",
                    "For each colour of a held-out pair, the concept matched to it on train: its test AUROC for the "
                    "colour among held-out-pair samples and among seen-pair samples; caption acc.: share of the "
                    "held-out samples whose caption names the right colour. Random dict.: centred random "
                    "directions matched the same way.", order=58)


def heldout_scores(V_train: np.ndarray, V_test: np.ndarray, train_ann: list[dict], test_ann: list[dict],
                   colours: list[str], factor: str = "colour", min_samples: int = 3) -> dict[str, float]:
    """The module's scores for activations (train, test) of one dictionary (pure)."""
    names, Y_train = target_labels(train_ann, {factor: colours})
    if not names:
        return {}
    match = match_concepts(auroc_matrix(V_train, Y_train))
    concept_of = {v: k for (_, v), k in zip(names, match) if k is not None}
    held = np.array([bool(a.get("heldout_pair")) for a in test_ann])
    values = [((a.get("target") or {}).get(factor)) for a in test_ann]
    out: dict[str, float] = {}
    for v in sorted({values[m] for m in np.flatnonzero(held)} & set(concept_of)):
        y = np.array([x == v for x in values])
        for tag, rows in (("heldout", held), ("seen", ~held)):
            pos, neg = (y & rows).sum(), (~y & rows).sum()
            if pos >= min_samples and neg >= min_samples:
                out[f"{tag}_auroc/{v}"] = auroc(V_test[rows, concept_of[v]], y[rows])
            out[f"{tag}_n/{v}"] = float(pos)
    for tag in ("heldout", "seen"):
        vals = [x for k, x in out.items() if k.startswith(f"{tag}_auroc/")]
        if vals:
            out[f"{tag}_auroc_mean"] = float(np.mean(vals))
    return out


class Heldout(Metric):
    """Colour concepts on held-out (shape, colour) pairs (module doc). Args: factor (the pair's second
    factor, "colour"), min_samples (fewest positives and negatives of a subset for its AUROC)."""

    name = "heldout"

    def __init__(self, factor: str = "colour", min_samples: int = 3):
        self.factor, self.min_samples = factor, min_samples

    def __call__(self, inp: EvalInput) -> MetricResult:
        test = inp.test
        if self.factor not in (inp.factors or {}):
            log.warning("held-out analysis skipped: the data declares no %r factor (it needs the shapes world's "
                        "held-out (shape, colour) pairs)", self.factor)
            return MetricResult()
        if test is None or not any(a.get("heldout_pair") for a in test.annotations):
            pairs = getattr(test.dataset, "heldout_pairs", None) if test is not None else None
            log.warning("held-out analysis skipped: no test sample of token %r is a held-out pair (data.heldout_pairs=%s); "
                        "use a token with held-out colours (triangle, cross), or all the shapes "
                        "(token=[circle,square,star,heart,triangle,cross])", inp.token, sorted(pairs or []))
            return MetricResult()
        colours = list(inp.factors[self.factor])
        args = (inp.train.annotations, test.annotations, colours, self.factor, self.min_samples)
        out = heldout_scores(inp.train.V.float().numpy(), test.V.float().numpy(), *args)
        from coxlmm.directions import random_directions

        U_r = random_directions(inp.dictionary.n_concepts, test.Z.shape[1], seed=inp.seed + 13)
        mean = inp.train.Z.float().mean(0)
        rnd = heldout_scores(centred_relu(inp.train.Z, U_r, mean).numpy(), centred_relu(test.Z, U_r, mean).numpy(),
                             *args)
        out |= {k.replace("_auroc", "_random_auroc", 1): v for k, v in rnd.items() if "_auroc" in k}
        out |= caption_accuracy(test, self.factor, inp.token)
        return MetricResult(out, schema=heldout_schema(colours).only(out))


def caption_accuracy(test, factor: str, token: str) -> dict[str, float]:
    """Share of the held-out test samples of each value whose caption names it for the target."""
    named_target = getattr(test.dataset, "named_target", None)
    if named_target is None:
        return {}
    hits: dict[str, list[bool]] = {}
    for r, a, word in zip(test.records, test.annotations, test.words(token)):
        if not a.get("heldout_pair"):
            continue
        v = (a.get("target") or {}).get(factor)
        named = named_target(r.get("caption") or "", word) or {}
        hits.setdefault(v, []).append(named.get(factor) == v)
    out = {f"heldout_caption_acc/{v}": float(np.mean(h)) for v, h in hits.items()}
    if hits:
        out["heldout_caption_acc_mean"] = float(np.mean([x for h in hits.values() for x in h]))
    return out


def heldout_schema(colours: list[str]) -> Schema:
    t = ("heldout",)
    scores = [Score("heldout_auroc_mean", "held-out AUROC", t, better=1, summary=True),
              Score("seen_auroc_mean", "seen AUROC", t, better=1),
              Score("heldout_random_auroc_mean", "held-out AUROC (random dict.)", t, of="Random dict."),
              Score("seen_random_auroc_mean", "seen AUROC (random dict.)", t, of="Random dict."),
              Score("heldout_caption_acc_mean", "caption acc.", t)]
    for v in colours:
        scores += [Score(f"heldout_auroc/{v}", "held-out AUROC", t, row=v, better=1),
                   Score(f"seen_auroc/{v}", "seen AUROC", t, row=v, better=1),
                   Score(f"heldout_random_auroc/{v}", "held-out AUROC (random dict.)", t, row=v, of="Random dict."),
                   Score(f"seen_random_auroc/{v}", "seen AUROC (random dict.)", t, row=v, of="Random dict."),
                   Score(f"heldout_caption_acc/{v}", "caption acc.", t, row=v),
                   Score(f"heldout_n/{v}", "n held-out", t, row=v, digits=0),
                   Score(f"seen_n/{v}", "n seen", t, row=v, digits=0)]
    return Schema(scores=scores, tables=[HELDOUT])

