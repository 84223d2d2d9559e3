"""What identifies a local checkpoint folder in the feature-store key, read cheaply: its small files
(config, tokenizer, chat template, processor config) hashed whole, and its weight files fingerprinted.

Why a content sample and not the files' modification times: a fine-tune saved to the same folder must
re-extract, but copying a checkpoint (to a cluster's scratch disk, `cp` without `-p`, a `git lfs` or hub
download into a new snapshot) changes every mtime without changing a weight, and would re-extract a
7B model for nothing; mtimes also differ between the nodes of a cluster that share one store. Hashing
the weights whole reads 14 GB for a 7B model in bf16: minutes on a network disk, for every job of a sweep.

So each weight file is fingerprinted by its size and a fixed sample of its bytes:

    safetensors   the header (every tensor's name, dtype, shape and offsets) and, for every tensor,
                  three 64-byte windows of its data (first, middle and last bytes):
                  8 + header + 192 × n_tensors bytes read (a 7B LLaVA: ~100 KB in all)
    other files   (.bin, .pt, .gguf, ...) 64 windows of 4 KiB spread evenly from the first to the last
                  byte: at most 256 KiB per file

A fine-tune, a merged LoRA or a retrained connector changes every element of the tensors it touches, so
each of them changes its windows; resized embeddings change the header. What the sample can miss: an
edit of a few elements in the middle of one tensor that none of its windows covers (a fingerprint that
cannot miss reads every byte). Reads go through `os.pread` with the kernel told the access is random,
so no read-ahead multiplies them.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

from coxlmm.io import KEY_CHARS, digest

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".msgpack", ".h5", ".ckpt")
SMALL_FILE_MAX = 64 << 20  # larger non-weight files (e.g. a tokenizer.json of a huge vocabulary) are sampled too
TENSOR_WINDOW = 64
FILE_WINDOWS, FILE_WINDOW = 64, 4096


class _Reader:
    """pread() on one file, counting the bytes read."""

    def __init__(self, path: Path):
        self.fd = os.open(path, os.O_RDONLY)
        self.size = os.fstat(self.fd).st_size
        self.bytes_read = 0
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_RANDOM)

    def read(self, offset: int, n: int) -> bytes:
        n = max(0, min(n, self.size - offset))
        data = os.pread(self.fd, n, offset) if n else b""
        self.bytes_read += len(data)
        return data

    def close(self) -> None:
        os.close(self.fd)


def _windows(start: int, end: int, width: int) -> list[tuple[int, int]]:
    """First, middle and last `width` bytes of [start, end) (fewer when they overlap)."""
    if end - start <= 3 * width:
        return [(start, end - start)]
    mid = start + (end - start) // 2 - width // 2
    return [(start, width), (mid, width), (end - width, width)]


def file_fingerprint(path: str | Path) -> tuple[str, int]:
    """(16-hex fingerprint, bytes read) of one weight file (see the module doc)."""
    path = Path(path)
    r = _Reader(path)
    try:
        spans: list[tuple[int, int]] = []
        header = b""
        if path.suffix == ".safetensors" and r.size >= 8:
            (n,) = struct.unpack("<Q", r.read(0, 8))
            header = r.read(8, n) if 8 + n <= r.size else b""
            try:
                tensors = json.loads(header)
                base = 8 + n
                for name in sorted(k for k in tensors if k != "__metadata__"):
                    a, b = tensors[name]["data_offsets"]
                    spans += _windows(base + a, base + b, TENSOR_WINDOW)
            except (ValueError, KeyError, TypeError):  # not a readable header: sample it as a plain file
                spans = []
        if not spans:
            step = max(1, (r.size - FILE_WINDOW) // max(1, FILE_WINDOWS - 1))
            spans = sorted({(min(i * step, max(0, r.size - FILE_WINDOW)), FILE_WINDOW) for i in range(FILE_WINDOWS)})
        parts = [f"size={r.size}", header, *(r.read(offset, n) for offset, n in spans)]
        return digest(parts, chars=KEY_CHARS), r.bytes_read
    finally:
        r.close()


def weights_fingerprint(source: str | Path) -> dict[str, str]:
    """{relative path: fingerprint} of every weight file of a local checkpoint folder; {} for a hub id (its
    revision, a commit hash, is in the key and pins its weights)."""
    root = Path(source)
    if not root.is_dir():
        return {}
    return {str(p.relative_to(root)): file_fingerprint(p)[0] for p in sorted(root.rglob("*"))
            if p.is_file() and _is_weights(p)}


def small_files_sha256(source: str | Path) -> dict[str, str]:
    """sha256 of each file of a local checkpoint folder but the weights (config, tokenizer, chat template,
    processor config: what changes the prompt and the processing); {} for a hub id."""
    root = Path(source)
    if not root.is_dir():
        return {}
    return {str(p.relative_to(root)): digest([p.read_bytes()], chars=KEY_CHARS) for p in sorted(root.rglob("*"))
            if p.is_file() and not _is_weights(p)}


def _is_weights(p: Path) -> bool:
    return p.name.endswith(WEIGHT_SUFFIXES) or p.stat().st_size >= SMALL_FILE_MAX
