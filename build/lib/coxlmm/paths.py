"""Where coxlmm's own files live, and where a run writes by default.

The configs are the package `coxlmm.conf` (the repository's conf/, linked into the package), composed
as pkg://coxlmm.conf, so `coxlmm` runs from any directory once installed. Everything a run writes goes
under the current directory (`outputs/`), never into the package.
"""

from pathlib import Path

import coxlmm.conf

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parents[1]  # the checkout, for an editable install (tests, benches)
CONF_DIR = Path(coxlmm.conf.__file__).resolve().parent
CONF_PACKAGE = "pkg://coxlmm.conf"
WEIGHTS_DIR = PACKAGE_DIR / "weights"


def outputs_dir() -> Path:
    """`outputs/` under the current directory: runs, sweeps and re-computable caches."""
    return Path.cwd() / "outputs"


def cache_dir() -> Path:
    """Re-computable caches (e.g. DePALM-mini's visual tokens for training), never committed."""
    return outputs_dir() / "cache"


# Kept for the training recipes and benches until they compose the main config groups.
OUTPUTS_DIR = REPO_ROOT / "outputs"
CACHE_DIR = OUTPUTS_DIR / "cache"
