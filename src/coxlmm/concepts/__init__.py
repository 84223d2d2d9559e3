"""Concept dictionaries: Z (M, B) ≈ V (M, K) U (K, B), one method per module, one config each.

A method is built from its config file and nowhere else: `conf/method/<name>.yaml` has the
class as `_target_` (with `_partial_: true`), so

    make = hydra.utils.instantiate(cfg.method, device=cfg.device)   # a callable on the run's device
    d = make(seed=0).fit(Z)                                          # a fresh Dictionary, fitted
    V = d.encode(Z_test)

Outside a composed config (tests, benchmarks, notebooks) `build_dictionary("semi_nmf",
n_concepts=20, seed=0)` composes that same file. `save_dictionary` / `load_dictionary` write and
read a fitted dictionary (safetensors, its config in the metadata).
"""

from coxlmm.concepts.base import Dictionary
from coxlmm.concepts.factory import build_dictionary, method_factory, method_names
from coxlmm.concepts.io import load_dictionary, save_dictionary

__all__ = ["Dictionary", "build_dictionary", "load_dictionary", "method_factory", "method_names",
           "save_dictionary"]
