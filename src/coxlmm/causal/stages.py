"""The causal model stages, as typed requests: the LMM run with its residual stream edited at layer L.

    TargetEdits  per test sample, the state that predicts t replaced by each variant's state: the log-
                 probabilities of the watched tokens (t) and the KL of the next-token distribution to
                 the clean one
    Steering     per test sample and steering direction, the greedy caption with the direction added at
                 every generated position, and its log-probabilities under the text-only LM (fluency)
    CaptionCE    per test sample, the log-probabilities of its own greedy caption with the state at every
                 position that predicts a caption token replaced (clean, reconstruction, zero, mean)

A request is a plan (causal/plan.py) plus the stage that fills it: `run(...)` is a Lightning predict
over the plan's samples, cached in the feature store like the extraction (keyed by the test
features' entry, the layer, a hash of the plan) and filled under the entry's lock. The pipeline calls
`run` for every request a metric's plan makes and hands the results back to that metric.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import torch

from coxlmm.causal.plan import CaptionPlan, SteerPlan, TargetPlan
from coxlmm.extraction.store import STORE_VERSION, FeatureStore
from coxlmm.io import KEY_CHARS, content_key, digest, tensor_bytes
from coxlmm.models.spec import model_handle

log = logging.getLogger(__name__)


def tensor_hash(*tensors: torch.Tensor) -> str:
    return digest((part for t in tensors for part in (str(tuple(t.shape)), tensor_bytes(t.float()))), chars=KEY_CHARS)


# --- the Lightning modules -----------------------------------------------------------------------------------
def _modules():
    from coxlmm.extraction.lightning import _ModelStage

    def records(batch):
        return [{"index": s.index, "id": s.id, "caption": None, "status": "selected", "selected": True} for s in batch]

    class TargetModule(_ModelStage):
        """Per sample: V edited forwards (`LMM.target_logprobs`), rows_per_forward at a time."""

        def __init__(self, lmm, plan: TargetPlan, parent: dict[int, dict], layer: int, rows_per_forward: int):
            super().__init__(lmm)
            self.plan, self.parent, self.layer, self.rows = plan, parent, layer, rows_per_forward
            self.row_of = {i: m for m, i in enumerate(plan.indices)}

        def predict_step(self, batch, batch_idx: int = 0, dataloader_idx: int = 0):
            V = len(self.plan.variants)
            pairs = [(s, v) for s in batch for v in range(V)]
            full = []
            for start in range(0, len(pairs), self.rows):
                chunk = pairs[start:start + self.rows]
                states = torch.stack([self.plan.states[self.row_of[s.index], v] for s, v in chunk])
                full.append(self.lmm.target_logprobs([s.image for s, _ in chunk],
                                                     [self.parent[s.index]["prefix_ids"] for s, _ in chunk],
                                                     self.layer, states))
            lp = torch.cat(full).view(len(batch), V, -1)
            kl = (lp[:, :1].exp() * (lp[:, :1] - lp)).sum(-1)  # KL(p_clean || p_variant), (B, V)
            return {"records": records(batch),
                    "tensors": {"logp": lp[:, :, self.plan.watched].contiguous(), "kl": kl.contiguous()}}

    class SteerModule(_ModelStage):
        """Per sample: D steered greedy captions and their log-probabilities under the text-only LM."""

        def __init__(self, lmm, plan: SteerPlan, layer: int, rows_per_forward: int):
            super().__init__(lmm)
            self.plan, self.layer, self.rows = plan, layer, rows_per_forward
            self.row_of = {i: m for m, i in enumerate(plan.indices)}

        def predict_step(self, batch, batch_idx: int = 0, dataloader_idx: int = 0):
            D, T = len(self.plan.directions), self.plan.max_new_tokens
            pairs = [(s, d) for s in batch for d in range(D)]
            ids = torch.full((len(pairs), T), -1, dtype=torch.long)
            lengths = torch.zeros(len(pairs), dtype=torch.long)
            text_lp = torch.zeros(len(pairs), T)
            for start in range(0, len(pairs), self.rows):
                chunk = pairs[start:start + self.rows]
                deltas = torch.stack([self.plan.deltas(self.row_of[s.index])[d] for s, d in chunk])
                out = self.lmm.steered_generate([s.image for s, _ in chunk], deltas, self.layer, T, self.plan.positions)
                seqs, n = out.sequences.cpu(), out.lengths.cpu()
                sl = slice(start, start + len(chunk))
                ids[sl, : seqs.shape[1]] = seqs
                lengths[sl] = n
                text_lp[sl, : seqs.shape[1]] = self.lmm.text_logprobs(seqs)
            return {"records": records(batch),
                    "tensors": {"ids": ids.view(len(batch), D, T), "lengths": lengths.view(len(batch), D),
                                "text_logp": text_lp.view(len(batch), D, T)}}

    class CaptionModule(_ModelStage):
        """Per sample: its own caption's token log-probabilities under each variant of the splice."""

        def __init__(self, lmm, plan: CaptionPlan, parent: dict[int, dict], layer: int, tokenizer_pad: int):
            super().__init__(lmm)
            self.plan, self.parent, self.layer, self.pad = plan, parent, layer, tokenizer_pad

        def predict_step(self, batch, batch_idx: int = 0, dataloader_idx: int = 0):
            captions = [list(self.parent[s.index]["generated_ids"]) for s in batch]
            T = max(len(c) for c in captions)
            gen = torch.full((len(batch), T), self.pad, dtype=torch.long)
            for r, c in enumerate(captions):
                gen[r, : len(c)] = torch.tensor(c, dtype=torch.long)
            images = [s.image for s in batch]
            lp = torch.stack([self.lmm.caption_logprobs(images, gen, self.layer, self.plan.transform(v))
                              for v in self.plan.variants], 1)  # (B, V, T)
            return {"records": records(batch),
                    "tensors": {"logp": lp.contiguous(), "lengths": torch.tensor([len(c) for c in captions])}}

    return TargetModule, SteerModule, CaptionModule


# --- the requests ------------------------------------------------------------------------------------------
def _fields(kind: str, parent: FeatureStore, layer: int, plan_key: dict[str, Any]) -> dict[str, Any]:
    return {"version": STORE_VERSION, "source": kind, "parent": parent.key, "layer": layer,
            "plan": content_key(plan_key)}


@dataclass(eq=False)
class TargetEdits:
    plan: TargetPlan
    rows_per_forward: int = 32

    def describe(self) -> str:
        return f"target-position edits ({len(self.plan.indices)} samples x {len(self.plan.variants)} variants)"

    def key(self) -> dict[str, Any]:
        p = self.plan
        return {"indices": p.indices, "variants": p.variants, "states": tensor_hash(p.states), "watched": p.watched.tolist()}

    def run(self, **ctx) -> dict[str, torch.Tensor]:
        """{"logp": (M, V, W), "kl": (M, V)} in the plan's sample order."""
        TargetModule, _, _ = _modules()
        parent = {r["index"]: r for r in ctx["parent"].shard_records() if r["selected"]}
        return _run("interventions", self, ctx, ("logp", "kl"), len(self.plan.variants),
                    lambda lmm: TargetModule(lmm, self.plan, parent, ctx["layer"], self.rows_per_forward))


@dataclass(eq=False)
class Steering:
    plan: SteerPlan
    rows_per_forward: int = 32

    def describe(self) -> str:
        return f"steering ({len(self.plan.indices)} samples x {len(self.plan.directions)} directions)"

    def key(self) -> dict[str, Any]:
        p = self.plan
        return {"indices": p.indices, "directions": [d.to_json() for d in p.directions],
                "units": tensor_hash(p.units, p.alphas, p.scale), "max_new_tokens": p.max_new_tokens,
                "positions": p.positions, "fluency": "text-only"}

    def run(self, **ctx) -> dict[str, torch.Tensor]:
        """{"ids": (M, D, T), "lengths": (M, D), "text_logp": (M, D, T)} in the plan's sample order."""
        _, SteerModule, _ = _modules()
        return _run("steering", self, ctx, ("ids", "lengths", "text_logp"), len(self.plan.directions),
                    lambda lmm: SteerModule(lmm, self.plan, ctx["layer"], self.rows_per_forward))


@dataclass(eq=False)
class CaptionCE:
    plan: CaptionPlan

    def describe(self) -> str:
        return f"whole-caption splice ({len(self.plan.indices)} samples x {len(self.plan.variants)} variants)"

    def key(self) -> dict[str, Any]:
        p = self.plan
        return {"indices": p.indices, "variants": list(p.variants), "U": tensor_hash(p.dictionary.U),
                "mean": tensor_hash(p.mean), "dictionary": p.fingerprint}

    def run(self, **ctx) -> dict[str, torch.Tensor]:
        """{"logp": (M, V, T), "lengths": (M,)} in the plan's sample order."""
        _, _, CaptionModule = _modules()
        parent = {r["index"]: r for r in ctx["parent"].shard_records() if r["selected"]}
        missing = [i for i in self.plan.indices if "generated_ids" not in parent.get(i, {})]
        if missing:
            from coxlmm.errors import CoxlmmError

            raise CoxlmmError(f"the test features {ctx['parent'].dir} record no generated caption ids (an older store "
                              "version): delete the entry to extract it again, or drop the caption CE "
                              "(metrics.causal.caption_ce=false).")

        def module(lmm):
            pad = int(getattr(lmm, "pad_id", 0) or 0)
            return CaptionModule(lmm, self.plan, parent, ctx["layer"], pad)

        return _run("caption_ce", self, ctx, ("logp", "lengths"), len(self.plan.variants), module, per_batch=4)


def _run(kind: str, request, ctx: dict[str, Any], names: tuple[str, ...], rows_per_sample: int, make_module,
         per_batch: int | None = None) -> dict[str, torch.Tensor]:
    """Fill (or find) the store entry of a request, then its tensors in the plan's sample order."""
    from coxlmm.extraction import _filling, _predict, _rank_zero

    model, parent, dataset, layer = model_handle(ctx["model"]), ctx["parent"], ctx["dataset"], ctx["layer"]
    settings, trainer = ctx["settings"], ctx.get("trainer")
    indices = request.plan.indices
    store = FeatureStore(ctx["root"], _fields(kind, parent, layer, request.key()))
    if not store.complete:
        with _filling(store, f"the {kind} of layer {layer} ({store.key})", settings.progress_every_s):
            if not store.complete:
                todo = sorted(set(indices) - store.done_indices())
                t0 = time.perf_counter()
                if todo:
                    lmm = model.get()
                    rows = getattr(request, "rows_per_forward", 32)
                    batch = per_batch or max(1, rows // max(rows_per_sample, 1))
                    stage_settings = type(settings)(**{**settings.__dict__, "batch_size": batch})
                    _predict(lmm, make_module(lmm), store, dataset, todo, stage_settings, trainer,
                             f"{kind} layer {layer} ({rows_per_sample} per sample)")
                seconds = time.perf_counter() - t0
                if _rank_zero():
                    store.finalize({"seconds": seconds, "n_extracted": len(todo), "rows_per_sample": rows_per_sample},
                                   sample_keys=("index", "id"))
                    if todo:
                        log.info("%s of layer %d: %d samples in %.1f s (%.2f s per sample)", kind, layer, len(todo),
                                 seconds, seconds / len(todo))
    out, records = store.load_named(names)
    order = {r["index"]: i for i, r in enumerate(records)}
    pick = torch.tensor([order[i] for i in indices], dtype=torch.long)
    return {n: t[pick] for n, t in out.items()}
