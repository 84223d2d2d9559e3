"""coxlmm: multimodal concept explanations of large multimodal models (CoX-LMM, NeurIPS 2024).

Notation (row-major, one row per sample), used across the package:
    Z   (M, B)      hidden states of the target token at layer L, one row per selected sample
    U   (K, B)      concept dictionary, one concept u_k per row, ||u_k||_2 <= 1
    V   (M, K)      concept activations (V >= 0 for Semi-NMF / NMF)
    W_U (vocab, B)  unembedding (lm_head), applied after the LM's final norm (logit lens)
"""

__version__ = "0.1.0"
