"""`ModelSpec`: a model known from its config alone, loaded only when a model stage needs it.

A job whose features are all cached must not load the model's weights (seconds for DePALM-mini,
minutes for a 7B model, times every job of a sweep). So the pipeline first asks the model config's
target what identifies its features and how deep it is, without loading it:

    conf/model/*.yaml  _target_: <a class or function that builds an LMM>
    target.describe(**params) -> {"key": {...}, "num_layers": int, "model_id": str}

`key` goes into every feature-store key (with the data, token and generation settings); the full
fingerprint of the loaded model is recorded in each entry's manifest when it is filled.
`ModelSpec.get()` builds the LMM the first time a model stage asks for it and returns the same
object afterwards.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

from coxlmm.errors import CoxlmmError
from coxlmm.layer import resolve_layer
from coxlmm.models.base import LMM

log = logging.getLogger(__name__)


class ModelSpec:
    """The model of a run, described without its weights; `get()` loads it (once)."""

    def __init__(self, node: DictConfig | dict[str, Any]):
        from coxlmm.config import build

        self.node = node
        params = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
        target = params.get("_target_")
        try:
            describe = getattr(get_object(str(target)), "describe")
        except Exception:  # noqa: BLE001 - not importable, or no describe: the same answer for the user
            raise CoxlmmError(
                f"model._target_={target!r} cannot describe itself: a model target must be importable and have "
                "`describe(**params)` returning the features' key and the number of decoder blocks without "
                "loading weights (see coxlmm.models.hf.HFVisionLM.describe)."
            ) from None
        self._build = build
        info = describe(**{k: v for k, v in params.items() if not k.startswith("_")})
        self.key: dict[str, Any] = info["key"]
        self.num_layers: int = int(info["num_layers"])
        self.model_id: str = str(info["model_id"])
        self._lmm: LMM | None = None

    def resolve_layer(self, layer: Any) -> int:
        return resolve_layer(layer, self.num_layers, self.model_id)

    @property
    def loaded(self) -> bool:
        return self._lmm is not None

    def get(self) -> LMM:
        """The LMM, built on the first call (on the CPU; each model stage places it)."""
        if self._lmm is None:
            t0 = time.perf_counter()
            log.info("loading model %s", self.model_id)
            lmm = self._build(self.node)
            if lmm.num_layers != self.num_layers:
                raise CoxlmmError(f"{self.model_id}: described with {self.num_layers} decoder blocks but loaded with "
                                  f"{lmm.num_layers}; its describe() and its loader disagree.")
            self._lmm = lmm
            log.info("model loaded in %.1f s", time.perf_counter() - t0)
        return self._lmm


class LoadedModel:
    """A `ModelSpec` for an LMM that is already built (tests, notebooks): key = its fingerprint."""

    def __init__(self, lmm: LMM):
        self._lmm = lmm
        self.key = lmm.fingerprint()
        self.num_layers = lmm.num_layers
        self.model_id = lmm.model_id

    def resolve_layer(self, layer: Any) -> int:
        return resolve_layer(layer, self.num_layers, self.model_id)

    loaded = True

    def get(self) -> LMM:
        return self._lmm


def model_handle(model: Any) -> ModelSpec | LoadedModel:
    """A `ModelSpec`/`LoadedModel` as is; an LMM wrapped as a `LoadedModel`."""
    return model if isinstance(model, (ModelSpec, LoadedModel)) else LoadedModel(model)
