"""The layer a run reads: one value, resolved once from what the user gave, and named from there.

Layer l in [0, num_layers) is the residual stream output of decoder block l (before the LM's final
norm); negative values count from the end (-1 = last block). One more layer, `norm` (index
num_layers), is the output of the final norm (models/base.py). Every place that names a layer
(feature-store tensors, output directories, metric prefixes, pages, logs) asks the `Layer`; nothing
parses a layer back from a string: a reader that needs the layers of a finished run reads them from
its concepts.json (`Layer.from_json`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from coxlmm.errors import CoxlmmError

NORM = "norm"  # the name of the final norm's output (index num_layers)


@dataclass(frozen=True, order=True)
class Layer:
    """index: 0..num_layers (num_layers = the final norm's output); name: "29" or "norm"."""

    index: int
    name: str

    @classmethod
    def at(cls, index: int, num_layers: int) -> "Layer":
        """The layer of a resolved index in [0, num_layers]."""
        return cls(index, NORM if index == num_layers else str(index))

    @classmethod
    def of(cls, value: Any, num_layers: int, model_id: str = "the model") -> "Layer":
        """A layer as a user gives it (an int, negative from the end, or "norm"); CoxlmmError when out of range."""
        return cls.at(resolve_layer(value, num_layers, model_id), num_layers)

    @property
    def dir(self) -> str:
        """The layer's output directory in a multi-layer run: layer_29, layer_norm."""
        return f"layer_{self.name}"

    @property
    def prefix(self) -> str:
        """The prefix of the layer's keys in a multi-layer run's metrics.json: layer_29/, layer_norm/."""
        return f"{self.dir}/"

    @property
    def tensor(self) -> str:
        """The feature store's tensor name of the layer: layer_029, layer_030 (the norm of a 30-block model)."""
        return tensor_name(self.index)

    @classmethod
    def from_json(cls, concepts: dict[str, Any]) -> "Layer | None":
        """The layer a concepts.json records (`layer` and `extra.layer_name`); None when it has none."""
        index = concepts.get("layer")
        if index is None:
            return None
        return cls(int(index), str((concepts.get("extra") or {}).get("layer_name", index)))


def tensor_name(index: int) -> str:
    """The feature store's tensor of layer `index` (an int key of the store's tensors)."""
    return f"layer_{index:03d}"


def resolve_layer(layer: Any, num_layers: int, model_id: str = "the model") -> int:
    """A layer as given by a user (an int, negative from the end, or "norm") -> an index in
    [0, num_layers], num_layers being the final norm's output. CoxlmmError when out of range."""
    n = num_layers
    if isinstance(layer, str) and layer.strip().lower() == NORM:
        return n
    try:
        as_int = int(layer)
        ok = not isinstance(layer, bool) and as_int == float(layer)
    except (TypeError, ValueError):
        ok = False
    if not ok or not -n <= as_int < n:
        raise CoxlmmError(
            f"layer {layer!r} is out of range for {model_id}, whose language model has {n} decoder blocks: use an "
            f"index in [{-n}, {n - 1}] (negative counts from the end, -1 = last) or {NORM!r} (the final norm's "
            f"output)."
        )
    return as_int % n
