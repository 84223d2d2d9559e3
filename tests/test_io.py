"""coxlmm.io: atomic writes leave the old file on failure and no temporary; keys ignore dict order and are the
keys the caches had before they went through coxlmm.io (a store written by an older coxlmm is still found)."""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from coxlmm.io import atomic_write, atomic_write_dir, content_key, digest, file_sha256


def _left(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("kind", ["text", "bytes", "safetensors"])
def test_interrupted_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, kind):
    path = tmp_path / "entry.bin"
    atomic_write(path, "old")

    def half_then_fail(tmp: Path) -> None:
        if kind == "safetensors":
            save_file({"x": torch.ones(3)}, str(tmp))
        else:
            tmp.write_text("half") if kind == "text" else tmp.write_bytes(b"half")
        raise KeyboardInterrupt  # Ctrl-C in the middle of a write

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, half_then_fail)
    assert path.read_text() == "old" and _left(tmp_path) == ["entry.bin"]

    atomic_write(path, lambda tmp: save_file({"x": torch.ones(3)}, str(tmp)))
    assert torch.equal(load_file(str(path))["x"], torch.ones(3)) and _left(tmp_path) == ["entry.bin"]
    atomic_write(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01" and _left(tmp_path) == ["entry.bin"]


def test_atomic_folder_is_written_once_and_a_failed_fill_leaves_nothing(tmp_path):
    folder = tmp_path / "readout"

    def fail(tmp: Path) -> None:
        (tmp / "a.json").write_text("{}")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write_dir(folder, fail)
    assert _left(tmp_path) == []
    assert atomic_write_dir(folder, lambda tmp: (tmp / "a.json").write_text("1")) is True
    assert atomic_write_dir(folder, lambda tmp: (tmp / "a.json").write_text("2")) is False  # another job's: kept
    assert (folder / "a.json").read_text() == "1" and _left(tmp_path) == ["readout"]


def test_content_key_is_stable_across_dict_order_and_changes_with_content():
    a = {"model": {"class": "X", "dtype": "float32"}, "token": "dog", "layers": [0, 29]}
    b = {"layers": [0, 29], "token": "dog", "model": {"dtype": "float32", "class": "X"}}
    assert content_key(a) == content_key(b) and len(content_key(a)) == 16
    assert content_key({**a, "token": "cat"}) != content_key(a)
    assert content_key({**a, "layers": [29, 0]}) != content_key(a)  # lists keep their order


def test_keys_are_the_ones_older_stores_were_written_under(tmp_path):
    """Values computed by the helpers these replaced (extraction.store.store_key, concepts.cache.z_digest,
    scorers.cache.image_key/fingerprint_hash, causal.stages.tensor_hash, bertscore.state_dict_sha256,
    models.fingerprint, depalm_mini.file_sha256) at commit be93da0."""
    from coxlmm.causal.stages import tensor_hash
    from coxlmm.concepts.cache import z_digest
    from coxlmm.extraction.store import FeatureStore
    from coxlmm.models.fingerprint import file_fingerprint, small_files_sha256
    from coxlmm.scorers.bertscore import state_dict_sha256
    from coxlmm.scorers.cache import image_key

    fields = {"version": 2, "model": {"class": "X", "dtype": "float32"}, "token": "dog", "layers": [0, 29],
              "path": Path("/a/b")}
    assert FeatureStore(tmp_path, fields).key == content_key(fields) == "ab59e1bc6856253e"
    assert content_key({"scorer": "embedded", "w": 1}) == "5306f703770aa97e"
    Z = torch.arange(12, dtype=torch.float32).reshape(3, 4) / 7
    assert z_digest(Z) == "0caf187edce09c6948ea4cfe28fc41f3"
    assert z_digest(Z.half()) == "8e1e01a00bcc05f0d49d96082b28e5c2"
    assert image_key(Image.new("RGB", (4, 3), (10, 20, 30))) == "bd5779a4e339212331e0822be03c8983ce6938cd"
    assert tensor_hash(Z, torch.ones(2, dtype=torch.float64)) == "794a73267349fd20"
    m = torch.nn.Linear(3, 2)
    with torch.no_grad():
        m.weight.copy_(torch.arange(6.0).reshape(2, 3))
        m.bias.copy_(torch.tensor([0.5, -1.0]))
    assert state_dict_sha256(m) == "a637d75ddd491e16866536255fbf15303844c1206afbbaa3e2bebbf0b603ff2f"
    save_file({"a": Z, "b": torch.arange(300.0)}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"x": 1}))
    (tmp_path / "w.bin").write_bytes(bytes(range(256)) * 100)
    assert file_fingerprint(tmp_path / "model.safetensors")[0] == "ee22dc422aafa81a"
    assert file_fingerprint(tmp_path / "w.bin")[0] == "7cf70f53a09395d7"
    assert small_files_sha256(tmp_path) == {"config.json": "613fe5aa65343dbb"}
    big = tmp_path / "big"
    big.write_bytes(bytes(range(256)) * 5000)  # > 1 MiB: read in chunks
    assert file_sha256(big) == "7d471e4af16db5a30ce10aebbc29f5178b2edbad6c7dc2e8ff8ee6e4848a726f"


def test_digest_names_its_algorithm():
    assert digest(["a", b"b"]) == digest([b"ab"]) != digest([b"ab"], "sha1")
    assert len(digest([b"ab"], "blake2b", digest_size=16)) == 32 and len(digest([b"ab"], chars=16)) == 16
