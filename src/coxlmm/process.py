"""What a job sets up and asks of its process before any model stage, without importing Lightning.

Importing `lightning` imports torchmetrics, transformers and torch._dynamo: seconds that a job whose
features and fits are cached does not otherwise spend. The model stages import it when they run.

    global_rank()        this process's rank in a multi-device launch: Lightning's own value once a
                         Lightning strategy has set it, else the launcher's environment (the variables
                         Lightning reads: RANK, LOCAL_RANK, SLURM_PROCID, JSM_NAMESPACE_RANK), else 0
    seed_everything(s)   what `lightning.seed_everything(s, workers=True)` does: Python's, numpy's and
                         torch's generators, and PL_GLOBAL_SEED / PL_SEED_WORKERS for Lightning's launchers
                         and data-loader workers
"""

from __future__ import annotations

import os
import random

RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")  # Lightning's order


def global_rank() -> int:
    from lightning_utilities.core.rank_zero import rank_zero_only  # Lightning keeps the rank here (cheap)

    rank = getattr(rank_zero_only, "rank", None)
    if rank is not None:
        return int(rank)
    return next((int(os.environ[k]) for k in RANK_VARIABLES if os.environ.get(k) is not None), 0)


def seed_everything(seed: int) -> int:
    import numpy as np
    import torch

    seed = int(seed)
    os.environ["PL_GLOBAL_SEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    os.environ["PL_SEED_WORKERS"] = "1"
    return seed
