"""On-disk feature store: Z for every layer, keyed by everything that changes the features.

Layout of one entry (`<root>/<key>/`):
    shard-<first index>-r<rank>.safetensors   tensors `layer_<l>` (n_selected, B), rows in record order
    shard-<first index>-r<rank>.json          every sample of the shard: index, id, caption, selected, ...
    manifest.json                             written last: the key fields, counts, selected samples
and beside it `<key>.lock` (the entry's OS file lock) and `<key>.holder.json` (who holds it, since when).
The key is `coxlmm.io.content_key` of the fields; writes and the lock are `coxlmm.io`'s.

A shard is complete when its JSON exists: the tensors are written first, both through a temporary
file and an atomic rename, so an interrupted extraction leaves no half-written shard that a later
run would take as complete. A run resumes by skipping the dataset indices found in complete shards,
and `load` orders rows by dataset index, so a resumed extraction yields the same Z as an
uninterrupted one. Ranks of a multi-device run write their own shards; `load` presents one Z.

Many jobs (processes, SLURM tasks) share the store. `FeatureStore.lock()` is one lock per entry
(`coxlmm.io.entry_lock`), a `filelock` (fcntl) lock that the OS releases when its holder dies, even
by `kill -9`: of several jobs that need the same entry, one fills it and the others wait, then read it.
A waiting job says whom it waits for and since when, every `wait_report_s` seconds; Ctrl-C while
waiting touches nothing. (fcntl locks need a file system that supports them: local disks and most
cluster file systems do; NFS only with its lock daemon.)
"""

from __future__ import annotations

import json
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from coxlmm.errors import CoxlmmError
from coxlmm.io import atomic_write, content_key, entry_lock
from coxlmm.layer import tensor_name

MANIFEST = "manifest.json"
STORE_VERSION = 2  # v2: blocks + final norm stored, records hold the generated prefix and annotations


class FeatureStore:
    """One cached extraction (model, data split, token, prompt, generation settings) or source."""

    def __init__(self, root: str | Path, fields: dict[str, Any]):
        self.fields = fields
        self.key = content_key(fields)
        self.dir = Path(root) / self.key

    # --- state ----------------------------------------------------------------------------------
    @property
    def complete(self) -> bool:
        return (self.dir / MANIFEST).exists()

    @contextmanager
    def lock(self, what: str | None = None, wait_report_s: float = 30.0) -> Iterator["FeatureStore"]:
        """This entry's lock (see the module doc); yields the store."""
        with entry_lock(self.dir, what or f"feature-store entry {self.key}", wait_report_s):
            yield self

    def try_lock(self):
        """This entry's lock if no other job holds it, without waiting: a context yielding whether it is held."""
        return entry_lock(self.dir, f"feature-store entry {self.key}", wait=False)

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
    def write_shard(self, rank: int, records: list[dict[str, Any]], tensors: dict[int | str, torch.Tensor]) -> None:
        """Write one shard: `records` for every sample seen; `tensors[l]` (n_selected, ...) in order, keyed by
        layer (stored as `layer_<l>`) or by name (the causal stages' `logp`, `ids`, ...)."""
        if not records:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        stem = f"shard-{min(r['index'] for r in records):09d}-r{rank}"
        n_sel = sum(r["selected"] for r in records)
        sel_row = iter(range(n_sel))
        records = [{**r, "row": next(sel_row) if r["selected"] else None} for r in records]
        named = {(k if isinstance(k, str) else tensor_name(k)): t.contiguous() for k, t in tensors.items()}
        if named:
            atomic_write(self.dir / f"{stem}.safetensors", lambda p: save_file(named, str(p)))
        atomic_write(self.dir / f"{stem}.json", json.dumps({"records": records}))

    def finalize(self, extra: dict[str, Any], sample_keys: tuple[str, ...] = ("index", "id", "caption", "position",
                                                                               "token_ids")) -> dict[str, Any]:
        """Write the manifest (marks the entry complete) and return it."""
        records = self.shard_records()
        counts = Counter(r["status"] for r in records)
        manifest = {
            **self.fields,
            "key": self.key,
            "counts": {"seen": len(records), **dict(counts)},
            **extra,
            "samples": [{k: r.get(k) for k in sample_keys} for r in records if r["selected"]],
        }
        atomic_write(self.dir / MANIFEST, json.dumps(manifest, indent=1))
        return manifest

    def discard_manifest(self) -> None:
        (self.dir / MANIFEST).unlink(missing_ok=True)

    # --- reading --------------------------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        return json.loads((self.dir / MANIFEST).read_text())

    def load_named(self, names: tuple[str, ...] | list[str]) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
        """Named tensors (M, ...) of the selected records, rows ordered by dataset index."""
        by_layer, records = self._load({n: n for n in names})
        return by_layer, records

    def load(self, layers: list[int]) -> tuple[dict[int, torch.Tensor], list[dict[str, Any]]]:
        """Z for each distinct layer (M, B), rows ordered by dataset index, and the selected records.

        Reads only the requested layers' tensors of each shard (safetensors reads them lazily)."""
        layers = list(dict.fromkeys(layers))  # a layer listed twice is read once, never doubled
        return self._load({l: tensor_name(l) for l in layers})

    def _load(self, wanted: dict[Any, str]) -> tuple[dict[Any, torch.Tensor], list[dict[str, Any]]]:
        records = [r for r in self.shard_records() if r["selected"]]
        of_shard: dict[str, list[int]] = {}  # shard -> positions in `records` of its rows
        for i, r in enumerate(records):
            of_shard.setdefault(r["_shard"], []).append(i)
        parts: dict[Any, list[torch.Tensor]] = {k: [] for k in wanted}
        for shard, positions in of_shard.items():
            rows = [records[i]["row"] for i in positions]
            with safe_open(str(self.dir / f"{shard}.safetensors"), framework="pt") as f:
                names = set(f.keys())
                for key, name in wanted.items():
                    if name not in names:
                        held = sorted(names)
                        raise CoxlmmError(
                            f"layer {key} is not in the feature store {self.dir} (it holds {held}); set "
                            "extraction.layers=all or delete the entry."
                        )
                    parts[key].append(f.get_tensor(name)[rows])
        # Row j of the concatenation belongs to records[concat[j]]: put the rows back in record order.
        concat = torch.tensor([i for positions in of_shard.values() for i in positions], dtype=torch.long)
        back = torch.argsort(concat)
        Z = {l: cat_padded(p)[back] if p else torch.empty(0) for l, p in parts.items()}
        return Z, [{k: v for k, v in r.items() if not k.startswith("_")} for r in records]


def cat_padded(parts: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate along rows, zero-padding the trailing dims to the largest: a model stage's per-shard outputs
    over generated tokens (M, V, T) end at each batch's own longest caption; their `lengths` say what is real."""
    shape = [max(p.shape[d] for p in parts) for d in range(1, parts[0].dim())]
    if all(list(p.shape[1:]) == shape for p in parts):
        return torch.cat(parts)
    out = parts[0].new_zeros((sum(len(p) for p in parts), *shape))
    at = 0
    for p in parts:
        out[(slice(at, at + len(p)), *(slice(0, n) for n in p.shape[1:]))] = p
        at += len(p)
    return out

