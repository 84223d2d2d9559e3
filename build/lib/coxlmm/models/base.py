"""The LMM adapter protocol shared by every model (Hugging Face VLMs and the embedded DePALM-mini).

Layer convention: layer l in [0, num_layers) is the residual stream *output of decoder block l*,
before the LM's final norm; negative l counts from the end (-1 = last block). One more layer,
`norm` (= index num_layers), is the output of the final norm after the last block: the features the
CoX-LMM reference code decomposes for LLaVA (`language_model.model.norm`). `unembed` applies the
final norm and the LM head, so `unembed(Z)` is the logit lens at any block; on `norm` features the
lens is the LM head alone (`readout.Readout.unembed(h, layer)` knows the difference).

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


NORM = "norm"  # the layer name of the final norm's output (index num_layers)


def resolve_layer(layer: Any, num_layers: int, model_id: str = "the model") -> int:
    """A layer as given by a user (an int, negative from the end, or "norm") -> an index in
    [0, num_layers], num_layers being the final norm's output. CoxlmmError when out of range."""
    from coxlmm.errors import CoxlmmError

    n = num_layers
    if isinstance(layer, str) and layer.strip().lower() == NORM:
        return n
    try:
        as_int = int(layer)
        ok = not isinstance(layer, bool) and as_int == float(layer)
    except (TypeError, ValueError):
        ok = False
    if not ok or not -n <= as_int < n:
        raise CoxlmmError(
            f"layer {layer!r} is out of range for {model_id}, whose language model has {n} decoder blocks: use an "
            f"index in [{-n}, {n - 1}] (negative counts from the end, -1 = last) or {NORM!r} (the final norm's "
            f"output)."
        )
    return as_int % n


def layer_name(index: int, num_layers: int) -> str:
    """'29' for a block, 'norm' for the final norm's output (index num_layers)."""
    return NORM if index == num_layers else str(index)


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
    def norm_module(self) -> nn.Module:
        """The LM's final norm (hook point of the `norm` layer, and the logit lens's norm)."""

    def hook_points(self) -> list[nn.Module]:
        """Module whose output is layer l, for l in [0, num_layers]: the blocks, then the final norm."""
        return [*self.decoder_layers(), self.norm_module()]

    @abc.abstractmethod
    def teacher_forced_states(
        self, inputs: dict[str, torch.Tensor], generated: torch.Tensor, layers: list[int]
    ) -> dict[int, torch.Tensor]:
        """Independent check path: one forward over prompt + `generated` (B, T).

        Returns {l: (B, T, H)} where [:, j] is the state at the position that predicts generated[:, j].
        """

    # --- logit lens -----------------------------------------------------------------------------
    def final_norm(self, h: torch.Tensor) -> torch.Tensor:
        """The LM's final norm applied to (..., H)."""
        return self.norm_module()(h)

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
    def resolve_layer(self, layer: Any) -> int:
        """A layer as given (int, negative from the end, or "norm") -> [0, num_layers]; see `resolve_layer`."""
        return resolve_layer(layer, self.num_layers, self.model_id)

    def hook_index(self, layer: Any) -> int:
        """Index into `hook_points()`: a resolved index (num_layers = the norm) is kept as it is."""
        return self.num_layers if layer == self.num_layers else self.resolve_layer(layer)

    def fingerprint(self) -> dict[str, Any]:
        """What identifies this model's features: id/path, exact prompt text, dtype, class."""
        return {"model_id": self.model_id, "prompt": self.prompt, "class": type(self).__name__}

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device
