"""Fitted dictionaries cached beside the features: a fit is done once for the same Z, method and seed.

Every fit of a run goes through `FitCache.fit(Z, seed)` (the pipeline's `refit`: the run's dictionary,
the stability refit, the Noise-Imgs dictionary, and any refit on resampled rows), so a job that asks
for a fit an earlier job made (a report re-run, a metrics change, `make causal` after `make paper`)
loads it instead of fitting again. The key is a hash of

    the content of Z (M, B)   its bytes, dtype and shape: a resampled or noise Z is another key
    the method's config       the resolved `method` node: `_target_`, K, every parameter, the device
    the seed
    the code                  the sources of `coxlmm/concepts/` and the torch version

Layout under `<cache_dir>/dictionaries/`: `<key>.V.safetensors` (V_train (M, K), written first) and
`<key>.safetensors` (`concepts.io.save_dictionary`: U, the method's state and config), written last
through an atomic rename, so its presence marks a complete entry; `<key>.lock` is the entry's lock
(`coxlmm.io.entry_lock`): of two jobs that need the same fit, one fits and the other waits and
loads. `enabled=False` (config `dictionary_cache=false`) fits every time and writes nothing.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from coxlmm.concepts.base import Dictionary
from coxlmm.concepts.io import load_dictionary, save_dictionary
from coxlmm.io import atomic_write, content_key, digest, entry_lock, tensor_bytes

log = logging.getLogger(__name__)

CACHE_VERSION = 1


def z_digest(Z: torch.Tensor) -> str:
    """A hash of the content of Z: its dtype, shape and bytes."""
    return digest([f"{Z.dtype} {tuple(Z.shape)}", tensor_bytes(Z)], "blake2b", digest_size=16)


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """A hash of the dictionary methods' code (every module of this package) and of torch's version."""
    files = sorted(Path(__file__).parent.glob("*.py"))
    return digest([torch.__version__, *(part for p in files for part in (p.name, p.read_bytes()))], "blake2b",
                  digest_size=16)


class FitCache:
    """`fit(Z, seed)`: the fitted dictionary of `make(seed)` on Z, from the cache when it holds it.

    `fitted` and `loaded` count what this cache did (the run logs them)."""

    def __init__(self, root: str | Path, method: Mapping[str, Any], make: Callable[[int], Dictionary],
                 enabled: bool = True, wait_report_s: float = 30.0):
        self.root, self.method, self.make = Path(root), dict(method), make
        self.enabled, self.wait_report_s = enabled, wait_report_s
        self.fitted = self.loaded = 0

    def key(self, Z: torch.Tensor, seed: int) -> str:
        return content_key({"version": CACHE_VERSION, "code": code_digest(), "method": self.method, "seed": seed,
                          "Z": z_digest(Z)})

    def fit(self, Z: torch.Tensor, seed: int) -> Dictionary:
        if not self.enabled:
            return self._fit(Z, seed)
        key = self.key(Z, seed)
        cached = self._load(key)
        if cached is not None:
            return cached
        with entry_lock(self.root / key, f"the {self.method.get('name', 'dictionary')} fit {key}", self.wait_report_s):
            cached = self._load(key)  # fitted by the job we waited for
            if cached is not None:
                return cached
            d = self._fit(Z, seed)
            self._save(key, d)
        return d

    def _fit(self, Z: torch.Tensor, seed: int) -> Dictionary:
        t0 = time.perf_counter()
        d = self.make(seed).fit(Z)
        self.fitted += 1
        log.info("fit: %s on %d x %d, seed %d, in %.1f s", d.name, *Z.shape, seed, time.perf_counter() - t0)
        return d

    def _paths(self, key: str) -> tuple[Path, Path]:
        return self.root / f"{key}.safetensors", self.root / f"{key}.V.safetensors"

    def _load(self, key: str) -> Dictionary | None:
        path, v_path = self._paths(key)
        if not path.is_file():
            return None
        d = load_dictionary(path)
        d.V_train = load_file(str(v_path))["V_train"]
        self.loaded += 1
        log.info("fit cache: %s, seed %d, loaded (%s)", d.name, d.seed, key)
        return d

    def _save(self, key: str, d: Dictionary) -> None:
        path, v_path = self._paths(key)
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write(v_path, lambda tmp: save_file({"V_train": d.V_train.contiguous()}, str(tmp)))
        atomic_write(path, lambda tmp: save_dictionary(d, tmp))  # last: the entry is complete
