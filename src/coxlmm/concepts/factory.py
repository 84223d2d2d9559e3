"""Build a dictionary from its config file when no full experiment config is composed.

The pipeline builds a method from the composed `cfg.method` node (`hydra.utils.instantiate`
returns a callable, `make(seed=s)` a fresh Dictionary). Tests, benchmarks and notebooks have no
composed experiment; these helpers compose `conf/method/<name>.yaml` on its own (with Hydra, so
`defaults:` lists and interpolations work as in a run) and instantiate the same `_target_`:

    make = method_factory("topk_sae", n_concepts=32, k=4)   # callable(seed=...) -> Dictionary
    d = build_dictionary("semi_nmf", n_concepts=20, seed=0)  # one fresh Dictionary

The method files interpolate the experiment's `trainer.*` keys; here they come from the `trainer`
argument (CPU, 32-bit, by default). The device is given at instantiation, as the pipeline does
(`device`, CPU by default). The method names are the files in `conf/method/`; there is no other list.
"""

from __future__ import annotations

from typing import Any, Callable

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from coxlmm.errors import CoxlmmError
from coxlmm.paths import CONF_DIR

_ROOT = "_coxlmm_method_root"  # a primary config with only what method files interpolate
TRAINER = {"accelerator": "cpu", "devices": 1, "precision": "32-true"}


def method_names() -> list[str]:
    """The dictionary methods: stems of `conf/method/*.yaml`, sorted."""
    return sorted(p.stem for p in (CONF_DIR / "method").glob("*.yaml"))


def compose_method(name: str, trainer: dict[str, Any] | None = None, **params: Any) -> DictConfig:
    """The composed `method` node of `conf/method/<name>.yaml`, `params` merged over its keys,
    interpolations resolved against `trainer`."""
    if name not in method_names():
        raise CoxlmmError(
            f"Unknown dictionary method {name!r}. Methods (files in {CONF_DIR / 'method'}): "
            f"{', '.join(method_names())}. Add a method with one module under "
            "src/coxlmm/concepts/ and one yaml whose `_target_` names its class."
        )
    from coxlmm.config import register_resolvers

    register_resolvers()
    ConfigStore.instance().store(name=_ROOT, node={"trainer": {**TRAINER, **(trainer or {})}})
    overrides = [f"+method={name}"]
    if GlobalHydra.instance().is_initialized():  # inside a Hydra app: its search path has conf/
        cfg = compose(config_name=_ROOT, overrides=overrides)
    else:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name=_ROOT, overrides=overrides)
    with open_dict(cfg):
        cfg.method = OmegaConf.merge(cfg.method, params)
    OmegaConf.resolve(cfg)
    return cfg.method


def method_factory(name: str, device: str = "cpu", trainer: dict[str, Any] | None = None,
                   **params: Any) -> Callable[..., Any]:
    """`instantiate` of the composed method node on `device`: a callable, `make(seed=s)` -> Dictionary."""
    return instantiate(compose_method(name, trainer, **params), device=device)


def build_dictionary(name: str, seed: int = 0, device: str = "cpu",
                     trainer: dict[str, Any] | None = None, **params: Any):
    """A fresh, unfitted dictionary of method `name` (its yaml, `params` overriding its keys)."""
    return method_factory(name, device, trainer, **params)(seed=seed)
