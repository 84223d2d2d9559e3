"""conf/scorer/*.yaml build `Scorers` bundles; the paper config fails clearly when its models are not local."""

from __future__ import annotations

import os

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from coxlmm.errors import CoxlmmError
from coxlmm.paths import CONF_DIR
from coxlmm.scorers.embedded import DEFAULT_WEIGHTS


def load(name: str):
    """A scorer config as composed in a run (its `device` follows the top-level device)."""
    node = OmegaConf.load(os.path.join(str(CONF_DIR), "scorer", f"{name}.yaml"))
    return OmegaConf.merge({"device": "cpu"}, {"scorer": node}).scorer


@pytest.mark.skipif(not os.path.isfile(DEFAULT_WEIGHTS), reason="run `make train-scorer` first")
def test_embedded_config_builds_both_scorers():
    from coxlmm.scorers import Scorers

    scorers = instantiate(load("embedded"))
    assert isinstance(scorers, Scorers)
    fp = scorers.fingerprint()
    assert fp["clip"]["scorer"] == "embedded" and fp["bert"]["layer"] == 6 and fp["bert"]["model"] == "embedded"
    assert fp["bert"]["scale"] == "raw F1"


def test_paper_config_names_the_paper_models_and_fails_clearly_offline():
    cfg = load("clip")
    assert cfg.clip.model == "openai/clip-vit-base-patch32"
    assert (cfg.bert.model, cfg.bert.layer, cfg.bert.rescale_with_baseline) == ("roberta-large", 17, True)
    try:
        instantiate(cfg.clip)
    except Exception as e:  # Hydra wraps the target's error; ours is in the chain
        while e is not None and not isinstance(e, CoxlmmError):
            e = e.__cause__
        assert e is not None and "not available locally" in str(e)
    else:
        pytest.skip("openai/clip-vit-base-patch32 is in the local cache here")
