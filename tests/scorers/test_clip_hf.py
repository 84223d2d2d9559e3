"""HFClip loads any CLIPModel folder (a tiny random one here) and refuses what is not available locally."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from coxlmm.errors import CoxlmmError
from coxlmm.scorers.bertscore import minilm_dir
from coxlmm.scorers.clip_hf import HFClip


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    from transformers import AutoTokenizer, CLIPConfig, CLIPImageProcessor, CLIPModel

    path = tmp_path_factory.mktemp("tiny_clip")
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())  # any tokenizer works with CLIPModel's text tower
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), max_position_embeddings=77, eos_token_id=tokenizer.sep_token_id,
                         bos_token_id=tokenizer.cls_token_id, pad_token_id=tokenizer.pad_token_id, **small),
        vision_config=dict(image_size=32, patch_size=8, **small), projection_dim=16)
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    return str(path)


def test_embeddings_are_normalised_float32(tiny_clip_dir):
    clip = HFClip(model=tiny_clip_dir, batch_size=2)
    images = [Image.new("RGB", (40, 30), c) for c in ("red", "blue", "white")]
    E_img, E_txt = clip.embed_images(images), clip.embed_texts(["a red circle", "a blue star", "x"])
    for E in (E_img, E_txt):
        assert E.shape == (3, 16) and E.dtype == torch.float32
        assert torch.allclose(E.norm(dim=1), torch.ones(3), atol=1e-5)
    assert clip.score(images, ["a", "b", "c"]).shape == (3,)
    assert len(clip.fingerprint()["weights_sha256"]) == 64


def test_unavailable_model_is_a_clear_error():
    with pytest.raises(CoxlmmError, match="not available locally"):
        HFClip(model="/nonexistent/clip-folder")
