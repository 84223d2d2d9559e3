"""Concept dictionaries: Z (M, B) ≈ V (M, K) U (K, B), one method per module, registered by name.

    from coxlmm.concepts import build_dictionary, available_methods
    d = build_dictionary("semi_nmf", n_concepts=20, seed=0).fit(Z)
    V = d.encode(Z_test)
"""

from coxlmm.concepts import kmeans, nmf, pca, random_dict, semi_nmf, simple  # noqa: F401  (register)
from coxlmm.concepts.base import Dictionary
from coxlmm.concepts.registry import available_methods, build_dictionary

__all__ = ["Dictionary", "available_methods", "build_dictionary"]
