"""The feature-store key notices new weights: overwriting a checkpoint's weights at the same path
re-extracts and re-reads the readout, while touching or re-copying the same bytes does not; the
fingerprint reads a bounded number of bytes however large the weights (models/fingerprint.py)."""

from __future__ import annotations

import json
import os
import shutil
import struct

import pytest
import torch

from coxlmm.extraction import ExtractionSettings, ensure_readout, extract
from coxlmm.models.fingerprint import FILE_WINDOW, FILE_WINDOWS, TENSOR_WINDOW, file_fingerprint, weights_fingerprint
from coxlmm.models.spec import ModelSpec
from tests.extraction.conftest import make_folder_dataset


def spec(path) -> ModelSpec:
    return ModelSpec({"_target_": "coxlmm.models.hf.HFVisionLM", "name_or_path": str(path)})


def test_overwriting_the_weights_at_the_same_path_re_extracts_and_rereads_the_readout(tiny_llava_path, tmp_path):
    """A user fine-tunes the connector and the LM head and saves to the same folder: the next run must not
    read the old model's features or readout."""
    from transformers import AutoModelForImageTextToText

    from coxlmm.data.folder import ImageFolderCaptions

    model_dir = tmp_path / "llava"
    shutil.copytree(tiny_llava_path, model_dir)
    ds = ImageFolderCaptions(root=str(make_folder_dataset(tmp_path / "data", n_train=4, n_test=1, words=("dog",))))
    root, settings = str(tmp_path / "cache" / "features"), ExtractionSettings(batch_size=4, max_new_tokens=16)
    old = extract(spec(model_dir), ds, "dog", [-1], settings, root)
    old_readout = ensure_readout(spec(model_dir), root)
    Z_old = old.load([2])[0][2]

    os.utime(model_dir / "model.safetensors")  # touched, same bytes: still cached
    assert spec(model_dir).key == old.fields["model"]

    model = AutoModelForImageTextToText.from_pretrained(model_dir)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # small enough to keep the scripted caption, in every element of these tensors
        for name, p in model.named_parameters():
            if "multi_modal_projector" in name or name == "lm_head.weight":
                p.add_(1e-3 * torch.randn(p.shape, generator=g))
    model.save_pretrained(model_dir)  # same path, same file size

    new_spec = spec(model_dir)
    assert new_spec.key["weights"] != old.fields["model"]["weights"]
    new = extract(new_spec, ds, "dog", [-1], settings, root)
    assert new.dir != old.dir and json.loads((new.dir / "manifest.json").read_text())["n_extracted"] == 4
    Z_new = new.load([2])[0][2]
    assert Z_new.shape == Z_old.shape and not torch.equal(Z_new, Z_old)
    readout = ensure_readout(new_spec, root)
    assert torch.equal(readout.W_U, model.lm_head.weight.detach()) and not torch.equal(readout.W_U, old_readout.W_U)


def _sparse_safetensors(path, n_tensors: int, numel: int) -> list[tuple[int, int]]:
    """A safetensors file of n_tensors float32 tensors of `numel` elements, its data a hole (no disk used);
    returns each tensor's absolute [start, end)."""
    header, offset = {}, 0
    for i in range(n_tensors):
        header[f"layers.{i}.weight"] = {"dtype": "F32", "shape": [numel], "data_offsets": [offset, offset + 4 * numel]}
        offset += 4 * numel
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        f.truncate(8 + len(blob) + offset)
    base = 8 + len(blob)
    return [(base + a, base + b) for a, b in (v["data_offsets"] for v in header.values())]


def _write_at(path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


@pytest.mark.parametrize("n_tensors", [291])  # a 7B Llama's tensor count
def test_the_fingerprint_reads_a_bounded_number_of_bytes_and_sees_each_tensor(tmp_path, n_tensors):
    path = tmp_path / "model-00001-of-00001.safetensors"
    spans = _sparse_safetensors(path, n_tensors, numel=6_100_000)  # 7 GB of float32, sparse
    size = path.stat().st_size
    assert size > 7e9
    fp, read = file_fingerprint(path)
    header = spans[0][0]
    assert read <= header + 3 * TENSOR_WINDOW * n_tensors < 200_000  # ~100 KB of 7 GB
    # A new value at the start, middle or end of any one tensor changes it; so does a new shape (the header).
    for start, end in (spans[0], spans[n_tensors // 2], spans[-1]):
        for at in (start, start + (end - start) // 2, end - 4):
            _write_at(path, at, b"\x01\x02\x03\x04")
            assert file_fingerprint(path)[0] != fp
            _write_at(path, at, b"\x00\x00\x00\x00")
            assert file_fingerprint(path)[0] == fp


def test_other_weight_files_are_sampled_and_folders_list_every_weight_file(tmp_path):
    big = tmp_path / "pytorch_model.bin"
    with open(big, "wb") as f:
        f.truncate(3 << 30)
    fp, read = file_fingerprint(big)
    assert read <= FILE_WINDOWS * FILE_WINDOW
    _write_at(big, big.stat().st_size - 10, b"x")  # the last window covers the end
    assert file_fingerprint(big)[0] != fp
    (tmp_path / "config.json").write_text("{}")
    assert set(weights_fingerprint(tmp_path)) == {"pytorch_model.bin"}
    assert weights_fingerprint("org/hub-id") == {}  # a hub id: its revision (a commit) pins the weights
