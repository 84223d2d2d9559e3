"""The model stages as Lightning `Trainer.predict`: a DataModule feeds batches of samples, a module
runs the LMM on them and reduces every layer's states to the selected position on the device, and a
`BasePredictionWriter` writes one feature-store shard per batch and rank.

- `ExtractionModule`: greedy captioning; finds the target token; keeps the state that predicts it.
- `NoisePrefixModule`: the position-matched noise source: a noise image (or, as a check, the sample's
  own image) followed by the sample's own generated prefix, teacher-forced up to t; keeps the state
  that predicts t. Same position as the extraction, only the image changes.

Placement: the LMM is *not* a submodule of these LightningModules. Each stage puts it on the
trainer's root device in `setup` (unless it was sharded with `device_map`), and Lightning's teardown,
which moves the LightningModule back to the CPU after `predict`, has nothing of it to move: the model
stays where its stage put it for every later model stage.
"""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, Callback
from PIL import Image
from torch.utils.data import DataLoader, Subset

from coxlmm.data.base import collate_samples, contains_word
from coxlmm.extraction.capture import generate_with_states
from coxlmm.extraction.matching import find_targets
from coxlmm.extraction.store import FeatureStore
from coxlmm.progress import Progress

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class ExtractionDataModule(L.LightningDataModule):
    def __init__(self, dataset, indices: list[int], batch_size: int, num_workers: int | None = 0):
        super().__init__()
        self.dataset, self.indices = dataset, indices
        self.batch_size, self.num_workers = batch_size, num_workers or 0  # None: not sized (threads.py): none

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(
            Subset(self.dataset, self.indices),
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=collate_samples,
        )


class _ModelStage(L.LightningModule):
    """Holds the LMM outside the module tree (see the module doc) and places it in `setup`."""

    def __init__(self, lmm):
        super().__init__()
        self.__dict__["lmm"] = lmm  # not registered as a submodule: teardown's .cpu() never reaches it

    def setup(self, stage: str) -> None:
        if getattr(self.lmm, "device_map", None) is None:
            self.lmm.to(self.trainer.strategy.root_device)

    def inputs(self, images: list[Image.Image]) -> dict:
        dev = self.lmm.device
        return {k: v.to(dev) if torch.is_tensor(v) else v for k, v in self.lmm.prepare(images).items()}


class ExtractionModule(_ModelStage):
    """`predict_step` captions a batch greedily and returns, per target token, the per-sample records and
    the selected rows per layer: `{t: {"records": [...], "tensors": {layer: (n_selected, B)}}}`.

    One greedy caption serves every token: `token` is the run's target t, `tokens` (optional) every token
    whose states this generation harvests, and `wanted` (optional) the tokens each dataset index is a
    candidate for (default: every token for every sample). Records of selected samples also hold
    `prefix_ids` (the generated ids before the matched position: what the state that predicts t has read),
    `prefix_text` (them decoded) and `annotation` (`dataset.annotate`, e.g. the world's target-object factors and which of them the
    prefix already names)."""

    def __init__(self, lmm, token: str, layers: list[int], max_new_tokens: int, store_dtype: str = "float32",
                 require_gt: bool = True, annotate=None, tokens: list[str] | None = None,
                 wanted: dict[int, list[str]] | None = None):
        super().__init__(lmm)
        self.token, self.layers, self.max_new_tokens = token, layers, max_new_tokens
        self.tokens = list(dict.fromkeys([token, *(tokens or [])]))
        self.wanted = wanted
        self.store_dtype = _DTYPES[store_dtype]
        self.require_gt = require_gt
        self.annotate = annotate  # callable(sample, caption, prefix, token) -> dict, or None

    def predict_step(self, batch, batch_idx: int = 0, dataloader_idx: int = 0):
        want = {s.index: (self.tokens if self.wanted is None else self.wanted[s.index]) for s in batch}
        records: dict[str, dict[int, dict]] = {t: {} for t in self.tokens}
        rows: dict[str, list[tuple[int, int]]] = {t: [] for t in self.tokens}  # (row in `ok`, position), batch order
        ok = [s for s in batch if s.image is not None]
        states = {}
        if ok:
            out, states = generate_with_states(self.lmm, self.inputs([s.image for s in ok]), self.layers,
                                               self.max_new_tokens)
            seqs, lengths = out.sequences.cpu(), out.lengths.cpu()
            tok = self.lmm.tokenizer
            for b, s in enumerate(ok):
                gen = seqs[b, : int(lengths[b])].tolist()
                caption = tok.decode(gen, skip_special_tokens=True).strip()
                for t, match in find_targets(tok, gen, want[s.index]).items():
                    if match is None:
                        records[t][s.index] = _record(s, "token_not_generated", caption)
                    elif self.require_gt and not any(contains_word(c, t) for c in s.captions):
                        records[t][s.index] = _record(s, "token_not_in_gt", caption)
                    else:
                        prefix = gen[: match.position]
                        rec = _record(s, "selected", caption, match.position, list(match.token_ids))
                        rec["prefix_ids"] = prefix
                        # decoded here, so the tensor stages re-annotate without the tokenizer (pipeline.reannotate)
                        rec["prefix_text"] = tok.decode(prefix, skip_special_tokens=True)
                        rec["generated_ids"] = gen  # the whole greedy caption (causal: whole-caption cross-entropy)
                        if self.annotate is not None:
                            rec["annotation"] = self.annotate(s, caption, rec["prefix_text"], t)
                        records[t][s.index] = rec
                        rows[t].append((b, match.position))
        for s in batch:
            if s.image is None:
                for t in want[s.index]:
                    records[t][s.index] = _record(s, "unreadable_image")
        out_by_token = {}
        for t in self.tokens:
            tensors = {}
            if rows[t]:  # reduce to the selected positions on the device, then copy only those rows off it
                dev = next(iter(states.values())).device
                bi = torch.tensor([r[0] for r in rows[t]], device=dev)
                pi = torch.tensor([r[1] for r in rows[t]], device=dev)
                tensors = {l: st[bi, pi].to(self.store_dtype).cpu() for l, st in states.items()}
            out_by_token[t] = {"records": [records[t][s.index] for s in batch if s.index in records[t]],
                               "tensors": tensors}
        return out_by_token


def noise_image(size: tuple[int, int], seed: int, index: int) -> Image.Image:
    """Uniform RGB pixel noise of `size` (w, h), the same for (seed, sample index) on every machine."""
    w, h = size
    rng = np.random.default_rng([seed, index])
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


class NoisePrefixModule(_ModelStage):
    """`predict_step`: for each sample, its image replaced by noise (`images="noise"`) or kept
    (`images="real"`, a check), then its own prefix teacher-forced; the state that predicts t.

    `parent` maps a dataset index to its extraction record (prefix_ids, token_ids, position)."""

    def __init__(self, lmm, parent: dict[int, dict], layers: list[int], images: str, seed: int,
                 store_dtype: str = "float32"):
        super().__init__(lmm)
        self.parent, self.layers, self.images, self.seed = parent, layers, images, seed
        self.store_dtype = _DTYPES[store_dtype]

    def predict_step(self, batch, batch_idx: int = 0, dataloader_idx: int = 0):
        recs = [self.parent[s.index] for s in batch]
        pictures = [s.image if self.images == "real" else noise_image(s.image.size if s.image is not None else (224, 224),
                                                                       self.seed, s.index) for s in batch]
        # prefix + t: column j of the teacher-forced states predicts column j of `generated`
        seqs = [list(r["prefix_ids"]) + [r["token_ids"][0]] for r in recs]
        T = max(len(q) for q in seqs)
        pad = getattr(self.lmm, "pad_id", None) or 0
        generated = torch.full((len(seqs), T), int(pad), dtype=torch.long)
        for b, q in enumerate(seqs):
            generated[b, : len(q)] = torch.tensor(q)  # right-padded: the causal mask hides the padding
        states = self.lmm.teacher_forced_states(self.inputs(pictures), generated, self.layers)
        pos = torch.tensor([r["position"] for r in recs])
        tensors = {l: st[torch.arange(len(recs), device=st.device), pos.to(st.device)].to(self.store_dtype).cpu()
                   for l, st in states.items()}
        records = [{k: r[k] for k in ("index", "id", "caption", "position", "token_ids")} | {
            "status": "selected", "selected": True} for r in recs]
        return {"records": records, "tensors": tensors}


def _record(sample, status: str, caption: str | None = None, position: int | None = None,
            token_ids: list[int] | None = None) -> dict:
    return {"index": sample.index, "id": sample.id, "caption": caption, "status": status,
            "selected": status == "selected", "position": position, "token_ids": token_ids}


class ShardWriter(BasePredictionWriter):
    """Writes each predicted batch to the feature store as one shard of this rank: to `store` the
    prediction `{"records", "tensors"}`, or with `stores` ({token: entry}) each token's part of a
    per-token prediction (ExtractionModule) to its own entry."""

    def __init__(self, store: FeatureStore | None = None, stores: dict[str, FeatureStore] | None = None):
        super().__init__(write_interval="batch")
        self.store, self.stores = store, stores

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        if self.stores is None:
            self.store.write_shard(trainer.global_rank, prediction["records"], prediction["tensors"])
        else:
            for token, part in prediction.items():
                self.stores[token].write_shard(trainer.global_rank, part["records"], part["tensors"])
        # Lightning records SIGTERM (e.g. SLURM pre-emption) but its predict loop runs on; stop here,
        # right after a complete shard, so the next run resumes from it.
        if getattr(trainer, "received_sigterm", False):
            raise KeyboardInterrupt("SIGTERM received: extraction stopped after a complete shard; rerun to resume")


class LogProgress(Callback):
    """Progress lines (done/total, rate, ETA) for logs without a TTY (coxlmm.progress)."""

    def __init__(self, desc: str, total: int = 0, every_s: float = 30.0):
        self.desc, self.total, self.every_s = desc, total, every_s  # desc and total may be set until predict starts
        self.progress: Progress | None = None

    def on_predict_start(self, trainer, pl_module) -> None:
        rank = f" (rank {trainer.global_rank})" if trainer.world_size > 1 else ""
        share = -(-self.total // max(trainer.world_size, 1))
        self.progress = Progress(self.desc + rank, share, "samples", self.every_s)

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.progress.update(len(batch))

    def on_predict_end(self, trainer, pl_module) -> None:
        self.progress.close()
