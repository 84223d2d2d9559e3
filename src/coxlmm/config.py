"""Structured config schema: a typo in a key, or a value that is not one of a key's choices (the `Choice`
enums below), fails at composition with Hydra's own error, naming the key and the accepted values.

Groups (`model`, `data`, `method`, `metrics`, `scorer`, `logger`, `trainer`) hold `_target_` objects
and are typed `Any` here; their keys are still checked, because Hydra puts the whole config in struct
mode.

Placement lives in one place, the `trainer` group (conf/trainer/{cpu,gpu,ddp}.yaml, a
`lightning.pytorch.Trainer`): the model stages run on its devices, and the top-level `device` (where
dictionaries are fitted and scorers run) defaults to the trainer's accelerator through the
`${device_of:...}` resolver registered here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from coxlmm.errors import CoxlmmError


class Choice(str, Enum):
    """The accepted values of a config key; a member's name is its value, so `key=value` on the command line
    selects it, and it compares, prints and serialises (JSON, store keys) as that string."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


class StoredLayers(Choice):
    all = "all"  # every layer and the final norm: one extraction serves every layer sweep
    requested = "requested"  # only the run's `layers`


class StoreDtype(Choice):
    float32 = "float32"
    float16 = "float16"
    bfloat16 = "bfloat16"


class NoiseImages(Choice):
    noise = "noise"  # uniform pixel noise: the baseline
    real = "real"  # the sample's own image: a check that reproduces the extraction


@dataclass
class ExtractionConfig:
    batch_size: int = 32
    max_new_tokens: int = 50
    layers: StoredLayers = StoredLayers.all  # all | requested — "all" lets every layer sweep share one extraction
    store_dtype: StoreDtype = StoreDtype.float32  # float32 | float16 | bfloat16
    require_gt: bool = True
    max_samples_train: Optional[int] = None
    max_samples_test: Optional[int] = None
    num_workers: Optional[int] = None  # data-loader workers; null: sized from the job's thread budget (threads.py)
    progress_every_s: float = 30.0  # a progress line (done/total, rate, ETA) this often in a log without a TTY
    # Target tokens whose states the same greedy captions also harvest, each into its own store entry
    # (a sweep over tokens captions each image once): e.g. [circle, square, star, heart]
    tokens: list[str] = field(default_factory=list)


@dataclass
class NoiseConfig:
    """The position-matched noise source (Noise-Imgs baseline, prefix-only control): each selected
    sample's own caption prefix, teacher-forced after a noise image, read at the position that predicts t."""

    images: NoiseImages = NoiseImages.noise  # noise | real (the sample's own image: a check that equals the extraction)
    # One draw of the source per seed (Noise-Imgs and prefix-only average over them). Fixed, not the
    # job's seed: the same draws for every job of a (model, data, token, prompt), each cached once.
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])


@dataclass
class FitConfig:
    """How every dictionary of a run is fitted (the dictionary, the stability refit, Noise-Imgs')."""

    # Fit on a bootstrap resample of the training rows drawn from the seed: the seeds of a sweep are then
    # replicates of the fit for every method (deterministic ones included), and a method's spread over
    # seeds includes its fit variance.
    resample: bool = False
    # Read the training features from the store's shards in blocks (memory bounded by a block; docs/methods.md,
    # "Fits that stream"); rows per block (null: min(4096, M); SAEs and batched Semi-NMF use their own sizes).
    stream: bool = False
    block_rows: Optional[int] = None


@dataclass
class CompareConfig:
    """A family of method-vs-method comparisons (`coxlmm-tables`' claims table, Holm-corrected over it)."""

    reference: Optional[str] = None  # a method name of the sweep (e.g. semi_nmf); null: no comparisons
    against: list[str] = field(default_factory=list)  # methods compared with the reference; [] = every other one
    # per-unit score arrays compared (names in samples.safetensors); [] = every per-test-sample score that
    # has nulls (Table 1's CS and BS of the top-1 concept)
    samples: list[str] = field(default_factory=list)


@dataclass
class GroundingConfig:
    n_top: int = 50  # top tokens of W_U · norm(u_k) considered
    n_words: int = 10  # words kept per concept (T_k)
    n_mas: int = 5  # most activating samples per concept (X_k,MAS)
    n_local: int = 4  # test samples shown in the local-interpretation figure


@dataclass
class DoctorConfig:
    """`coxlmm-doctor` (src/coxlmm/doctor.py): checks a model on a few images before a long run."""

    n_images: int = 8  # training images it runs on (those whose reference captions hold the token first)


@dataclass
class PathsConfig:
    root_dir: str = "${hydra:runtime.cwd}"
    output_dir: str = "${hydra:runtime.output_dir}"
    cache_dir: str = "${paths.root_dir}/outputs/cache"


@dataclass
class Config:
    token: Any = "circle"  # the target word t, or a list of words: one dictionary over all their states
    layers: list[Any] = field(default_factory=lambda: [-1])  # ints (negative from the end) or "norm"
    seed: int = 0
    device: str = "${device_of:${trainer.accelerator}}"  # dictionaries and scorers: cpu | cuda
    train_split: str = "train"
    test_split: str = "test"
    model: Any = MISSING
    data: Any = MISSING
    method: Any = MISSING
    metrics: Any = field(default_factory=dict)
    scorer: Any = None
    logger: Any = field(default_factory=dict)
    trainer: Any = MISSING
    extraction: ExtractionConfig = field(default_factory=ExtractionConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    fit: FitConfig = field(default_factory=FitConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    grounding: GroundingConfig = field(default_factory=GroundingConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    threads: Optional[int] = None  # torch/OpenMP/BLAS threads; null: the job's CPUs / its launcher's parallel jobs
    dictionary_cache: bool = True  # fits cached by (content of Z, method config, seed) in <cache_dir>/dictionaries
    doctor: DoctorConfig = field(default_factory=DoctorConfig)
    dictionary_path: Optional[str] = None  # a run's dictionary.safetensors to use instead of fitting `method`
    figures: bool = True
    report: bool = True
    print_summary: bool = True


def device_of(accelerator: Any) -> str:
    """The torch device of a Lightning accelerator name: cpu -> cpu; gpu/cuda -> cuda; auto -> cuda if present."""
    acc = str(accelerator).lower()
    if acc in ("gpu", "cuda"):
        return "cuda"
    if acc == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cpu"


def register_configs() -> None:
    ConfigStore.instance().store(name="base_config", node=Config)
    register_resolvers()


def register_resolvers() -> None:
    """The resolvers the configs use: `${device_of:<accelerator>}`, `${min:a,b}`."""
    if not OmegaConf.has_resolver("device_of"):
        OmegaConf.register_new_resolver("device_of", device_of)
    if not OmegaConf.has_resolver("min"):  # e.g. the SAEs' default k: ${min:5,${.n_concepts}}
        OmegaConf.register_new_resolver("min", lambda *xs: min(xs))


def build(node, **kwargs):
    """`hydra.utils.instantiate`, re-raising our own user-facing errors unwrapped."""
    from hydra.utils import instantiate

    try:
        return instantiate(node, **kwargs)
    except Exception as e:
        cause = e
        while cause is not None and not isinstance(cause, CoxlmmError):
            cause = cause.__cause__
        raise (cause or e)


def check_extraction(e: Any) -> None:
    """Bad extraction settings get one clear paragraph, before any model is loaded."""
    def bad(key: str, value: Any, want: str) -> CoxlmmError:
        return CoxlmmError(f"extraction.{key}={value!r} is invalid: {want}.")

    if not isinstance(e.batch_size, int) or e.batch_size < 1:
        raise bad("batch_size", e.batch_size, "use a positive number of images per batch, e.g. 32")
    if not isinstance(e.max_new_tokens, int) or e.max_new_tokens < 1:
        raise bad("max_new_tokens", e.max_new_tokens, "use a positive number of generated tokens, e.g. 50")
    for key in ("max_samples_train", "max_samples_test"):
        v = getattr(e, key)
        if v is not None and (not isinstance(v, int) or v < 1):
            raise bad(key, v, "use null (no cap) or a positive number of samples")
    if not all(isinstance(t, str) and t.strip() and not any(c.isspace() for c in t.strip()) for t in e.tokens or ()):
        raise bad("tokens", list(e.tokens), "use a list of single words, e.g. [circle, square, star, heart]")
    if e.num_workers is not None and (not isinstance(e.num_workers, int) or e.num_workers < 0):
        raise bad("num_workers", e.num_workers, "use null (sized from the job's threads), 0 (load images in the main "
                  "process) or more workers")


def check_noise(n: Any) -> None:
    seeds = list(n.seeds) if n.seeds is not None else []
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) for s in seeds) or len(set(seeds)) < len(seeds):
        raise CoxlmmError(f"noise.seeds={seeds!r} is invalid: give one or more distinct integers, e.g. [0, 1, 2] "
                          "(one draw of the noise source each; Noise-Imgs and prefix-only average over them).")
