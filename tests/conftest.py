"""Session fixtures: tiny random Hugging Face VLMs saved to disk once per test session.

`tiny_llava_path`, `tiny_qwen2vl_path`, `tiny_idefics3_path` are directories written by
`save_pretrained` (model + processor with its chat template + `coxlmm_tiny_card.json`, which says
what the model generates: see `fixtures/tiny_models.py`). `tiny_vlm_path` runs a test once per
architecture.
"""

from __future__ import annotations

import os

# Tests never reach a model hub; set before transformers / huggingface_hub read it at import.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

TINY_ARCHS = ("llava", "qwen2vl", "idefics3")


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """SmolLM2's tokenizer, read from its GGUF once (a few seconds); builders copy it."""
    from tests.fixtures import tiny_models  # imported here: transformers is slow to import

    return tiny_models.smollm2_tokenizer()


def _build(arch: str, tmp_path_factory: pytest.TempPathFactory, tokenizer=None) -> str:
    from tests.fixtures import tiny_models

    out = tmp_path_factory.mktemp(f"tiny_{arch}")
    return str(tiny_models.build(arch, out, tmp_path_factory.mktemp(f"work_{arch}"), tokenizer))


@pytest.fixture(scope="session")
def tiny_llava_path(tmp_path_factory) -> str:
    return _build("llava", tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_qwen2vl_path(tmp_path_factory, smollm2_tokenizer) -> str:
    return _build("qwen2vl", tmp_path_factory, smollm2_tokenizer)


@pytest.fixture(scope="session")
def tiny_idefics3_path(tmp_path_factory, smollm2_tokenizer) -> str:
    return _build("idefics3", tmp_path_factory, smollm2_tokenizer)


@pytest.fixture(scope="session", params=TINY_ARCHS)
def tiny_vlm_path(request) -> str:
    return request.getfixturevalue(f"tiny_{request.param}_path")
