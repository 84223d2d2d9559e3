"""Files that many jobs share: atomic writes, content keys and locked entries (the one place for each).

- `atomic_write(path, data)`: text, bytes or a writer `(temporary path) -> None` (safetensors, a
  tokenizer folder, ...) written beside `path` under a hidden temporary name, then renamed over `path`
  (a rename, atomic on one file system). A reader sees the old file or the new one, never half of
  one; a writer that fails leaves the old file and removes its temporary. `atomic_write_dir` does the
  same for a folder.
- `content_key(obj)`: 16 hex characters of SHA-256 over canonical JSON (sorted keys, `str` for what JSON
  cannot hold), so a key does not depend on dict order. The feature store, the fit cache, the scorer
  cache and the training caches are named by it. `digest(parts, ...)` hashes bytes and text with a named
  algorithm, for keys over tensors and files and for the hashes a file format records (the weights'
  SHA-256 in their JSON sidecars); `tensor_bytes(t)` is a tensor's raw bytes.
- `entry_lock(path, what)`: the OS file lock `<path>.lock` of one cache entry; of several jobs that need
  the entry, one fills it and the others wait (saying whom for), then read it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger(__name__)

KEY_CHARS = 16  # hex characters of a content key (64 bits)


# --- atomic writes ---------------------------------------------------------------------------------------
def _temporary(path: Path) -> Path:
    """A hidden name beside `path`, unique to this write (process and call)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def atomic_write(path: str | Path, data: str | bytes | Callable[[Path], Any]) -> None:
    """Write `data` (text, bytes, or a function that writes the file, or fills the folder, it is given) to
    `path` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    try:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        elif isinstance(data, (bytes, bytearray, memoryview)):
            tmp.write_bytes(data)
        else:
            data(tmp)
        os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def atomic_write_dir(folder: str | Path, fill: Callable[[Path], Any]) -> bool:
    """Fill a temporary folder beside `folder` and rename it to `folder`. A folder already there (another
    job wrote the same content first) is kept and the temporary one removed. Returns whether it wrote."""
    folder = Path(folder)

    def make(tmp: Path) -> None:
        tmp.mkdir()
        fill(tmp)
        if folder.exists():
            raise FileExistsError(folder)

    try:
        atomic_write(folder, make)
    except OSError:  # FileExistsError, or a rename onto a folder that appeared meanwhile (ENOTEMPTY)
        if folder.is_dir():
            return False
        raise
    return True


# --- content keys ----------------------------------------------------------------------------------------
def canonical_json(obj: Any) -> str:
    """JSON with sorted keys; values JSON cannot hold are written as `str(value)`."""
    return json.dumps(obj, sort_keys=True, default=str)


def digest(parts: Iterable[bytes | bytearray | memoryview | str], algorithm: str = "sha256",
           chars: int | None = None, **params: Any) -> str:
    """Hex digest of the concatenated `parts` (text as UTF-8), by hashlib's `algorithm` (with its `params`,
    e.g. `digest_size=16` for blake2b), cut to its first `chars` characters when given."""
    h = hashlib.new(algorithm, **params)
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
    return h.hexdigest()[:chars]


def content_key(obj: Any) -> str:
    """Stable short key of a JSON-like object: SHA-256 of its canonical JSON, 16 hex characters."""
    return digest([canonical_json(obj)], chars=KEY_CHARS)


def tensor_bytes(t) -> memoryview:
    """The raw bytes of a tensor (on the CPU, contiguous), for `digest`."""
    import torch

    t = t.detach().to("cpu").contiguous()
    return memoryview(t.reshape(-1).view(torch.uint8).numpy()) if t.numel() else memoryview(b"")


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (64 hex characters), read in 1 MiB chunks: the hash weight files record."""
    with open(path, "rb") as f:
        return digest(iter(lambda: f.read(1 << 20), b""))


# --- locked entries --------------------------------------------------------------------------------------
def _since(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


@contextmanager
def entry_lock(path: Path, what: str, wait_report_s: float = 30.0, wait: bool = True) -> Iterator[bool]:
    """Hold the OS file lock `<path>.lock` for the body; wait for another holder, saying who it is.

    A `filelock` (fcntl) lock, which the OS releases when its holder dies, even by `kill -9`. Writes
    `<path>.holder.json` (host, pid, since) while held, so a waiting job can name its holder.
    `wait=False`: never wait; the body runs without the lock when another job holds it. Yields whether
    the lock is held.
    """
    from filelock import FileLock, Timeout

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path) + ".lock")
    holder = Path(str(path) + ".holder.json")
    start, timeout = time.monotonic(), 0.0
    while True:
        try:
            lock.acquire(timeout=timeout)
            break
        except Timeout:
            if not wait:
                yield False
                return
            try:
                h = json.loads(holder.read_text())
                who = f"{h['host']} pid {h['pid']} since {_since(h['since'])}"
            except (OSError, ValueError, KeyError):
                who = "another job (not yet named)"
            log.info("waiting for %s: held by %s; waited %.0f s", what, who, time.monotonic() - start)
            timeout = wait_report_s
    try:
        atomic_write(holder, json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}))
        yield True
    finally:
        holder.unlink(missing_ok=True)
        lock.release()
