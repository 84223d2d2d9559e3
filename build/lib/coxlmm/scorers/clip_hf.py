"""CLIPScore backend: any Hugging Face `CLIPModel` by hub id or local path (paper: openai/clip-vit-base-patch32).

    E_img = normalise(get_image_features(pixel_values))     (n, D)
    E_txt = normalise(get_text_features(input_ids))         (n, D), texts truncated to the model's 77 tokens

Nothing is downloaded: a hub id must already be in the local Hugging Face cache (HF_HUB_OFFLINE).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from PIL import Image

from coxlmm.errors import CoxlmmError
from coxlmm.scorers.base import Scorer, batches, l2_normalise

PAPER_CLIP = "openai/clip-vit-base-patch32"


def _features(out: Any) -> torch.Tensor:
    """`get_*_features` returns a tensor in transformers 4 and may return a model output in 5."""
    if isinstance(out, torch.Tensor):
        return out
    for name in ("pooler_output", "image_embeds", "text_embeds"):
        value = getattr(out, name, None)
        if isinstance(value, torch.Tensor):
            return value
    raise TypeError(f"unexpected CLIP feature output {type(out).__name__}")


class HFClip(Scorer):
    """Args: model (hub id in the local cache, or a folder with a CLIPModel, its tokenizer and image
    processor), batch_size, device."""

    def __init__(self, model: str = PAPER_CLIP, batch_size: int = 32, device: str = "cpu"):
        from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

        self.model_id = model
        try:
            self.model = CLIPModel.from_pretrained(model, local_files_only=True)
            self.tokenizer = AutoTokenizer.from_pretrained(model, local_files_only=True)
            self.image_processor = AutoImageProcessor.from_pretrained(model, local_files_only=True)
        except (OSError, ValueError) as e:
            raise CoxlmmError(
                f"scorer.clip.model={model!r} is not available locally ({type(e).__name__}: {str(e)[:200]}). "
                "Nothing is downloaded here: pass a folder holding a CLIPModel with its tokenizer and image "
                "processor (`save_pretrained`), or a hub id already in the Hugging Face cache; on this "
                "machine use `scorer=embedded`."
            ) from e
        self.model = self.model.eval().requires_grad_(False).to(device)
        self.batch_size, self.device = int(batch_size), torch.device(device)
        self.max_length = int(self.model.config.text_config.max_position_embeddings)

    @torch.no_grad()
    def embed_images(self, images: list[Image.Image]) -> torch.Tensor:
        out = []
        for chunk in batches(list(images), self.batch_size):
            px = self.image_processor(images=[im.convert("RGB") for im in chunk], return_tensors="pt")["pixel_values"]
            out.append(l2_normalise(_features(self.model.get_image_features(pixel_values=px.to(self.device)))).cpu())
        return torch.cat(out) if out else torch.zeros(0, self.model.config.projection_dim)

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        out = []
        for chunk in batches(list(texts), self.batch_size):
            enc = self.tokenizer(chunk, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
            feats = self.model.get_text_features(input_ids=enc["input_ids"].to(self.device),
                                                 attention_mask=enc["attention_mask"].to(self.device))
            out.append(l2_normalise(_features(feats)).cpu())
        return torch.cat(out) if out else torch.zeros(0, self.model.config.projection_dim)

    def fingerprint(self) -> dict[str, Any]:
        from coxlmm.scorers.bertscore import state_dict_sha256

        return {"scorer": "hf_clip", "model": os.path.abspath(self.model_id) if os.path.isdir(self.model_id)
                else self.model_id, "weights_sha256": state_dict_sha256(self.model)}
