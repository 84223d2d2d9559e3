"""One way for each thing: the primitives below are called in one module of src/ each (issue 24). A second
temp-and-rename, hash helper, hook registration or Trainer elsewhere fails here, naming the file."""

import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "coxlmm"

ONE_PLACE = {
    r"\bos\.replace\(": "io.py",  # atomic writes
    r"^\s*import hashlib|^\s*from hashlib ": "io.py",  # content keys and digests
    r"\.register_forward_hook\(": "models/hooks.py",  # hooks
    r"\bTrainer\(": "trainer.py",  # Lightning Trainers
    r"\bLambdaLR\(": None,  # schedules: coxlmm.trainer.warmup_cosine (torch's) or transformers'
}


@pytest.mark.parametrize("pattern", list(ONE_PLACE))
def test_a_primitive_is_used_in_its_one_module(pattern):
    where = sorted({str(p.relative_to(SRC)) for p in SRC.rglob("*.py")
                    if re.search(pattern, p.read_text(), flags=re.M)})
    assert where == ([ONE_PLACE[pattern]] if ONE_PLACE[pattern] else []), where
