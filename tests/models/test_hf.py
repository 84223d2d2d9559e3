"""HFVisionLM on tiny random LLaVA, Qwen2-VL and Idefics3 checkpoints, loaded by path.

The reference for every state is taken here, independently of the production extraction: forward
hooks on `decoder_layers()[l]` keep the last position of each forward call during `generate` (the
prefill call predicts the first generated token, decode call j the token j), as in `models/base.py`.
"""

from __future__ import annotations

import inspect
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from torch import nn

from coxlmm.errors import CoxlmmError
from coxlmm.models.base import GenerationOutput
from coxlmm.models.hf import HFVisionLM, _cut_at_eos, find_language_model
from tests.fixtures.tiny_models import load_card

CONF = Path(__file__).resolve().parents[2] / "conf"
MAX_NEW_TOKENS = 24


def _images() -> list[Image.Image]:
    """Noise images of three sizes and aspect ratios: Qwen2-VL grids and Idefics3 tiles differ per
    image, so prompts differ in length and the batch is really left-padded."""
    rng = np.random.default_rng(0)
    sizes = [(40, 30), (64, 64), (120, 50)]  # (width, height)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


def generate_with_hooks(lmm: HFVisionLM, inputs: dict, max_new_tokens: int) -> tuple[GenerationOutput, dict]:
    """Greedy generation with forward hooks on every decoder block -> (output, {l: (B, T, H)})."""
    kept: dict[int, list[torch.Tensor]] = {l: [] for l in range(lmm.num_layers)}

    def keep_last(l: int):
        def hook(module, args, output):
            h = output[0] if isinstance(output, tuple) else output
            kept[l].append(h[:, -1].detach().clone())

        return hook

    hooks = [block.register_forward_hook(keep_last(l)) for l, block in enumerate(lmm.decoder_layers())]
    try:
        out = lmm.generate(inputs, max_new_tokens)
    finally:
        for h in hooks:
            h.remove()
    T = out.sequences.shape[1]
    return out, {l: torch.stack(v, dim=1)[:, :T] for l, v in kept.items()}


@pytest.fixture(scope="module")
def lmm(tiny_vlm_path) -> HFVisionLM:
    return HFVisionLM(name_or_path=tiny_vlm_path)


@pytest.fixture(scope="module")
def run(lmm):
    """One batch of three images: inputs, generation output, hooked states, teacher-forced states."""
    inputs = lmm.prepare(_images())
    out, hooked = generate_with_hooks(lmm, inputs, MAX_NEW_TOKENS)
    forced = lmm.teacher_forced_states(inputs, out.sequences, list(range(lmm.num_layers)))
    return inputs, out, hooked, forced


def test_loads_by_path_frozen_in_eval_mode(lmm, tiny_vlm_path):
    card = load_card(tiny_vlm_path)
    assert type(lmm.model).__name__ == card.model_class
    assert lmm.num_layers == card.num_layers == len(lmm.decoder_layers())
    assert lmm.hidden_size == card.hidden_size == lmm.W_U.shape[1]
    assert lmm.model_id == str(Path(tiny_vlm_path).resolve())
    lmm.train()  # e.g. a trainer switching modes: the frozen model must stay in eval mode
    assert not lmm.model.training and not any(p.requires_grad for p in lmm.parameters())


def test_prompt_rendered_by_chat_template_and_left_padded(lmm, run, tiny_vlm_path):
    inputs, *_ = run
    fp = lmm.fingerprint()
    assert fp["prompt_text"] != lmm.prompt and lmm.prompt in fp["prompt_text"]
    assert (fp["model_id"], fp["model_class"], fp["dtype"], fp["transformers"]) == (
        str(Path(tiny_vlm_path).resolve()), load_card(tiny_vlm_path).model_class, "float32", transformers.__version__)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    assert (mask[:, -1] == 1).all() and (ids[:, -1] == ids[0, -1]).all()  # every row ends with the prompt's end
    n = mask.sum(1)
    for b in range(len(ids)):  # padding, if any, is on the left
        assert (mask[b, : ids.shape[1] - n[b]] == 0).all() and (mask[b, ids.shape[1] - n[b]:] == 1).all()
    if load_card(tiny_vlm_path).arch != "llava":  # LLaVA resizes every image to one size
        assert len(set(n.tolist())) > 1


def test_generate_returns_the_known_caption_through_eos(lmm, run, tiny_vlm_path):
    card = load_card(tiny_vlm_path)
    _, out, *_ = run
    n = len(card.caption_ids)
    assert out.lengths.tolist() == [n + 1] * 3
    assert out.sequences[:, :n].tolist() == [card.caption_ids] * 3
    assert all(int(t) in lmm.eos_ids for t in out.sequences[:, n])
    assert (out.sequences[:, n + 1:] == lmm.pad_id).all()
    assert lmm.tokenizer.batch_decode(out.sequences, skip_special_tokens=True) == [card.caption] * 3


def test_teacher_forced_states_equal_states_hooked_during_generation(lmm, run):
    _, out, hooked, forced = run
    for l in range(lmm.num_layers):
        assert forced[l].shape == (3, out.sequences.shape[1], lmm.hidden_size)
        for b, n in enumerate(out.lengths.tolist()):
            torch.testing.assert_close(forced[l][b, :n], hooked[l][b, :n], atol=1e-4, rtol=0)
    # The states differ between images and between layers, so a misaligned position or layer would show.
    last = forced[lmm.num_layers - 1]
    assert (last[0] - last[1]).abs().max() > 1e-3 and (forced[0] - last).abs().max() > 1e-3
    # Negative layers count from the end.
    inputs = run[0]
    again = lmm.teacher_forced_states(inputs, out.sequences, [-1])
    torch.testing.assert_close(again[-1], last)


def test_logit_lens_at_each_step_predicts_the_generated_token(lmm, run):
    inputs, out, hooked, forced = run
    last = forced[lmm.num_layers - 1]
    for b, n in enumerate(out.lengths.tolist()):
        assert lmm.unembed(last[b, :n]).argmax(-1).tolist() == out.sequences[b, :n].tolist()
    # At the last block the lens is the model's own head (final norm included): compare at the last
    # prompt position, the one that predicts the first generated token.
    with torch.no_grad():
        logits = lmm.model(**inputs).logits[:, -1]
    torch.testing.assert_close(lmm.unembed(last[:, 0]), logits.float(), atol=1e-4, rtol=1e-4)


def test_batch_equals_one_image_at_a_time(lmm, run):
    """Left padding (and Qwen2-VL's mrope positions under it) must not change any state: rerun alone
    the image with the shortest prompt, the most padded row of the batch."""
    inputs, out, hooked, _ = run
    b = int(inputs["attention_mask"].sum(1).argmin())
    single, states = generate_with_hooks(lmm, lmm.prepare([_images()[b]]), MAX_NEW_TOKENS)
    n = int(out.lengths[b])
    assert single.sequences[0, :n].tolist() == out.sequences[b, :n].tolist()
    for l in range(lmm.num_layers):
        torch.testing.assert_close(states[l][0, :n], hooked[l][b, :n], atol=1e-4, rtol=0)


def test_bfloat16(tiny_llava_path):
    lmm = HFVisionLM(name_or_path=tiny_llava_path, dtype="bfloat16")
    assert lmm.fingerprint()["dtype"] == "bfloat16" and lmm.W_U.dtype == torch.bfloat16
    inputs = lmm.prepare(_images()[:1])
    out = lmm.generate(inputs, MAX_NEW_TOKENS)
    card = load_card(tiny_llava_path)
    assert out.sequences[0, : len(card.caption_ids)].tolist() == card.caption_ids
    h = lmm.teacher_forced_states(inputs, out.sequences, [-1])[-1][0]
    assert h.dtype == torch.bfloat16 and lmm.unembed(h).dtype == torch.float32


# --- bad input ------------------------------------------------------------------------------------
def test_unknown_path_or_hub_id_is_one_clear_paragraph(tmp_path):
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(CoxlmmError, match="no such directory") as e:
        HFVisionLM(name_or_path=missing)
    assert missing in str(e.value) and "save_pretrained" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(CoxlmmError, match="not in the local cache .*HF_HUB_OFFLINE"):  # offline: conftest
        HFVisionLM(name_or_path="nobody-here/no-such-vlm")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CoxlmmError, match="holds no loadable Hugging Face model"):
        HFVisionLM(name_or_path=str(tmp_path / "empty"))


def test_checkpoint_without_processor_files(tiny_llava_path, tmp_path):
    shutil.copy(Path(tiny_llava_path) / "config.json", tmp_path / "config.json")
    with pytest.raises(CoxlmmError, match="processor"):
        HFVisionLM(name_or_path=str(tmp_path))


def test_bad_dtype_model_class_and_layer(tiny_llava_path, run):
    with pytest.raises(CoxlmmError, match="float64"):
        HFVisionLM(name_or_path=tiny_llava_path, dtype="float64")
    with pytest.raises(CoxlmmError, match="NoSuchModel"):
        HFVisionLM(name_or_path=tiny_llava_path, model_class="transformers.NoSuchModel")
    with pytest.raises(CoxlmmError, match="decoder blocks"):
        find_language_model(nn.Linear(2, 2))


def test_model_class_by_name(tiny_llava_path):
    lmm = HFVisionLM(name_or_path=tiny_llava_path, model_class="transformers.LlavaForConditionalGeneration")
    assert type(lmm.model) is transformers.LlavaForConditionalGeneration


def test_cut_at_eos_handles_several_eos_ids_and_unfinished_rows():
    new = torch.tensor([[5, 2, 7, 7], [5, 6, 0, 9], [5, 6, 7, 8]])
    seqs, lengths = _cut_at_eos(new, eos_ids=[2, 0], pad_id=9)
    assert lengths.tolist() == [2, 3, 4]
    assert seqs.tolist() == [[5, 2, 9, 9], [5, 6, 0, 9], [5, 6, 7, 8]]


# --- configs --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["hf", "llava15_7b", "qwen2vl_2b", "smolvlm_256m", "paligemma_3b"])
def test_model_configs_match_the_adapter(name, tiny_llava_path):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(str(CONF), version_base=None):
        cfg = compose(overrides=[f"+model={name}"]).model
    assert cfg._target_ == "coxlmm.models.hf.HFVisionLM"
    keys = {k: None for k in cfg if k != "_target_"}
    inspect.signature(HFVisionLM).bind(**keys)  # every key is a constructor argument
    if name == "hf":
        lmm = instantiate(cfg, name_or_path=tiny_llava_path)
        assert isinstance(lmm, HFVisionLM) and lmm.prompt == cfg.prompt
    else:
        assert "/" in cfg.name_or_path and cfg.dtype in ("bfloat16", "float32")


# --- raw prompts (models without a chat template) ------------------------------------------------
def test_raw_prompt_replaces_the_chat_template(tiny_llava_path):
    chat = HFVisionLM(name_or_path=tiny_llava_path)
    raw_text = "USER: <image>\nWhat is it? ASSISTANT:"
    raw = HFVisionLM(name_or_path=tiny_llava_path, raw_prompt=raw_text)
    assert raw.prompt_text == raw_text != chat.prompt_text
    assert raw.fingerprint()["prompt_text"] == raw_text  # another prompt, another feature cache
    inputs = raw.prepare(_images()[:2])
    out = raw.generate(inputs, 3)
    assert out.sequences.shape[0] == 2 and (out.lengths >= 1).all()


def test_processor_without_chat_template_asks_for_a_raw_prompt(tiny_llava_path, tmp_path):
    plain = tmp_path / "no_template"
    shutil.copytree(tiny_llava_path, plain)
    for f in plain.iterdir():  # the template lives in chat_template.json/.jinja or a processor/tokenizer config
        if "chat_template" in f.name:
            f.unlink()
        elif f.suffix == ".json" and "chat_template" in f.read_text():
            cfg = json.loads(f.read_text())
            cfg.pop("chat_template", None)
            f.write_text(json.dumps(cfg))
    with pytest.raises(CoxlmmError, match="model.raw_prompt"):
        HFVisionLM(name_or_path=str(plain))
    lmm = HFVisionLM(name_or_path=str(plain), raw_prompt="USER: <image>\nCaption. ASSISTANT:")
    assert lmm.generate(lmm.prepare(_images()[:1]), 2).sequences.shape[0] == 1


# --- bad input (issue 20) ----------------------------------------------------------------------------
TEXT_ONLY_TEMPLATE = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"


def test_a_text_only_chat_template_asks_for_a_raw_prompt_and_writes_nothing(tiny_llava_path, tmp_path):
    """A template that concatenates the message content as a string fails inside jinja with a TypeError on an
    image turn: the user gets the model.raw_prompt hint, and no run writes anything to the feature store."""
    from omegaconf import OmegaConf

    from coxlmm.pipeline import run
    from tests.extraction.conftest import make_folder_dataset

    text_only = tmp_path / "text_only"
    shutil.copytree(tiny_llava_path, text_only)
    (text_only / "chat_template.jinja").write_text(TEXT_ONLY_TEMPLATE)
    with pytest.raises(CoxlmmError, match=r"TypeError.*model\.raw_prompt"):
        HFVisionLM(name_or_path=str(text_only))

    from hydra import compose, initialize_config_dir

    from coxlmm.config import register_configs

    register_configs()
    data = make_folder_dataset(tmp_path / "data", n_train=4, n_test=2)
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[
            "model=hf", f"model.name_or_path={text_only}", "data=folder", f"data.root={data}", "token=dog",
            f"paths.cache_dir={tmp_path / 'cache'}", f"paths.output_dir={tmp_path / 'run'}", f"paths.root_dir={tmp_path}",
            "logger=none", "figures=false", "report=false", "print_summary=false"])
    OmegaConf.set_struct(cfg, False)
    with pytest.raises(CoxlmmError, match="model.raw_prompt"):
        run(cfg)
    store = tmp_path / "cache" / "features"
    assert not list(store.glob("*/manifest.json")) and not list(store.glob("*/shard-*"))


def test_a_newline_typed_in_a_raw_prompt_is_a_newline(tiny_llava_path):
    typed = r"USER: <image>\nWhat is it? ASSISTANT:"  # as the shell and Hydra pass model.raw_prompt='...\n...'
    lmm = HFVisionLM(name_or_path=tiny_llava_path, raw_prompt=typed)
    assert lmm.prompt_text == "USER: <image>\nWhat is it? ASSISTANT:"
    assert HFVisionLM.describe(name_or_path=tiny_llava_path, raw_prompt=typed)["key"]["raw_prompt"] == lmm.prompt_text
    assert HFVisionLM(name_or_path=tiny_llava_path, raw_prompt=r"a \\n b").prompt_text == r"a \n b"  # \\ escapes
    out = lmm.generate(lmm.prepare(_images()[:1]), MAX_NEW_TOKENS)
    assert out.sequences[0, : len(load_card(tiny_llava_path).caption_ids)].tolist() == load_card(tiny_llava_path).caption_ids


def test_an_encoder_decoder_is_refused_saying_why(tmp_path):
    from transformers import Florence2Config

    Florence2Config().save_pretrained(tmp_path)
    for load in (HFVisionLM.describe, HFVisionLM):
        with pytest.raises(CoxlmmError, match="is an encoder-decoder: .*decoder-only"):
            load(name_or_path=str(tmp_path))


def test_no_decoder_blocks_names_the_classes_looked_at_and_how_to_add_a_rule():
    with pytest.raises(CoxlmmError, match=r"on the modules Linear.*_LM_PATHS"):
        find_language_model(nn.Linear(2, 2))


def test_the_declared_head_is_kept_only_when_the_forward_applies_it():
    """`fit_logit_head`: Gemma 3's config names a cap its conditional-generation forward does not apply (the
    identity wins); a forward that scales (Aya Vision) or caps gets the declared head back."""
    from coxlmm.models.base import LogitHead, fit_logit_head

    z = torch.linspace(-40, 40, 101)[None]
    cap, scale = LogitHead(softcap=30.0), LogitHead(scale=0.5)
    assert fit_logit_head(z, z, cap, 1e-4) == LogitHead()
    assert fit_logit_head(z, cap(z), cap, 1e-4) == cap
    assert fit_logit_head(z, 0.5 * z, LogitHead(), 1e-4) == scale  # a scale the config did not name, measured
    assert fit_logit_head(z, z.abs(), cap, 1e-4) is None
