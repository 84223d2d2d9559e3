"""Where the project's own files live (the package is installed editable from the repo)."""

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parents[1]
CONF_DIR = REPO_ROOT / "conf"
OUTPUTS_DIR = REPO_ROOT / "outputs"
WEIGHTS_DIR = PACKAGE_DIR / "weights"
CACHE_DIR = OUTPUTS_DIR / "cache"  # re-computable caches (e.g. DePALM-mini's visual tokens), never committed
