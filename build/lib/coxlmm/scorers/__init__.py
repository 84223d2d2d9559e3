"""CLIPScore and BERTScore backends (`scorer=embedded | clip | none`).

    base.py       the `Scorer` interface, `clip_score` (2.5 · max(cos, 0)), `words_text`, `Scorers`
    embedded.py   EfficientNet-Lite0 + all-MiniLM-L6-v2 with heads trained on the world (this machine)
    clip_hf.py    any Hugging Face CLIPModel (paper: openai/clip-vit-base-patch32)
    bertscore.py  BERTScore F1 with a pinned encoder and layer (embedded: MiniLM layer 6; paper: roberta-large 17)

Backends are imported lazily by Hydra (`_target_`), so importing this package loads no model.
"""

from coxlmm.scorers.base import Scorer, Scorers, clip_score, words_text

__all__ = ["Scorer", "Scorers", "clip_score", "words_text"]
