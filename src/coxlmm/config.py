"""Structured config schema: a typo in a key fails at composition with Hydra's own error.

Groups (`model`, `data`, `method`, `metrics`, `scorer`, `logger`) hold `_target_` objects and are
typed `Any` here; their keys are still checked, because Hydra puts the whole config in struct mode.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class ExtractionConfig:
    batch_size: int = 8
    max_new_tokens: int = 50
    layers: str = "all"  # all | requested — "all" lets every layer sweep share one extraction
    store_dtype: str = "float32"  # float32 | float16 | bfloat16
    require_gt: bool = True
    max_samples_train: Optional[int] = None
    max_samples_test: Optional[int] = None
    num_workers: int = 0


@dataclass
class TrainerConfig:
    """Lightning Trainer settings for extraction (device, precision, multi-GPU)."""

    accelerator: str = "auto"  # auto | cpu | gpu
    devices: Any = 1
    strategy: str = "auto"  # auto | ddp | ddp_spawn ...
    num_nodes: int = 1
    precision: Any = "32-true"


@dataclass
class GroundingConfig:
    n_top: int = 50  # top tokens of W_U · norm(u_k) considered
    n_words: int = 10  # words kept per concept (T_k)
    n_mas: int = 5  # most activating samples per concept (X_k,MAS)
    n_local: int = 4  # test samples shown in the local-interpretation figure


@dataclass
class PathsConfig:
    root_dir: str = "${hydra:runtime.cwd}"
    output_dir: str = "${hydra:runtime.output_dir}"
    cache_dir: str = "${paths.root_dir}/outputs/cache"


@dataclass
class Config:
    token: str = "circle"
    layers: list[int] = field(default_factory=lambda: [-1])
    seed: int = 0
    device: str = "cpu"  # where dictionaries are fitted: cpu | cuda
    train_split: str = "train"
    test_split: str = "test"
    model: Any = MISSING
    data: Any = MISSING
    method: Any = MISSING
    metrics: Any = field(default_factory=dict)
    scorer: Any = None
    logger: Any = field(default_factory=dict)
    extraction: ExtractionConfig = field(default_factory=ExtractionConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    grounding: GroundingConfig = field(default_factory=GroundingConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    figures: bool = True
    print_summary: bool = True


def register_configs() -> None:
    ConfigStore.instance().store(name="base_config", node=Config)
