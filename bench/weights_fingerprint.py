"""What the weights fingerprint of the feature-store key costs on a 7B checkpoint (models/fingerprint.py).

Writes a checkpoint shaped like LLaVA-1.5-7B's language model in bf16 (291 tensors, 13.5 GB in 3
safetensors shards; sparse files, so no disk is used), then measures `weights_fingerprint` (bytes read,
time) against the reference a content key would otherwise need: sha256 of every byte, in the same run.
Sparse files read as zeros from no disk, so both times are lower bounds; the bytes read are what a
network file system would serve.

    python bench/weights_fingerprint.py [--reference-gb 13.5]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import struct
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

H, FF, VOCAB, LAYERS = 4096, 11008, 32064, 32


def llama_7b_tensors() -> list[tuple[str, list[int]]]:
    out = [("model.embed_tokens.weight", [VOCAB, H])]
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        out += [(p + n, [H, H]) for n in ("self_attn.q_proj.weight", "self_attn.k_proj.weight",
                                          "self_attn.v_proj.weight", "self_attn.o_proj.weight")]
        out += [(p + "mlp.gate_proj.weight", [FF, H]), (p + "mlp.up_proj.weight", [FF, H]),
                (p + "mlp.down_proj.weight", [H, FF]), (p + "input_layernorm.weight", [H]),
                (p + "post_attention_layernorm.weight", [H])]
    return out + [("model.norm.weight", [H]), ("lm_head.weight", [VOCAB, H])]


def write_shards(folder: Path, n_shards: int = 3) -> list[Path]:
    tensors = llama_7b_tensors()
    per = -(-len(tensors) // n_shards)
    paths = []
    for s in range(n_shards):
        header, offset = {}, 0
        for name, shape in tensors[s * per:(s + 1) * per]:
            n = 2
            for d in shape:
                n *= d
            header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + n]}
            offset += n
        blob = json.dumps(header).encode()
        blob += b" " * (-len(blob) % 8)
        path = folder / f"model-{s + 1:05d}-of-{n_shards:05d}.safetensors"
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", len(blob)) + blob)
            f.truncate(8 + len(blob) + offset)
        paths.append(path)
    return paths


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reference-gb", type=float, default=None, help="hash only this much for the reference and "
                    "extrapolate (default: every byte)")
    args = ap.parse_args()
    from coxlmm.models.fingerprint import file_fingerprint, weights_fingerprint

    with tempfile.TemporaryDirectory(prefix="coxlmm-bench-") as tmp:
        folder = Path(tmp)
        paths = write_shards(folder)
        total = sum(p.stat().st_size for p in paths)
        t0 = time.perf_counter()
        weights_fingerprint(folder)
        t_fp = time.perf_counter() - t0
        read = sum(file_fingerprint(p)[1] for p in paths)

        budget = int(args.reference_gb * 2**30) if args.reference_gb else total
        h, done, t0 = hashlib.sha256(), 0, time.perf_counter()
        for p in paths:
            with open(p, "rb") as f:
                while done < budget and (chunk := f.read(min(64 << 20, budget - done))):
                    h.update(chunk)
                    done += len(chunk)
        t_ref = (time.perf_counter() - t0) * total / max(done, 1)

    print(f"checkpoint: {len(llama_7b_tensors())} tensors, {total / 2**30:.1f} GiB in {len(paths)} shards (sparse)")
    print(f"weights fingerprint: {read / 1024:.0f} KiB read ({read / total:.1e} of the bytes), {t_fp * 1e3:.1f} ms")
    print(f"reference, sha256 of every byte: {total / 2**30:.1f} GiB, {t_ref:.1f} s"
          + (f" (extrapolated from {done / 2**30:.1f} GiB)" if done < total else ""))
    print(f"ratio: the fingerprint takes {t_fp / t_ref:.1e} of the reference's time")


if __name__ == "__main__":
    main()
