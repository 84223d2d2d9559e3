from coxlmm.models.base import LMM, GenerationOutput

__all__ = ["LMM", "GenerationOutput"]
