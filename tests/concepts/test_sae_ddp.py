"""SAE training with Lightning DDP: two CPU processes (gloo), data-parallel from the same rows."""

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import json, sys, torch
    from coxlmm.concepts import build_dictionary
    from coxlmm.metrics.planted import planted_features

    if __name__ == "__main__":
        torch.set_num_threads(1)
        # ddp_spawn pickles the rows to the ranks; file-system sharing avoids file-descriptor limits
        torch.multiprocessing.set_sharing_strategy("file_system")
        Z, _, _ = planted_features(M=600, B=32, T=8, p_fire=0.15, offset=3.0, seed=0)
        d = build_dictionary("topk_sae", n_concepts=8, k=2, max_epochs=5, batch_size=64, devices=2,
                             strategy="ddp_spawn").fit(Z)
        fvu = float((Z - d.decode(d.V_train)).pow(2).sum() / (Z - Z.mean(0)).pow(2).sum())
        print(json.dumps({"fvu": fvu, "norms": d.U.norm(dim=1).tolist()}))
""")


@pytest.mark.slow  # two spawned processes import torch and Lightning: ~1 min on 2 busy cores
def test_two_cpu_processes_train_one_sae(tmp_path):
    import json

    script = tmp_path / "ddp_sae.py"
    script.write_text(SCRIPT)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["fvu"] < 0.2
    assert all(abs(n - 1) < 1e-4 for n in res["norms"])
