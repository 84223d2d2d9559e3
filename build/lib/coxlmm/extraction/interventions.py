"""The causal model stages: the LMM run with its residual stream edited at layer L (Lightning predict).

    target   per test sample, the state that predicts t replaced by each variant's state (clean, the
             dictionary's reconstruction, the train mean, concept ablations, random controls, ...):
             the log-probabilities of a few watched tokens (t, the concepts' words) and the KL of the
             next-token distribution to the clean one
    steer    per test sample and steering direction (a vector added at layer L at every generated
             position), the greedy caption and its mean log-likelihood under the unsteered model

Both are cached in the feature store like the extraction, keyed by the test features' entry, the
layer, a hash of the plan (the dictionary, the directions and the settings), and filled under the
entry's lock. The plan is built by a tensor stage (metrics/causal.py); these stages only run it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import torch

from coxlmm.extraction.store import STORE_VERSION, FeatureStore
from coxlmm.models.spec import model_handle

log = logging.getLogger(__name__)


def tensor_hash(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().to("cpu", torch.float32).contiguous()
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass
class TargetPlan:
    """Edits of the state that predicts t. states (M, V, H): variant v of sample m; rows follow `indices`."""

    indices: list[int]  # dataset indices of the test samples
    variants: list[str]  # V names: "clean", "recon", "mean", "ablate:k", "random:k:j", ...
    states: torch.Tensor  # (M, V, H)
    watched: torch.Tensor  # (W,) token ids whose log-probabilities are kept

    def key(self) -> dict[str, Any]:
        return {"indices": self.indices, "variants": self.variants, "states": tensor_hash(self.states),
                "watched": self.watched.tolist()}


@dataclass
class SteerPlan:
    """Steering directions, the same for every sample: deltas (D, H); row 0 is zero (unsteered)."""

    indices: list[int]
    directions: list[dict[str, Any]]  # D descriptions: kind (none|concept|random|diffmean), concept, value, alpha
    deltas: torch.Tensor  # (D, H)
    max_new_tokens: int
    positions: str  # generated | all

    def key(self) -> dict[str, Any]:
        return {"indices": self.indices, "directions": self.directions, "deltas": tensor_hash(self.deltas),
                "max_new_tokens": self.max_new_tokens, "positions": self.positions}


# --- the Lightning modules -----------------------------------------------------------------------------------
def _modules():
    from coxlmm.extraction.lightning import _ModelStage

    class TargetModule(_ModelStage):
        """Per sample: V edited forwards (`LMM.target_logprobs`), rows_per_forward at a time."""

        def __init__(self, lmm, plan: TargetPlan, parent: dict[int, dict], layer: int, rows_per_forward: int):
            super().__init__(lmm)
            self.plan, self.parent, self.layer, self.rows = plan, parent, layer, rows_per_forward
            self.row_of = {i: m for m, i in enumerate(plan.indices)}

        def predict_step(self, batch, batch_idx: int = 0, dataloader_idx: int = 0):
            V = len(self.plan.variants)
            pairs = [(s, v) for s in batch for v in range(V)]
            lp_watched, kl = [], []
            for start in range(0, len(pairs), self.rows):
                chunk = pairs[start:start + self.rows]
                states = torch.stack([self.plan.states[self.row_of[s.index], v] for s, v in chunk])
                lp = self.lmm.target_logprobs([s.image for s, _ in chunk],
                                              [self.parent[s.index]["prefix_ids"] for s, _ in chunk], self.layer, states)
                lp_watched.append(lp[:, self.plan.watched])
                kl.append(lp)  # full rows, reduced per sample below
            lp_all = torch.cat(kl).view(len(batch), V, -1)
            clean = lp_all[:, :1]
            kl_to_clean = (clean.exp() * (clean - lp_all)).sum(-1)  # KL(p_clean || p_variant), (B, V)
            watched = torch.cat(lp_watched).view(len(batch), V, -1)
            records = [{"index": s.index, "id": s.id, "caption": None, "status": "selected", "selected": True}
                       for s in batch]
            return {"records": records, "tensors": {"logp": watched.contiguous(), "kl": kl_to_clean.contiguous()}}

    class SteerModule(_ModelStage):
        """Per sample: D steered greedy captions and their log-likelihood under the unsteered model."""

        def __init__(self, lmm, plan: SteerPlan, layer: int, rows_per_forward: int):
            super().__init__(lmm)
            self.plan, self.layer, self.rows = plan, layer, rows_per_forward

        def predict_step(self, batch, batch_idx: int = 0, dataloader_idx: int = 0):
            D, T = len(self.plan.directions), self.plan.max_new_tokens
            pairs = [(s, d) for s in batch for d in range(D)]
            ids = torch.full((len(pairs), T), -1, dtype=torch.long)
            lengths = torch.zeros(len(pairs), dtype=torch.long)
            fluency = torch.zeros(len(pairs))
            for start in range(0, len(pairs), self.rows):
                chunk = pairs[start:start + self.rows]
                images = [s.image for s, _ in chunk]
                out = self.lmm.steered_generate(images, self.plan.deltas[[d for _, d in chunk]], self.layer, T,
                                                self.plan.positions)
                seqs, n = out.sequences.cpu(), out.lengths.cpu()
                ids[start:start + len(chunk), : seqs.shape[1]] = seqs
                lengths[start:start + len(chunk)] = n
                fluency[start:start + len(chunk)] = self.lmm.caption_loglik(images, seqs, n)
            records = [{"index": s.index, "id": s.id, "caption": None, "status": "selected", "selected": True}
                       for s in batch]
            return {"records": records, "tensors": {"ids": ids.view(len(batch), D, T), "lengths": lengths.view(len(batch), D),
                                                    "fluency": fluency.view(len(batch), D)}}

    return TargetModule, SteerModule


# --- the stages --------------------------------------------------------------------------------------------
def _fields(kind: str, parent: FeatureStore, layer: int, plan_key: dict[str, Any]) -> dict[str, Any]:
    return {"version": STORE_VERSION, "source": kind, "parent": parent.key, "layer": layer,
            "plan": hashlib.sha256(json.dumps(plan_key, sort_keys=True).encode()).hexdigest()[:16]}


def run_target(model, parent: FeatureStore, dataset, plan: TargetPlan, layer: int, root: str, settings,
               trainer: Any = None, rows_per_forward: int = 32) -> dict[str, torch.Tensor]:
    """{"logp": (M, V, W), "kl": (M, V)} for the plan's samples, in its order (cached)."""
    return _run("interventions", model, parent, dataset, plan, layer, root, settings, trainer, rows_per_forward,
                ("logp", "kl"))


def run_steer(model, parent: FeatureStore, dataset, plan: SteerPlan, layer: int, root: str, settings,
              trainer: Any = None, rows_per_forward: int = 32) -> dict[str, torch.Tensor]:
    """{"ids": (M, D, T), "lengths": (M, D), "fluency": (M, D)} for the plan's samples (cached)."""
    return _run("steering", model, parent, dataset, plan, layer, root, settings, trainer, rows_per_forward,
                ("ids", "lengths", "fluency"))


def _run(kind: str, model, parent: FeatureStore, dataset, plan, layer: int, root: str, settings, trainer: Any,
         rows_per_forward: int, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    from coxlmm.extraction import _filling, _predict, _rank_zero

    model = model_handle(model)
    store = FeatureStore(root, _fields(kind, parent, layer, plan.key()))
    if not store.complete:
        with _filling(store, f"the {kind} of layer {layer} ({store.key})", settings.progress_every_s):
            if not store.complete:
                todo = sorted(set(plan.indices) - store.done_indices())
                t0 = time.perf_counter()
                if todo:
                    lmm = model.get()
                    TargetModule, SteerModule = _modules()
                    if kind == "interventions":
                        parent_recs = {r["index"]: r for r in parent.shard_records() if r["selected"]}
                        module = TargetModule(lmm, plan, parent_recs, layer, rows_per_forward)
                        rows = len(plan.variants)
                    else:
                        module = SteerModule(lmm, plan, layer, rows_per_forward)
                        rows = len(plan.directions)
                    per_batch = max(1, rows_per_forward // max(rows, 1))
                    stage_settings = type(settings)(**{**settings.__dict__, "batch_size": per_batch})
                    _predict(lmm, module, store, dataset, todo, stage_settings, trainer,
                             f"{kind} layer {layer} ({rows} per sample)")
                seconds = time.perf_counter() - t0
                if _rank_zero():
                    store.finalize({"seconds": seconds, "n_extracted": len(todo), "rows_per_sample":
                                    len(getattr(plan, "variants", getattr(plan, "directions", [])))},
                                   sample_keys=("index", "id"))
                    if todo:
                        log.info("%s of layer %d: %d samples in %.1f s (%.2f s per sample)", kind, layer, len(todo),
                                 seconds, seconds / len(todo))
    out, records = store.load_named(names)
    order = {r["index"]: i for i, r in enumerate(records)}
    pick = torch.tensor([order[i] for i in plan.indices], dtype=torch.long)
    return {n: t[pick] for n, t in out.items()}
