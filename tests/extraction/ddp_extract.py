"""Helper script for test_ddp.py: extract with Lightning DDP on `devices` CPU processes (gloo).

Usage: python ddp_extract.py <model dir> <data dir> <store root> <token> <devices> <result dir>
Lightning's DDP launcher re-runs this script once per extra rank. Each rank writes its own result file,
`<result dir>/rank-<r>.json` (the entry it saw), never a shared stdout: the ranks' lines would interleave.
"""

import json
import os
import sys
from pathlib import Path

from coxlmm.data.folder import ImageFolderCaptions
from coxlmm.extraction import ExtractionSettings, extract
from coxlmm.models.hf import HFVisionLM


def main(model_dir: str, data_dir: str, root: str, token: str, devices: str, result_dir: str) -> None:
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    n = int(devices)
    trainer = {"accelerator": "cpu", "devices": n, "enable_progress_bar": False}
    if n > 1:
        trainer["strategy"] = "ddp"
    lmm = HFVisionLM(name_or_path=model_dir)
    ds = ImageFolderCaptions(data_dir, split="train")
    store = extract(lmm, ds, token, [-1], ExtractionSettings(batch_size=2, max_new_tokens=20), root, trainer)
    out = Path(result_dir) / f"rank-{rank_zero_only.rank}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"store": str(store.dir), "complete": store.complete}))
    os.replace(tmp, out)


if __name__ == "__main__":
    main(*sys.argv[1:])
