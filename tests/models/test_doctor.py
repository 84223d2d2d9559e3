"""`coxlmm-doctor`: it fails, naming the check, on a model whose hooks are wrong; warns on a model whose
image does not change the states; says how a word of several pieces is matched; and as a command composes
the run's config, prints its table and exits non-zero on a failure. (It passes on every architecture of
the matrix: tests/models/test_matrix.py.)"""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import torch
from torch import nn

from coxlmm.doctor import FAIL, PASS, WARN, diagnose, main, report
from coxlmm.models.hf import HFVisionLM
from tests.extraction.conftest import make_folder_dataset
from tests.fixtures.tiny_models import load_card


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    card_words = ("dog", "armadillo")
    return make_folder_dataset(tmp_path_factory.mktemp("doctor") / "data", n_train=6, n_test=2, words=card_words)


@pytest.fixture(scope="module")
def samples(data):
    from coxlmm.data.folder import ImageFolderCaptions

    ds = ImageFolderCaptions(root=str(data))
    return [ds[i] for i in range(3)]


def statuses(checks) -> dict[str, str]:
    return {c.name: c.status for c in checks}


def test_blocks_in_the_wrong_order_fail_the_logp_check(tiny_llava_path, samples):
    """A resolver that hands back the right blocks in the wrong order: the hooks fire and the teacher-forced
    forward agrees with them, but layer -1 is block 0, so its lens is not the model's log p."""
    lmm = HFVisionLM(name_or_path=tiny_llava_path)
    assert statuses(diagnose(lmm, samples, "dog", 16))["logp"] == PASS
    lmm._lm = nn.Module()
    lmm._lm.layers = nn.ModuleList(list(lmm.model.model.language_model.layers)[::-1])
    checks = diagnose(lmm, samples, "dog", 16)
    assert statuses(checks)["logp"] == FAIL and statuses(checks)["capture"] == PASS
    text = report(checks)
    assert "FAILED (" in text and "logp" in text.splitlines()[-1] and "logit_head" in text  # names it, says what to change


def test_a_resolver_pointed_at_the_vision_tower_fails_the_modules_check(tiny_llava_path, samples):
    lmm = HFVisionLM(name_or_path=tiny_llava_path)
    lmm._lm = lmm.model.model.vision_tower.encoder  # CLIP's encoder: also a `layers` ModuleList
    checks = diagnose(lmm, samples, "dog", 16)
    assert statuses(checks)["modules"] == FAIL
    assert {statuses(checks)[n] for n in ("capture", "lens", "logp")} == {"skip"}
    assert "_LM_PATHS" in report(checks)


def test_zeroed_vision_weights_give_a_warning_not_a_failure(tiny_llava_path, samples, tmp_path):
    """The issue's checkpoint with zero-initialised vision weights: it loads and captions, and the doctor
    warns that the image does not change the states."""
    from transformers import AutoModelForImageTextToText

    dead = tmp_path / "dead_vision"
    shutil.copytree(tiny_llava_path, dead)
    model = AutoModelForImageTextToText.from_pretrained(dead)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "vision_tower" in name or "multi_modal_projector" in name:
                p.zero_()
    model.save_pretrained(dead)
    checks = diagnose(HFVisionLM(name_or_path=str(dead)), samples, "dog", 16)
    assert statuses(checks)["image"] == WARN and FAIL not in statuses(checks).values()
    assert "vision tower" in report(checks) and "with warnings" in report(checks)


def test_a_word_of_several_pieces_is_explained(tiny_qwen2vl_path, samples):
    card = load_card(tiny_qwen2vl_path)
    checks = diagnose(HFVisionLM(name_or_path=tiny_qwen2vl_path), samples, card.multi_piece_word, 16)
    target = next(c for c in checks if c.name == "target")
    assert target.status == PASS
    assert "Ġarm" in target.detail and "predicts its first piece" in target.detail


def test_a_token_the_model_never_says_fails_with_its_words(tiny_llava_path, samples):
    checks = diagnose(HFVisionLM(name_or_path=tiny_llava_path), samples, "giraffe", 16)
    target = next(c for c in checks if c.name == "target")
    assert target.status == FAIL and "dog (3)" in target.fix


def test_the_command_composes_the_run_config_and_sets_the_exit_code(tiny_llava_path, data, capsys):
    base = ["model=hf", f"model.name_or_path={tiny_llava_path}", "data=folder", f"data.root={data}",
            "extraction.max_new_tokens=16", "doctor.n_images=3"]
    assert main([*base, "token=dog"]) == 0
    out = capsys.readouterr().out
    for name in ("generate", "modules", "capture", "lens", "logp", "target", "image", "estimate"):
        assert f"\n{name}" in out
    assert "all checks passed" in out and "train: 6 images to caption" in out
    assert main([*base, "token=giraffe"]) == 1
    assert "FAILED (target)" in capsys.readouterr().out
    assert main([*base, "token=dog", "model.name_or_path=/no/such/model"]) == 2
    assert main([*base, "tokne=dog"]) == 2


def test_the_console_script_runs_as_a_module(tiny_llava_path, data, tmp_path):
    out = subprocess.run([sys.executable, "-m", "coxlmm.doctor", "model=hf", f"model.name_or_path={tiny_llava_path}",
                          "data=folder", f"data.root={data}", "token=dog", "extraction.max_new_tokens=16",
                          "doctor.n_images=2"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr[-2000:]
    assert "coxlmm-doctor: all checks passed" in out.stdout
    assert not list(tmp_path.iterdir())  # nothing written: no run directory, no cache
