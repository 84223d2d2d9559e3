"""The architecture matrix: every decoder-only image-text-to-text architecture that builds here
(`tests/fixtures/tiny_archs.ARCHS`), as a tiny random checkpoint saved and loaded by path.

On every architecture (default suite): the doctor passes (generation, hooks, teacher-forced states,
logit lens, log-probabilities, target token, image effect), and coxlmm's log p(t) equals the model's own,
read from the logits `generate` returned. The whole run (extraction, `layers=[-1,norm]`, the noise source
of `metrics=paper`, the causal stage with steering on small settings) runs on a representative subset
in the default suite (`Arch.fast`: LLaVA, Qwen2-VL, Mllama,
BLIP-2) and on every architecture with `make test-all` (about 4 s each on one thread).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from coxlmm.doctor import PASS, diagnose, report
from coxlmm.models.hf import HFVisionLM
from tests.extraction.conftest import make_folder_dataset
from tests.fixtures.tiny_archs import ARCHS
from tests.fixtures.tiny_models import load_card

CONF = Path(__file__).resolve().parents[2] / "conf"
ALL = sorted(ARCHS)
RUN = [pytest.param(a, marks=() if ARCHS[a].fast else pytest.mark.slow) for a in ALL]


def load(path: str) -> HFVisionLM:
    return HFVisionLM(name_or_path=path, raw_prompt=load_card(path).raw_prompt)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_folder_dataset(tmp_path_factory.mktemp("matrix") / "data", n_train=6, n_test=3, words=("dog",))


@pytest.fixture(scope="module")
def samples(data):
    from coxlmm.data.folder import ImageFolderCaptions

    ds = ImageFolderCaptions(root=str(data))
    return [ds[i] for i in range(4)]


@pytest.fixture(scope="module", params=ALL)
def arch(request, tiny_checkpoint):
    path = tiny_checkpoint(request.param)
    return request.param, path, load(path)


def test_the_doctor_passes(arch, samples):
    name, path, lmm = arch
    checks = diagnose(lmm, samples, "dog", max_new_tokens=16)
    assert {c.name: c.status for c in checks} == {n: PASS for n in ("generate", "modules", "capture", "lens", "logp",
                                                                     "target", "image")}, report(checks)


def test_log_p_t_equals_the_models_own_logits(arch, samples, tmp_path):
    """coxlmm's log p(t) three ways (the causal stage's edited forward with the clean state, the LMM's head on
    the norm layer, the readout saved to and read from the cache at the last block) against the logits
    `generate` itself returned."""
    from coxlmm.extraction.capture import generate_with_states
    from coxlmm.grounding.text import word_pieces
    from coxlmm.models.readout import Readout

    name, path, lmm = arch
    card = load_card(path)
    images = [s.image for s in samples[:2]]
    inputs = lmm.prepare(images)
    with torch.no_grad():
        own = lmm.model.generate(**lmm._to_model(inputs), do_sample=False, max_new_tokens=len(card.caption_ids),
                                 output_logits=True, return_dict_in_generate=True)
    j = card.caption_ids.index(lmm.tokenizer.encode(" dog", add_special_tokens=False)[-1])  # the position of t
    t = card.caption_ids[j]
    want = torch.log_softmax(own.logits[j].float(), -1)[:, t]  # (2,) the model's log p(t)

    L = lmm.num_layers
    _, states = generate_with_states(lmm, lmm._to_model(inputs), [L - 1, L], len(card.caption_ids))
    causal = lmm.target_logprobs(images, [card.caption_ids[:j]] * 2, L, states[L][:, j])[:, t]
    head = torch.log_softmax(lmm.head(states[L][:, j]), -1)[:, t]
    Readout.from_lmm(lmm).save(tmp_path / "readout")
    readout = Readout.load(tmp_path / "readout")
    lens = torch.log_softmax(readout.unembed(states[L - 1][:, j], L - 1), -1)[:, t]
    for got in (causal, head, lens):
        torch.testing.assert_close(got.cpu(), want.cpu(), atol=1e-4, rtol=0)
    # the saved table of every id's surface piece is what the tokenizer gives (grounding reads it instead)
    ids = [*card.caption_ids, *lmm.tokenizer.all_special_ids, *range(0, readout.W_U.shape[0], 97),
           readout.W_U.shape[0] - 1]  # every row of W_U can be a top token; no id past them can
    assert readout.pieces(ids) == word_pieces(lmm.tokenizer, ids) and readout.pieces([-1]) == [""]
    assert readout._tokenizer is None  # nor was the tokenizer loaded for it
    if name == "aya_vision":  # the case the issue found: Cohere's logit_scale must be applied
        assert lmm.logit_head.scale == pytest.approx(0.5)


def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from coxlmm.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=overrides)


@pytest.mark.parametrize("name", RUN)
def test_the_whole_run_norm_layer_noise_source_and_causal_stage(name, tiny_checkpoint, data, tmp_path):
    from coxlmm.pipeline import run

    path = tiny_checkpoint(name)
    card = load_card(path)
    overrides = [
        "model=hf", f"model.name_or_path={path}", "data=folder", f"data.root={data}", "token=dog", "layers=[-1,norm]",
        "metrics=causal", "method.n_concepts=2", "extraction.max_new_tokens=16", "extraction.batch_size=4",
        "metrics.causal.n_samples=2", "metrics.causal.steps=[0.5]", "metrics.causal.max_new_tokens=4", "noise.seeds=[0]",
        "metrics.causal.steer=all", f"paths.cache_dir={tmp_path / 'cache'}", f"paths.output_dir={tmp_path / 'run'}",
        f"paths.root_dir={tmp_path}", "logger=none", "figures=false", "report=false", "print_summary=false"]
    if card.raw_prompt is not None:  # typed as a user would: a newline as \n
        overrides.append("model.raw_prompt='" + card.raw_prompt.replace("\n", "\\n") + "'")
    metrics = run(_compose(overrides))
    last = card.num_layers - 1
    assert (metrics["n_train"], metrics["n_test"]) == (6, 3)
    for layer in (str(last), "norm"):
        assert f"layer_{layer}/overlap" in metrics and f"layer_{layer}/kl_recon" in metrics
    sources = sorted(json.loads(m.read_text()).get("source", "extraction")
                     for m in (tmp_path / "cache" / "features").glob("*/manifest.json"))
    assert sources == ["caption_ce"] * 2 + ["extraction"] * 2 + ["interventions"] * 2 + ["noise_prefix"] * 2 + \
        ["steering"] * 2
