"""Session fixtures: tiny random Hugging Face VLMs saved to disk, built once.

`tiny_checkpoint(arch)` returns the directory of one architecture of `fixtures/tiny_archs.ARCHS`,
written by `save_pretrained` (model + processor with its chat template + `coxlmm_tiny_card.json`, which
says what the model generates: see `fixtures/tiny_models.py`). `tiny_llava_path`, `tiny_qwen2vl_path`,
`tiny_idefics3_path` are three of them; `tiny_vlm_path` runs a test once per architecture of those three.

Built checkpoints persist between sessions in pytest's cache directory (`.pytest_cache/d/tiny_models/`),
keyed by a hash of the fixtures' sources and the torch and transformers versions: a rerun reuses them
(the matrix of 17 architectures builds in about a minute), and any change to a builder rebuilds them.
`pytest --cache-clear` rebuilds everything. Tests that change a checkpoint work on a copy.
"""

from __future__ import annotations

import os

# Tests never reach a model hub; set before transformers / huggingface_hub read it at import.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# `make test` runs the suite in pytest-xdist workers: each takes its share of the CPUs (as coxlmm's thread budget
# does for a sweep's jobs), set before torch loads OpenMP, so that the workers do not oversubscribe the cores.
# The tests' own subprocesses inherit it; coxlmm's budget reads it as a cap.
if os.environ.get("PYTEST_XDIST_WORKER") and "OMP_NUM_THREADS" not in os.environ:
    from coxlmm.threads import probe_cpus  # imports no torch

    _cpus, _ = probe_cpus()
    os.environ["OMP_NUM_THREADS"] = str(max(1, _cpus // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))

import hashlib  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

TINY_ARCHS = ("llava", "qwen2vl", "idefics3")
FIXTURES = Path(__file__).parent / "fixtures"


def _cache_root(config: pytest.Config) -> Path:
    import torch
    import transformers

    h = hashlib.sha256(f"{torch.__version__} {transformers.__version__}".encode())
    for name in ("tiny_models.py", "tiny_archs.py"):
        h.update((FIXTURES / name).read_bytes())
    root = Path(config.cache.mkdir("tiny_models"))
    for old in root.iterdir():  # checkpoints of older fixture sources: never read again
        if old.name != h.hexdigest()[:16]:
            shutil.rmtree(old, ignore_errors=True)
    return root / h.hexdigest()[:16]


class TinyCheckpoints:
    """arch -> the directory of its tiny checkpoint, built on first use (atomically: a temporary folder
    renamed into place, so an interrupted build is never taken as complete)."""

    def __init__(self, root: Path):
        self.root = root
        self._tokenizer = None

    def smollm2(self):
        """SmolLM2's tokenizer: read from its GGUF once (seconds), then from a saved copy."""
        from transformers import AutoTokenizer

        from tests.fixtures import tiny_models

        saved = self.root / "smollm2_tokenizer"
        if self._tokenizer is None:
            if not (saved / "tokenizer_config.json").exists():
                tmp = self.root / f".smollm2.{os.getpid()}"
                tiny_models.smollm2_tokenizer().save_pretrained(tmp)
                _publish(tmp, saved)
            self._tokenizer = AutoTokenizer.from_pretrained(saved)
        return self._tokenizer

    def __call__(self, arch: str) -> str:
        from tests.fixtures import tiny_archs, tiny_models

        out = self.root / arch
        if not (out / tiny_models.CARD_FILE).exists():
            tmp = self.root / f".{arch}.{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            tok = None if tiny_archs.ARCHS[arch].tokenizer == "sentencepiece" else self.smollm2()
            tiny_models.build(arch, tmp / "model", tmp / "work", tok)
            _publish(tmp / "model", out)
            shutil.rmtree(tmp, ignore_errors=True)
        return str(out)


def _publish(tmp: Path, final: Path) -> None:
    try:
        os.replace(tmp, final)
    except OSError:  # another session published it first: same content
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_checkpoint(pytestconfig) -> TinyCheckpoints:
    root = _cache_root(pytestconfig)
    root.mkdir(parents=True, exist_ok=True)
    return TinyCheckpoints(root)


@pytest.fixture(scope="session")
def smollm2_tokenizer(tiny_checkpoint):
    """SmolLM2's tokenizer (GPT-2-style byte BPE); builders copy it."""
    return tiny_checkpoint.smollm2()


@pytest.fixture(scope="session")
def tiny_llava_path(tiny_checkpoint) -> str:
    return tiny_checkpoint("llava")


@pytest.fixture(scope="session")
def tiny_qwen2vl_path(tiny_checkpoint) -> str:
    return tiny_checkpoint("qwen2vl")


@pytest.fixture(scope="session")
def tiny_idefics3_path(tiny_checkpoint) -> str:
    return tiny_checkpoint("idefics3")


@pytest.fixture(scope="session", params=TINY_ARCHS)
def tiny_vlm_path(request) -> str:
    return request.getfixturevalue(f"tiny_{request.param}_path")
