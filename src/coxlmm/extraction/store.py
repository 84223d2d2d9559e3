"""On-disk feature store: Z for every layer, keyed by everything that changes the features.

Layout of one entry (`<root>/<key>/`):
    shard-<first index>-r<rank>.safetensors   tensors `layer_<l>` (n_selected, B), rows in record order
    shard-<first index>-r<rank>.json          every sample of the shard: index, id, caption, selected, ...
    manifest.json                             written last: the key fields, counts, selected samples

A shard is complete when its JSON exists: the tensors are written first, both through a temporary
file and an atomic rename, so an interrupted extraction leaves no half-written shard that a later
run would take as complete. A run resumes by skipping the dataset indices found in complete shards,
and `load` orders rows by dataset index, so a resumed extraction yields the same Z as an
uninterrupted one. Ranks of a multi-device run write their own shards; `load` presents one Z.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from coxlmm.errors import CoxlmmError

MANIFEST = "manifest.json"


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    os.replace(tmp, path)


def store_key(fields: dict[str, Any]) -> str:
    """Stable short hash of the JSON-serialised key fields."""
    blob = json.dumps(fields, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


class FeatureStore:
    """One cached extraction (model, data split, token, prompt, generation settings)."""

    def __init__(self, root: str | Path, fields: dict[str, Any]):
        self.fields = fields
        self.key = store_key(fields)
        self.dir = Path(root) / self.key

    # --- state ----------------------------------------------------------------------------------
    @property
    def complete(self) -> bool:
        return (self.dir / MANIFEST).exists()

    def shard_records(self) -> list[dict[str, Any]]:
        """Records of every complete shard, sorted by dataset index, duplicates (DDP padding) dropped."""
        seen: dict[int, dict[str, Any]] = {}
        for js in sorted(self.dir.glob("shard-*.json")):
            for row, rec in enumerate(json.loads(js.read_text())["records"]):
                seen.setdefault(rec["index"], {**rec, "_shard": js.stem, "_row": row})
        return [seen[i] for i in sorted(seen)]

    def done_indices(self) -> set[int]:
        return {r["index"] for r in self.shard_records()}

    # --- writing --------------------------------------------------------------------------------
    def write_shard(self, rank: int, records: list[dict[str, Any]], tensors: dict[int, torch.Tensor]) -> None:
        """Write one shard: `records` for every sample seen; `tensors[l]` (n_selected, B) in order."""
        if not records:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        stem = f"shard-{min(r['index'] for r in records):09d}-r{rank}"
        n_sel = sum(r["selected"] for r in records)
        sel_row = iter(range(n_sel))
        records = [{**r, "row": next(sel_row) if r["selected"] else None} for r in records]
        named = {f"layer_{l:03d}": t.contiguous() for l, t in tensors.items()}
        if named:
            _atomic_write(self.dir / f"{stem}.safetensors", lambda p: save_file(named, str(p)))
        _atomic_write(self.dir / f"{stem}.json", lambda p: p.write_text(json.dumps({"records": records})))

    def finalize(self, extra: dict[str, Any]) -> dict[str, Any]:
        """Write the manifest (marks the entry complete) and return it."""
        records = self.shard_records()
        counts = Counter(r["status"] for r in records)
        manifest = {
            **self.fields,
            "key": self.key,
            "counts": {"seen": len(records), **dict(counts)},
            **extra,
            "samples": [
                {k: r[k] for k in ("index", "id", "caption", "position", "token_ids")}
                for r in records
                if r["selected"]
            ],
        }
        _atomic_write(self.dir / MANIFEST, lambda p: p.write_text(json.dumps(manifest, indent=1)))
        return manifest

    # --- reading --------------------------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        return json.loads((self.dir / MANIFEST).read_text())

    def load(self, layers: list[int]) -> tuple[dict[int, torch.Tensor], list[dict[str, Any]]]:
        """Z for each layer (M, B), rows ordered by dataset index, and the selected records."""
        records = [r for r in self.shard_records() if r["selected"]]
        by_shard: dict[str, dict[str, torch.Tensor]] = {}
        Z: dict[int, list[torch.Tensor]] = {l: [] for l in layers}
        for r in records:
            if r["_shard"] not in by_shard:
                by_shard[r["_shard"]] = load_file(str(self.dir / f"{r['_shard']}.safetensors"))
            shard = by_shard[r["_shard"]]
            for l in layers:
                name = f"layer_{l:03d}"
                if name not in shard:
                    raise CoxlmmError(
                        f"layer {l} is not in the feature store {self.dir} (it holds "
                        f"{sorted(int(k[6:]) for k in shard)}); set extraction.layers=all or delete the entry."
                    )
                Z[l].append(shard[name][r["row"]])
        out = {l: torch.stack(rows) if rows else torch.empty(0) for l, rows in Z.items()}
        return out, [{k: v for k, v in r.items() if not k.startswith("_")} for r in records]
