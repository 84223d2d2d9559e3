"""The LMM adapter protocol shared by every model (Hugging Face VLMs and the embedded DePALM-mini).

Layer convention: layer l in [0, num_layers) is the residual stream *output of decoder block l*,
before the LM's final norm; negative l counts from the end (-1 = last block). `unembed` applies the
final norm and the LM head, so `unembed(Z)` is the logit lens at any layer.

Generation is greedy. During `generate`, the extraction registers forward hooks on
`decoder_layers()[l]` that keep only the last position of each forward call: the prefill call's
last position predicts generated token g_0, and decode call j predicts g_j. So the hooked states
line up one-to-one with the generated ids, and nothing but (B, H) per step and layer is kept.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torch import nn


@dataclass
class GenerationOutput:
    sequences: torch.Tensor  # (batch, T) generated ids only (no prompt); padded after EOS with pad id
    lengths: torch.Tensor  # (batch,) number of generated ids up to and including EOS


class LMM(nn.Module, abc.ABC):
    """Adapter: a captioning LMM seen as (prompted images) -> greedy caption + residual stream.

    Attributes set by subclasses:
        model_id: str        hub id or path (part of the feature-store key)
        prompt: str          the user instruction (the exact rendered text goes in `fingerprint`)
        tokenizer:           a Hugging Face tokenizer of the language model
        num_layers: int      number of decoder blocks of the language model
        hidden_size: int     B, width of the residual stream
    """

    model_id: str
    prompt: str
    num_layers: int
    hidden_size: int

    # --- inputs -------------------------------------------------------------------------------
    @abc.abstractmethod
    def prepare(self, images: list[Image.Image]) -> dict[str, torch.Tensor]:
        """Prompted, left-padded model inputs for a batch of images (on CPU)."""

    # --- generation -----------------------------------------------------------------------------
    @abc.abstractmethod
    def generate(self, inputs: dict[str, torch.Tensor], max_new_tokens: int) -> GenerationOutput:
        """Greedy captions for a prepared batch; one forward call per generated token (KV cache)."""

    @abc.abstractmethod
    def decoder_layers(self) -> nn.ModuleList:
        """The language model's decoder blocks (hook points for layer l)."""

    @abc.abstractmethod
    def teacher_forced_states(
        self, inputs: dict[str, torch.Tensor], generated: torch.Tensor, layers: list[int]
    ) -> dict[int, torch.Tensor]:
        """Independent check path: one forward over prompt + `generated` (B, T).

        Returns {l: (B, T, H)} where [:, j] is the state at the position that predicts generated[:, j].
        """

    # --- logit lens -----------------------------------------------------------------------------
    @abc.abstractmethod
    def final_norm(self, h: torch.Tensor) -> torch.Tensor:
        """The LM's final norm applied to (..., H)."""

    @property
    @abc.abstractmethod
    def W_U(self) -> torch.Tensor:
        """Unembedding matrix (vocab, H)."""

    def unembed(self, h: torch.Tensor) -> torch.Tensor:
        """Logit lens: (n, H) -> (n, vocab) = lm_head(final_norm(h)), computed in float32 on h's device."""
        W = self.W_U
        hn = self.final_norm(h.to(device=W.device, dtype=W.dtype))
        return (hn.float() @ W.float().T).to(h.device)

    # --- identity -------------------------------------------------------------------------------
    def resolve_layer(self, layer: int) -> int:
        """Map a possibly negative layer index to [0, num_layers); clear error when out of range."""
        from coxlmm.errors import CoxlmmError

        n = self.num_layers
        if not -n <= layer < n:
            raise CoxlmmError(
                f"layer {layer} is out of range for {self.model_id}, whose language model has {n} "
                f"decoder blocks: use an index in [{-n}, {n - 1}] (negative counts from the end, -1 = last)."
            )
        return layer % n

    def fingerprint(self) -> dict[str, Any]:
        """What identifies this model's features: id/path, exact prompt text, dtype, class."""
        return {"model_id": self.model_id, "prompt": self.prompt, "class": type(self).__name__}

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device
