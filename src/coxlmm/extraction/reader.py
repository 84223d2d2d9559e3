"""Read one layer's Z from a feature-store entry in batches, without loading it whole.

    Z (M, B): the rows `FeatureStore.load` returns for the layer, in the same order (dataset index)

A `Rows` source is what a streamed dictionary fit reads: `n_rows` M, `dim` B, `read(start, stop)`
(rows start..stop−1 of Z) and `blocks(size)`, consecutive blocks of at most `size` rows in Z's
order. Two sources:

  * `TensorRows(Z)`: a tensor already in memory (the in-memory fit reads it the same way, so a
    streamed fit and an in-memory fit see the same blocks and give the same dictionary);
  * `ShardRows(store, layer)`: the entry's safetensors shards, read one block at a time: a block
    reads, from each shard that holds its rows, the byte range of those rows (safetensors stores a
    tensor row-major after a JSON header that gives its offsets) with a plain file read, not a
    memory map, so the process holds one block, not M rows (a map's touched pages would count in
    its resident memory). The store's on-disk format is unchanged.

A streamed fit makes several passes; the entry must not change in between. `ShardRows` records
every shard file's size and modification time when it opens and checks them before each pass
(`check()`); a changed, added or removed file is a CoxlmmError naming the file, so the fit stops
instead of mixing two extractions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Protocol

import json
import struct

import torch

from coxlmm.errors import CoxlmmError
from coxlmm.layer import tensor_name
from coxlmm.extraction.store import MANIFEST, FeatureStore


_DTYPES = {"F32": torch.float32, "F64": torch.float64, "F16": torch.float16, "BF16": torch.bfloat16}


class Rows(Protocol):
    """A source of Z's rows for a streamed fit."""

    n_rows: int  # M
    dim: int  # B

    def read(self, start: int, stop: int) -> torch.Tensor:
        """Rows start..stop−1 of Z (stop − start, B), as stored (float32, or float64 if Z is)."""

    def blocks(self, size: int) -> Iterator[torch.Tensor]:
        """Consecutive blocks (≤ size, B) of Z, in order."""

    def check(self) -> None:
        """CoxlmmError when the rows changed since the source was opened."""


def check_batch_size(batch_size: int, n_rows: int, what: str = "batch_size") -> int:
    """A batch of 1..M rows: a larger batch than the data is refused, not silently shrunk."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise CoxlmmError(f"{what}={batch_size!r} must be a positive integer (rows per batch).")
    if batch_size > n_rows:
        raise CoxlmmError(
            f"{what}={batch_size} is larger than the data: Z has M={n_rows} rows. Use {what} <= {n_rows} "
            "(or null to fit in memory where the method allows it)."
        )
    return batch_size


class TensorRows:
    """Z (M, B) in memory, read in blocks like a store."""

    def __init__(self, Z: torch.Tensor) -> None:
        self.Z = Z
        self.n_rows, self.dim = Z.shape

    def read(self, start: int, stop: int) -> torch.Tensor:
        return self.Z[start:stop]

    def blocks(self, size: int) -> Iterator[torch.Tensor]:
        return blocks(self, size)

    def check(self) -> None:
        pass


def _fingerprint(directory: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for p in sorted(directory.glob("shard-*")):
        st = p.stat()
        out[p.name] = (st.st_size, st.st_mtime_ns)
    st = (directory / MANIFEST).stat()
    out[MANIFEST] = (st.st_size, st.st_mtime_ns)
    return out


class ShardRows:
    """One layer of a complete feature-store entry, read block by block (see the module doc)."""

    def __init__(self, store: FeatureStore, layer: int | str) -> None:
        if not store.complete:
            raise CoxlmmError(
                f"feature-store entry {store.dir} is not complete (no {MANIFEST}): a streamed fit reads "
                "finished extractions only. Run the extraction first."
            )
        self.dir = store.dir
        self.name = layer if isinstance(layer, str) else tensor_name(layer)
        self._seen = _fingerprint(self.dir)
        records = [r for r in store.shard_records() if r["selected"]]
        if not records:
            raise CoxlmmError(f"feature-store entry {store.dir} holds no selected samples: nothing to fit.")
        # (shard, tensor row) of each row of Z, in Z's order (dataset index), as `FeatureStore.load`.
        self._where = [(r["_shard"], r["row"]) for r in records]
        self.n_rows = len(records)
        self._layout: dict[str, tuple[torch.dtype, int, int]] = {}  # shard -> (dtype, B, data offset)
        self.dim = self._tensor(records[0]["_shard"])[1]

    def check(self) -> None:
        try:
            now = _fingerprint(self.dir)
        except FileNotFoundError as e:
            missing = Path(e.filename).name if e.filename else MANIFEST
            raise CoxlmmError(self._changed([missing])) from None
        changed = sorted(n for n in set(now) | set(self._seen) if now.get(n) != self._seen.get(n))
        if changed:
            raise CoxlmmError(self._changed(changed))

    def _changed(self, names: list[str]) -> str:
        return (f"feature-store entry {self.dir} changed during a streamed fit ({', '.join(names[:3])}"
                f"{' …' if len(names) > 3 else ''} modified, added or removed): another job re-extracted "
                "or deleted it. Rerun the fit once the entry is stable; a rerun gives the same dictionary.")

    def blocks(self, size: int) -> Iterator[torch.Tensor]:
        return blocks(self, size)

    def _tensor(self, shard: str) -> tuple[torch.dtype, int, int]:
        """(dtype, row width, byte offset of the layer's first row) in a shard, from its header."""
        if shard not in self._layout:
            with open(self.dir / f"{shard}.safetensors", "rb") as f:
                n = struct.unpack("<Q", f.read(8))[0]
                header = json.loads(f.read(n))
            if self.name not in header:
                held = sorted(k for k in header if k != "__metadata__")
                raise CoxlmmError(f"{self.name} is not in the feature store {self.dir} (it holds {held}); "
                                  "set extraction.layers=all or delete the entry.")
            t = header[self.name]
            if t["dtype"] not in _DTYPES or len(t["shape"]) != 2:
                raise CoxlmmError(f"{self.name} in {shard} is {t['dtype']} of shape {t['shape']}: a streamed fit "
                                  f"reads 2-D tensors of {sorted(_DTYPES)}.")
            self._layout[shard] = (_DTYPES[t["dtype"]], int(t["shape"][1]), 8 + n + int(t["data_offsets"][0]))
        return self._layout[shard]

    def read(self, start: int, stop: int) -> torch.Tensor:
        where = self._where[start:stop]
        by_shard: dict[str, list[tuple[int, int]]] = {}  # shard -> (position in block, tensor row)
        for pos, (shard, row) in enumerate(where):
            by_shard.setdefault(shard, []).append((pos, row))
        out: torch.Tensor | None = None
        for shard, items in by_shard.items():
            rows = torch.tensor([r for _, r in items])
            lo, hi = int(rows.min()), int(rows.max()) + 1
            try:
                dtype, B, offset = self._tensor(shard)
                width = B * dtype.itemsize
                with open(self.dir / f"{shard}.safetensors", "rb") as f:
                    f.seek(offset + lo * width)
                    raw = bytearray(f.read((hi - lo) * width))
                if len(raw) != (hi - lo) * width:
                    raise OSError(f"{shard}.safetensors is shorter than its header says")
                part = torch.frombuffer(raw, dtype=dtype).view(hi - lo, B)
            except OSError:
                self.check()
                raise
            if len(by_shard) == 1 and hi - lo == len(items) and bool((rows == torch.arange(lo, hi)).all()):
                return part  # the usual case: one shard, consecutive rows; no copy
            part = part[rows - lo]
            if out is None:
                out = torch.empty(len(where), self.dim, dtype=part.dtype)
            out[torch.tensor([p for p, _ in items])] = part
        return out


def blocks(rows: Rows, size: int) -> Iterator[torch.Tensor]:
    """Consecutive blocks of at most `size` rows of a source, in order."""
    for start in range(0, rows.n_rows, size):
        yield rows.read(start, min(start + size, rows.n_rows))


def rows_of(Z_or_source) -> Rows:
    """A `Rows` source from a tensor (or array) or an existing source."""
    if hasattr(Z_or_source, "blocks") and hasattr(Z_or_source, "n_rows"):
        return Z_or_source
    return TensorRows(torch.as_tensor(Z_or_source))


