"""`Readout`: the model's logit lens without the model (final norm + W_U + tokenizer), cached per model.

Tensor stages (dictionary, grounding, metrics) read the words of a direction through the logit lens,

    logits(h) = head(W_U · norm(h))      h (n, B) -> (n, vocab);  W_U (vocab, B)

where `head` is what the model's forward does to lm_head's output (`base.LogitHead`: a logit scale,
final soft-capping), so log-probabilities read from the cache are the model's. The lens only needs the
final norm's parameters, the unembedding matrix, the head's constants and the tokenizer. The first model
stage of a model saves them once (`save`), and every later job loads them (`load`, a few hundred MB for
a 7B model, read in a second) instead of the model.

What grounding reads of the tokenizer is each token id's surface piece (`grounding.text.word_pieces`), a
function of the id alone: the readout saves the table of every id's piece (`pieces.json`), so a job whose
features are cached reads words without loading the tokenizer or importing transformers (0.7 s of a cached
job). The tokenizer itself loads on first use (`tokenizer`: the causal checks decode captions with it). A
readout saved before the table existed gets it written on its first load.

The final norm is read off the module by probing it on random inputs (the same code then serves
RMSNorm of Llama/Qwen/SmolLM, Gemma's RMSNorm with its (1 + w) scale, and LayerNorm of OPT/GPT-2):

    rms      norm(h) = h / sqrt(mean(h²) + eps) · s
    layer    norm(h) = (h − mean(h)) / sqrt(var(h) + eps) · s + b

A module that matches neither is refused with a clear error rather than guessed.

Layer `norm` (index num_layers, the output of the final norm) is already normalised: its lens is
W_U alone (`unembed(h, layer=num_layers)`).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from coxlmm.errors import CoxlmmError
from coxlmm.io import atomic_write, atomic_write_dir
from coxlmm.layer import resolve_layer
from coxlmm.models.base import LogitHead

READOUT_FILE, META_FILE, TOKENIZER_DIR, PIECES_FILE = "readout.safetensors", "readout.json", "tokenizer", "pieces.json"


@dataclass
class FinalNorm:
    kind: str  # "rms" | "layer"
    scale: torch.Tensor  # (B,) effective scale s (w, or 1 + w for Gemma)
    bias: torch.Tensor | None  # (B,) LayerNorm's b
    eps: float

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        """(..., B) float32 -> (..., B) float32."""
        h = h.float()
        s = self.scale.to(h.device, torch.float32)
        if self.kind == "rms":
            return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps) * s
        b = self.bias.to(h.device, torch.float32) if self.bias is not None else None
        return torch.nn.functional.layer_norm(h, (h.shape[-1],), s, b, self.eps)


def probe_norm(module: torch.nn.Module, hidden_size: int) -> FinalNorm:
    """The `FinalNorm` that computes what `module` computes (checked on seeded random inputs)."""
    m = copy.deepcopy(module).to("cpu", torch.float32)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, hidden_size, generator=g) * 3.0 + 0.5
    with torch.no_grad():
        want = m(x).float()
    w = getattr(m, "weight", None)
    w = w.detach().float() if isinstance(w, torch.Tensor) else torch.ones(hidden_size)
    b = getattr(m, "bias", None)
    b = b.detach().float() if isinstance(b, torch.Tensor) else None
    eps = next((float(getattr(m, a)) for a in ("variance_epsilon", "eps", "epsilon") if getattr(m, a, None) is not None),
               1e-6)
    candidates = [FinalNorm("rms", w, None, eps), FinalNorm("rms", 1.0 + w, None, eps), FinalNorm("layer", w, b, eps)]
    tol = 1e-4 * float(want.abs().max().clamp_min(1.0))
    for c in candidates:
        if float((c(x) - want).abs().max()) <= tol:
            return c
    raise CoxlmmError(
        f"the language model's final norm ({type(module).__name__}) is neither an RMSNorm (weight w or 1 + w) nor a "
        "LayerNorm: coxlmm cannot reproduce the logit lens without the model. Add its formula to "
        "coxlmm.models.readout.probe_norm."
    )


class Readout:
    """Final norm + unembedding + tokenizer of one model: `unembed(h, layer)` is the logit lens.

    Also what the grounding functions need of an `LMM` (`unembed`, `tokenizer`, `hidden_size`)."""

    def __init__(self, W_U: torch.Tensor, norm: FinalNorm, tokenizer: Any, num_layers: int, model_id: str,
                 device: str | torch.device = "cpu", logit_head: LogitHead = LogitHead(),
                 folder: str | Path | None = None):
        """`tokenizer`: the tokenizer, or None to load it from `folder` (a saved readout) on first use."""
        self.device = torch.device(device)
        self.logit_head = logit_head
        self.W_U = W_U.to(self.device)  # (vocab, B), in the model's dtype
        self.norm = norm
        self._tokenizer = tokenizer
        self._pieces: list[str] | None = None
        self.folder = Path(folder) if folder is not None else None
        self.num_layers = int(num_layers)
        self.model_id = model_id
        self.hidden_size = int(W_U.shape[1])

    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer (a saved readout's is loaded here, the first time: it imports transformers)."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(str(self.folder / TOKENIZER_DIR))
        return self._tokenizer

    def pieces(self, ids: Any) -> list[str]:
        """The surface piece of each token id (`grounding.text.word_pieces`), from the saved table."""
        if self._pieces is None:
            self._pieces = self._piece_table()
        table, n = self._pieces, len(self._pieces)
        return [table[i] if 0 <= i < n else "" for i in map(int, ids)]

    def _piece_table(self) -> list[str]:
        """Every id's piece: `pieces.json` of a saved readout, else computed (and saved for the next job)."""
        from coxlmm.grounding.text import word_pieces

        path = self.folder / PIECES_FILE if self.folder is not None else None
        if path is not None and path.is_file():
            return json.loads(path.read_text())
        table = word_pieces(self.tokenizer, range(self.W_U.shape[0]))
        if path is not None:
            atomic_write(path, json.dumps(table))
        return table

    # --- the lens ---------------------------------------------------------------------------------
    @torch.no_grad()
    def unembed(self, h: torch.Tensor, layer: int | None = None) -> torch.Tensor:
        """(n, B) -> (n, vocab) float32 on the CPU: head(W_U · norm(h)), or head(W_U · h) at the `norm` layer."""
        h = h.to(self.device, torch.float32)
        if layer != self.num_layers:
            h = self.norm(h)
        return self.logit_head(h @ self.W_U.float().T).cpu()

    def at(self, layer: int) -> "LayerLens":
        """The lens of one layer, as an object the grounding functions take (`.unembed`, `.tokenizer`)."""
        return LayerLens(self, layer)

    def resolve_layer(self, layer: Any) -> int:
        return resolve_layer(layer, self.num_layers, self.model_id)

    # --- files ------------------------------------------------------------------------------------
    @classmethod
    def from_lmm(cls, lmm) -> "Readout":
        W = lmm.W_U.detach().to("cpu").clone()
        return cls(W, probe_norm(lmm.norm_module(), lmm.hidden_size), lmm.tokenizer, lmm.num_layers, lmm.model_id,
                   logit_head=lmm.logit_head)

    def save(self, folder: str | Path, fingerprint: dict[str, Any] | None = None) -> None:
        """Write the readout to `folder` atomically (a temporary folder renamed at the end)."""
        tensors = {"W_U": self.W_U.cpu().contiguous(), "norm_scale": self.norm.scale.contiguous()}
        if self.norm.bias is not None:
            tensors["norm_bias"] = self.norm.bias.contiguous()
        meta = {"kind": self.norm.kind, "eps": self.norm.eps, "num_layers": self.num_layers,
                "model_id": self.model_id, "vocab": int(self.W_U.shape[0]), "hidden_size": self.hidden_size,
                "logit_head": self.logit_head.to_dict(),
                "model": fingerprint or {}}

        def fill(tmp: Path) -> None:
            save_file(tensors, str(tmp / READOUT_FILE))
            self.tokenizer.save_pretrained(str(tmp / TOKENIZER_DIR))
            (tmp / PIECES_FILE).write_text(json.dumps(self.pieces(range(self.W_U.shape[0]))))
            (tmp / META_FILE).write_text(json.dumps(meta, indent=1, default=str))

        atomic_write_dir(folder, fill)  # a folder another job wrote first (same content) is kept

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu") -> "Readout":
        """A saved readout; its tokenizer loads on first use (`tokenizer`)."""
        folder = Path(folder)
        meta = json.loads((folder / META_FILE).read_text())
        t = load_file(str(folder / READOUT_FILE))
        norm = FinalNorm(meta["kind"], t["norm_scale"], t.get("norm_bias"), float(meta["eps"]))
        return cls(t["W_U"], norm, None, meta["num_layers"], meta["model_id"], device,
                   LogitHead(**meta.get("logit_head", {})), folder=folder)

    @staticmethod
    def exists(folder: str | Path) -> bool:
        return (Path(folder) / META_FILE).is_file()


class LayerLens:
    """`Readout` bound to one layer: `unembed(h)` applies the norm unless the layer is the norm's output."""

    def __init__(self, readout: Readout, layer: int):
        self.readout, self.layer = readout, layer
        self.hidden_size = readout.hidden_size

    @property
    def tokenizer(self) -> Any:
        return self.readout.tokenizer

    def pieces(self, ids: Any) -> list[str]:
        return self.readout.pieces(ids)

    def unembed(self, h: torch.Tensor) -> torch.Tensor:
        return self.readout.unembed(h, self.layer)
