"""The LMM adapter protocol shared by every model (Hugging Face VLMs and the embedded DePALM-mini).

Layer convention: layer l in [0, num_layers) is the residual stream *output of decoder block l*,
before the LM's final norm; negative l counts from the end (-1 = last block). One more layer,
`norm` (= index num_layers), is the output of the final norm after the last block: the features the
CoX-LMM reference code decomposes for LLaVA (`language_model.model.norm`). `unembed` applies the
final norm and the model's output head, so `unembed(Z)` is the logit lens at any block; on `norm`
features the lens is the head alone (`readout.Readout.unembed(h, layer)` knows the difference).

The output head is the model's own: W_U followed by whatever its forward does to lm_head's output
before returning the logits (`LogitHead`: Cohere's and Aya Vision's `logit_scale`, Gemma 2/3's final
soft-capping, Granite's `logits_scaling`), so coxlmm's log p(t) is the model's log p(t).

Generation is greedy. During `generate`, the extraction registers forward hooks on
`decoder_layers()[l]` that keep only the last position of each forward call: the prefill call's
last position predicts generated token g_0, and decode call j predicts g_j. So the hooked states
line up one-to-one with the generated ids, and nothing but (B, H) per step and layer is kept.
Every hook goes through `models/hooks.py`.

`teacher_forced_states` (the independent check path, and the forward of every causal intervention) is
written once, here: an adapter supplies only `forward_sequence`, its one forward over prompt + generated
ids (how it builds the inputs or embeddings, which module it calls); the states come from hooks.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torch import nn

from coxlmm.layer import resolve_layer
from coxlmm.models import hooks


@dataclass(frozen=True)
class LogitHead:
    """What a model's forward does to lm_head's output z = W_U · norm(h) before it returns the logits:

        logits = c · tanh(s · z / c)    (softcap c: Gemma 2 and 3's final_logit_softcapping)
        logits = s · z                  (no softcap; s: Cohere's logit_scale, 1 / Granite's logits_scaling)

    Both are monotonic, so the lens's top tokens do not depend on them; log-probabilities do."""

    scale: float = 1.0
    softcap: float | None = None

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        if self.scale != 1.0:
            z = z * self.scale
        if self.softcap:
            z = torch.tanh(z / self.softcap) * self.softcap
        return z

    def to_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "softcap": self.softcap}


def fit_logit_head(z: torch.Tensor, y: torch.Tensor, declared: LogitHead, rtol: float) -> LogitHead | None:
    """The `LogitHead` that maps lm_head's output z (n, vocab) to the logits y (n, vocab) the model returned:
    the declared one (its config's constants) if it reproduces y, else the identity, else a fitted scale
    s = <z, y> / <z, z>; None when none does (within rtol of max |y|)."""
    z, y = z.float(), y.float()
    tol = rtol * float(y.abs().max().clamp_min(1.0))
    s = float((z * y).sum() / (z * z).sum().clamp_min(1e-30))
    for head in (declared, LogitHead(), LogitHead(scale=s)):
        if float((head(z) - y).abs().max()) <= tol:
            return head
    return None


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
    logit_head: LogitHead = LogitHead()  # what the model's forward applies after W_U (identity by default)

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

    def logits_modules(self) -> list[nn.Module]:
        """Modules whose forward returns the model's own logits (`.logits`, (B, S, vocab)), outermost first: during
        generation, the first that runs once per generated token returns the logits the model decoded from
        (what the doctor compares coxlmm's readout with). [] when not known (the check is skipped)."""
        return []

    def hook_points(self) -> list[nn.Module]:
        """Module whose output is layer l, for l in [0, num_layers]: the blocks, then the final norm."""
        return [*self.decoder_layers(), self.norm_module()]

    @abc.abstractmethod
    def forward_sequence(self, inputs: dict[str, torch.Tensor], generated: torch.Tensor) -> None:
        """One forward of the model, without KV cache, over the prepared prompt inputs (B, P) followed by
        the ids `generated` (B, T), with every per-token input extended as `generate` extends it. Its
        output is not used: `teacher_forced_states` reads the hook points."""

    @torch.no_grad()
    def teacher_forced_states(
        self, inputs: dict[str, torch.Tensor], generated: torch.Tensor, layers: list[int]
    ) -> dict[int, torch.Tensor]:
        """Independent check path: one forward over prompt (B, P) + `generated` (B, T).

        Returns {l: (B, T, H)} keyed by the layers as given, where [:, j] is the state at position P - 1 + j,
        the one that predicts generated[:, j] (the last prompt position for j = 0). Tokens after EOS come
        later in the sequence, so the causal mask hides them.
        """
        P, T = inputs["input_ids"].shape[1], generated.shape[1]
        idx = {l: self.hook_index(l) for l in layers}
        points = self.hook_points()
        with hooks.capture({i: points[i] for i in set(idx.values())}) as states:
            self.forward_sequence(inputs, generated)
        return {l: states[i][:, P - 1: P - 1 + T] for l, i in idx.items()}

    # --- logit lens -----------------------------------------------------------------------------
    def final_norm(self, h: torch.Tensor) -> torch.Tensor:
        """The LM's final norm applied to (..., H)."""
        return self.norm_module()(h)

    @property
    @abc.abstractmethod
    def W_U(self) -> torch.Tensor:
        """Unembedding matrix (vocab, H)."""

    def head(self, hn: torch.Tensor) -> torch.Tensor:
        """The model's output head on final-normed states: (..., H) -> (..., vocab) float32 logits on W_U's
        device, W_U then `logit_head` (the model's own transforms)."""
        W = self.W_U
        return self.logit_head(hn.to(W.device, torch.float32) @ W.float().T)

    # --- interventions (causal checks) -------------------------------------------------------------
    @torch.no_grad()
    def target_logprobs(self, images: list[Image.Image], prefixes: list[list[int]], layer: int,
                        states: torch.Tensor) -> torch.Tensor:
        """Next-token log-probabilities at the target position with the layer-L state replaced.

        Row r: image r, prompt ⊕ prefixes[r] (the generated ids before t), and the output of hook point
        `layer` at the last position (the one that predicts t) replaced by states[r] (R, H); everything
        else runs as the model does. Returns (R, vocab) float32 log-probabilities on the CPU.

        One teacher-forced forward per row (any adapter with `teacher_forced_states`)."""
        R = len(images)
        pos = torch.tensor([len(p) for p in prefixes])
        pad = int(getattr(self, "pad_id", 0) or 0)
        generated = torch.full((R, int(pos.max()) + 1), pad, dtype=torch.long)
        for r, p in enumerate(prefixes):
            generated[r, : len(p)] = torch.tensor(p, dtype=torch.long)  # the column at len(p) is the target's
        inputs = self.prepare(images)
        P = inputs["input_ids"].shape[1]
        point = self.hook_points()[self.hook_index(layer)]
        with hooks.hooked((point, hooks.replace_rows(torch.arange(R), P - 1 + pos, states))):
            out = self.teacher_forced_states(inputs, generated, [self.num_layers])[self.num_layers]
        h = out[torch.arange(R, device=out.device), pos.to(out.device)]  # (R, H), after the final norm
        return torch.log_softmax(self.head(h), dim=-1).cpu()

    @torch.no_grad()
    def steered_generate(self, images: list[Image.Image], deltas: torch.Tensor, layer: int, max_new_tokens: int,
                         positions: str = "generated") -> GenerationOutput:
        """Greedy captions with deltas[r] (R, H) added to the output of hook point `layer`: at every
        position that predicts a generated token ("generated": the prompt's last position, then each
        decode step) or at every position, prompt included ("all"). A zero delta is plain generation."""
        inputs = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in self.prepare(images).items()}
        with hooks.hooked((self.hook_points()[self.hook_index(layer)], hooks.add_delta(deltas, positions))):
            return self.generate(inputs, max_new_tokens=max_new_tokens)

    @torch.no_grad()
    def caption_logprobs(self, images: list[Image.Image], generated: torch.Tensor, layer: int | None = None,
                         transform=None) -> torch.Tensor:
        """log p(generated[r, j] | image r, prompt, generated[r, :j]) (R, T) float32 on the CPU, teacher-forced;
        with `transform` ((n, H) -> (n, H)), the output of hook point `layer` is replaced by its transform at
        every position that predicts a caption token (the whole-caption splice of a reconstruction)."""
        inputs = self.prepare(images)
        splice = []
        if transform is not None:
            P, T = inputs["input_ids"].shape[1], generated.shape[1]
            splice = [(self.hook_points()[self.hook_index(layer)], hooks.transform_span(P - 1, T, transform))]
        with hooks.hooked(*splice):
            h = self.teacher_forced_states(inputs, generated, [self.num_layers])[self.num_layers]  # (R, T, H)
        lp = torch.log_softmax(self.head(h), dim=-1).cpu()
        return lp.gather(-1, generated.cpu()[..., None])[..., 0]

    @torch.no_grad()
    def text_logprobs(self, generated: torch.Tensor) -> torch.Tensor:
        """log p(generated[r, j] | generated[r, :j]) (R, T) under the language model alone: no image, no
        prompt, the sequence opened by the tokenizer's BOS (or its first token scored from nothing: 0).
        Fluency that does not know the image, so a correct attribute change is not penalised."""
        bos = getattr(self.tokenizer, "bos_token_id", None)
        ids = generated.cpu().clamp_min(0)
        if bos is not None:
            ids = torch.cat([torch.full((len(ids), 1), int(bos)), ids], dim=1)
        logits = self.text_logits(ids.to(self.device)).float().cpu()
        lp = torch.log_softmax(logits, dim=-1)
        if bos is not None:
            return lp[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]
        out = torch.zeros(ids.shape, dtype=torch.float32)
        out[:, 1:] = lp[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]
        return out

    def text_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(R, T) ids -> (R, T, vocab) next-token logits of the language model on text alone."""
        raise NotImplementedError(f"{type(self).__name__} does not run its language model on text alone")

    def unembed(self, h: torch.Tensor) -> torch.Tensor:
        """Logit lens: (n, H) -> (n, vocab) = head(final_norm(h)), computed in float32, returned on h's device."""
        W = self.W_U
        return self.head(self.final_norm(h.to(device=W.device, dtype=W.dtype))).to(h.device)

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
