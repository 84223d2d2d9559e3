"""Grounding of concepts: words T_k (text.py, logit lens), samples X_k,MAS (visual.py), local
interpretation of test samples (local.py), and the `ConceptSet` that holds them (concept_set.py)."""

from coxlmm.grounding.concept_set import ConceptSet
from coxlmm.grounding.local import Ranking, interpret, rank_concepts
from coxlmm.grounding.text import concept_words, filter_words, random_words, word_pieces
from coxlmm.grounding.visual import build_concept_set, top_samples

__all__ = [
    "ConceptSet", "Ranking", "build_concept_set", "concept_words", "filter_words", "interpret",
    "random_words", "rank_concepts", "top_samples", "word_pieces",
]
