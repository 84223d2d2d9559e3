"""A fitted dictionary on disk: `dictionary.safetensors`, and back into a working dictionary.

    save_dictionary(d, run_dir / "dictionary.safetensors")
    d = load_dictionary(run_dir / "dictionary.safetensors")   # encode new features with it
    V = d.encode(Z_new)

The file holds the tensors of `d.state_tensors()` (U, and e.g. PCA's mean or an SAE's encoder)
and, in the safetensors metadata, `config`: the JSON of `d.config()` — the class as `_target_`,
name, display name, K, seed, device, method params and the values the fit learnt (`fitted`, e.g.
Semi-NMF's α when it is relative to the feature scale). Loading instantiates that `_target_`
with those arguments (the same factory as a run) and restores the state, so `encode` gives the
same V as before saving.
"""

from __future__ import annotations

import json
from pathlib import Path

from hydra.utils import instantiate
from safetensors import safe_open
from safetensors.torch import save_file

from coxlmm.concepts.base import Dictionary
from coxlmm.errors import CoxlmmError

FORMAT = "coxlmm.dictionary/1"


def save_dictionary(d: Dictionary, path: str | Path, provenance: dict | None = None) -> Path:
    """Write the fitted dictionary `d` to `path` (safetensors, config in the metadata). `provenance`:
    what it was fitted on (the run records its model, layer, token and feature width), checked when
    a later run uses it (`dictionary_path=`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"format": FORMAT, "config": json.dumps(d.config())}
    if provenance is not None:
        metadata["provenance"] = json.dumps(provenance, sort_keys=True, default=str)
    save_file(d.state_tensors(), str(path), metadata=metadata)
    return path


def read_provenance(path: str | Path) -> dict:
    """The `provenance` a run recorded with a saved dictionary ({} when there is none)."""
    path = Path(path)
    if not path.is_file():
        raise CoxlmmError(f"dictionary_path={str(path)!r}: no such file (a run's dictionary.safetensors).")
    with safe_open(str(path), framework="pt") as f:
        return json.loads((f.metadata() or {}).get("provenance", "{}"))


def load_dictionary(path: str | Path, device: str | None = None) -> Dictionary:
    """The dictionary saved at `path`, fitted and ready to `encode`. `device` overrides the saved
    compute device (e.g. fitted on a GPU, used on a CPU)."""
    path = Path(path)
    if not path.is_file():
        raise CoxlmmError(f"no saved dictionary at {path}: expected a dictionary.safetensors of a run.")
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    config = json.loads(metadata.get("config", "{}"))
    if "_target_" not in config:
        raise CoxlmmError(
            f"{path} has no `_target_` in its config metadata (keys: {sorted(config)}): it was "
            "written by an older coxlmm, or is not a coxlmm dictionary. Fit it again."
        )
    node = {
        "_target_": config["_target_"], "_convert_": "all",
        "n_concepts": config["n_concepts"], "seed": config.get("seed", 0),
        "device": device if device is not None else config.get("device", "cpu"),
        "name": config.get("name"), "display_name": config.get("display_name"),
        **config.get("params", {}),
    }
    d = instantiate(node)
    return d.restore(tensors, config.get("fitted", {}))
