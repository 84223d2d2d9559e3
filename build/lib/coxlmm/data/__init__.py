from coxlmm.data.base import CaptionDataset, Sample, SampleRecord

__all__ = ["CaptionDataset", "Sample", "SampleRecord"]
