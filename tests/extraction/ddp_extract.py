"""Helper script for test_ddp.py: extract with Lightning DDP on `devices` CPU processes (gloo).

Usage: python ddp_extract.py <model dir> <data dir> <store root> <token> <devices>
Lightning's DDP launcher re-runs this script once per extra rank.
"""

import sys

from coxlmm.data.folder import ImageFolderCaptions
from coxlmm.extraction import ExtractionSettings, extract
from coxlmm.models.hf import HFVisionLM


def main(model_dir: str, data_dir: str, root: str, token: str, devices: str) -> None:
    n = int(devices)
    trainer = {"accelerator": "cpu", "devices": n, "enable_progress_bar": False}
    if n > 1:
        trainer["strategy"] = "ddp"
    lmm = HFVisionLM(name_or_path=model_dir)
    ds = ImageFolderCaptions(data_dir, split="train")
    store = extract(lmm, ds, token, [-1], ExtractionSettings(batch_size=2, max_new_tokens=20), root, trainer)
    if store is not None:
        print("STORE", store.dir)


if __name__ == "__main__":
    main(*sys.argv[1:])
