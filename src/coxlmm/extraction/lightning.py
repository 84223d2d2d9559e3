"""Extraction as Lightning `Trainer.predict`: the DataModule feeds batches of samples, the module
captions them greedily, finds the target token and reduces every layer's states to the selected
position on the device; a `BasePredictionWriter` writes one feature-store shard per batch and rank.
"""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, Subset

from coxlmm.data.base import collate_samples, contains_word
from coxlmm.extraction.capture import generate_with_states
from coxlmm.extraction.matching import find_target
from coxlmm.extraction.store import FeatureStore

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class ExtractionDataModule(L.LightningDataModule):
    def __init__(self, dataset, indices: list[int], batch_size: int, num_workers: int = 0):
        super().__init__()
        self.dataset, self.indices = dataset, indices
        self.batch_size, self.num_workers = batch_size, num_workers

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(
            Subset(self.dataset, self.indices),
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=collate_samples,
        )


class ExtractionModule(L.LightningModule):
    """Wraps an `LMM`; `predict_step` returns per-sample records and the selected rows per layer."""

    def __init__(self, lmm, token: str, layers: list[int], max_new_tokens: int, store_dtype: str = "float32",
                 require_gt: bool = True):
        super().__init__()
        self.lmm = lmm
        self.token, self.layers, self.max_new_tokens = token, layers, max_new_tokens
        self.store_dtype = _DTYPES[store_dtype]
        self.require_gt = require_gt

    def predict_step(self, batch, batch_idx: int = 0, dataloader_idx: int = 0):
        records = {s.index: _record(s, "unreadable_image") for s in batch if s.image is None}
        ok = [s for s in batch if s.image is not None]
        rows: list[tuple[int, int]] = []  # (row in `ok`, position) of each selected sample, in batch order
        states = {}
        if ok:
            inputs = {k: v.to(self.device) if torch.is_tensor(v) else v
                      for k, v in self.lmm.prepare([s.image for s in ok]).items()}
            out, states = generate_with_states(self.lmm, inputs, self.layers, self.max_new_tokens)
            seqs, lengths = out.sequences.cpu(), out.lengths.cpu()
            tok = self.lmm.tokenizer
            for b, s in enumerate(ok):
                gen = seqs[b, : int(lengths[b])].tolist()
                caption = tok.decode(gen, skip_special_tokens=True).strip()
                match = find_target(tok, gen, self.token)
                if match is None:
                    records[s.index] = _record(s, "token_not_generated", caption)
                elif self.require_gt and not any(contains_word(c, self.token) for c in s.captions):
                    records[s.index] = _record(s, "token_not_in_gt", caption)
                else:
                    records[s.index] = _record(s, "selected", caption, match.position, list(match.token_ids))
                    rows.append((b, match.position))
        # Reduce to the selected positions on the device, then copy only those rows off it.
        tensors = {}
        if rows:
            bi = torch.tensor([r[0] for r in rows], device=self.device)
            pi = torch.tensor([r[1] for r in rows], device=self.device)
            tensors = {l: st[bi, pi].to(self.store_dtype).cpu() for l, st in states.items()}
        return {"records": [records[s.index] for s in batch], "tensors": tensors}


def _record(sample, status: str, caption: str | None = None, position: int | None = None,
            token_ids: list[int] | None = None) -> dict:
    return {"index": sample.index, "id": sample.id, "caption": caption, "status": status,
            "selected": status == "selected", "position": position, "token_ids": token_ids}


class ShardWriter(BasePredictionWriter):
    """Writes each predicted batch to the feature store as one shard of this rank."""

    def __init__(self, store: FeatureStore):
        super().__init__(write_interval="batch")
        self.store = store

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        self.store.write_shard(trainer.global_rank, prediction["records"], prediction["tensors"])
        # Lightning records SIGTERM (e.g. SLURM pre-emption) but its predict loop runs on; stop here,
        # right after a complete shard, so the next run resumes from it.
        if getattr(trainer, "received_sigterm", False):
            raise KeyboardInterrupt("SIGTERM received: extraction stopped after a complete shard; rerun to resume")
