"""The connector recipe: batches are built right, visual tokens are cached, and training lowers the loss.

The fast test runs the real recipe (`train(cfg)` on the composed `train_mini` config, Lightning
`Trainer.fit`) with the real tokenizer and encoder but a tiny random Llama in place of SmolLM2, so
it takes seconds; the slow one runs `python -m coxlmm.train.connector` end to end with SmolLM2.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import csv
import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_dir
from safetensors import safe_open

from coxlmm.data.shapes import GENERATOR_VERSION, HELDOUT_PAIRS, STYLES, ShapesWorld
from coxlmm.errors import CoxlmmError
from coxlmm.models.depalm_mini import (
    LM_GGUF,
    LM_MODULE,
    LM_PACKAGE,
    STYLE_PROMPTS,
    VISION_DIM,
    Connector,
    DePALMMini,
    load_connector,
    load_vision_encoder,
    package_dir,
)
from coxlmm.paths import CONF_DIR, REPO_ROOT
from coxlmm.train.connector import (
    IGNORE,
    CaptionPairs,
    ConnectorModule,
    StyleBatches,
    encode_world,
    make_collate,
    recipe_prompts,
    style_prompts,
    train,
)


@pytest.fixture(scope="module")
def tiny_model():
    """Real tokenizer (chat template) and encoder, tiny random Llama with SmolLM2's vocabulary."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(package_dir(LM_MODULE, LM_PACKAGE), gguf_file=LM_GGUF)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    lm = LlamaForCausalLM(cfg).eval().requires_grad_(False)
    return DePALMMini(load_vision_encoder(128), Connector(VISION_DIM, 64, 64, 16), lm, tok)


def compose_cfg(tmp_path, *overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train_mini", overrides=[
            "data.n_train=24", "data.n_val=4", "train.batch_size=8", "train.max_steps=12",
            "train.warmup_steps=1", "train.lr=3e-3", "train.val_every_n_steps=6", "train.val_batches=2",
            "trainer.precision=32-true", "progress_bar=false", "train.log_every_n_steps=1",
            f"logger.csv.save_dir={tmp_path}/run", f"cache_dir={tmp_path}/cache",
            f"output={tmp_path}/connector.safetensors", *overrides])


def test_collate_puts_loss_on_caption_tokens_only(tiny_model):
    m = tiny_model
    collate = make_collate([(m._prompt_ids[m.n_fixed:], m._image_mask[m.n_fixed:])], m.pad_id)
    batch = collate([(torch.zeros(16, VISION_DIM), [5, 6, 7], 0), (torch.ones(16, VISION_DIM), [8], 0)])
    P = len(m._prompt_ids) - m.n_fixed
    assert batch["input_ids"].shape == (2, P + 3) and batch["visual"].shape == (2, 16, VISION_DIM)
    assert batch["labels"][0, P:].tolist() == [5, 6, 7] and (batch["labels"][:, :P] == IGNORE).all()
    assert batch["labels"][1, P:].tolist() == [8, IGNORE, IGNORE]
    assert batch["attention_mask"][1].sum() == P + 1
    assert batch["image_mask"].sum(1).tolist() == [16, 16] and not batch["image_mask"][:, P:].any()


def test_each_style_gets_its_own_prompt_and_shares_the_fixed_ids(tiny_model):
    m = tiny_model
    prompts = style_prompts(m, STYLE_PROMPTS)
    (ids_a, mask_a), (ids_s, mask_s) = prompts
    assert torch.equal(ids_a, m._prompt_ids[m.n_fixed:])  # the model's default prompt is attribute_first
    assert len(ids_s) > len(ids_a) and mask_a.sum() == mask_s.sum() == 16
    assert "naming the shapes first" in m.tokenizer.decode(ids_s) and "naming" not in m.tokenizer.decode(ids_a)
    collate = make_collate(prompts, m.pad_id)
    batch = collate([(torch.zeros(16, VISION_DIM), [5], 1)])
    assert int(batch["style"]) == 1 and torch.equal(batch["input_ids"][0, : len(ids_s)], ids_s)
    with pytest.raises(ValueError, match="one caption style"):
        collate([(torch.zeros(16, VISION_DIM), [5], 0), (torch.zeros(16, VISION_DIM), [5], 1)])


def test_pairs_hold_every_style_and_batches_hold_one():
    world = ShapesWorld("train", n_train=10)
    tok = type("Tok", (), {"__call__": lambda self, text, add_special_tokens: type("E", (), {"input_ids": [len(text)]})()})()
    pairs = CaptionPairs(torch.zeros(10, 16, VISION_DIM), world, tok, eos_id=0, styles=list(STYLES))
    assert len(pairs) == 10 * 3 * 2 and sorted(set(pairs.styles)) == [0, 1]
    sampler = StyleBatches(pairs.styles, batch_size=8, shuffle=True, seed=0)
    first, second = list(sampler), list(sampler)
    assert len(first) == len(sampler) == 2 * (30 // 8) and first != second  # reshuffled every epoch
    for b in first:
        assert len(b) == 8 and len({pairs.styles[k] for k in b}) == 1
    assert len({k for b in first for k in b}) == len(first) * 8  # no example twice in an epoch
    val = list(StyleBatches(pairs.styles, batch_size=8, shuffle=False, drop_last=False))
    assert [pairs.styles[b[0]] for b in val[:4]] == [0, 1, 0, 1] and sum(map(len, val)) == len(pairs)


def test_recipe_prompts_are_checked(tmp_path):
    cfg = compose_cfg(tmp_path)
    assert recipe_prompts(cfg) == STYLE_PROMPTS  # the recipe's instructions are the model's constants
    for bad in ("+model.prompts.shouty=Hello.", "model.prompts.shape_first='Provide a one-sentence caption for the provided image.'"):
        with pytest.raises(CoxlmmError, match="model.prompts"):
            recipe_prompts(compose_cfg(tmp_path, bad))


def test_loss_with_fixed_prefix_cache_equals_full_sequence_loss(tiny_model):
    """Training attends to the precomputed keys/values of the image-independent prompt start: the
    loss and the connector's gradient must equal those of one forward over the whole sequence."""
    m = tiny_model
    module = ConnectorModule(m, lr=1e-3, weight_decay=0.0, warmup_steps=1, max_steps=1)
    torch.manual_seed(1)
    items = [(torch.randn(16, VISION_DIM), [5, 6, 7]), (torch.randn(16, VISION_DIM), [8, 9])]
    m.connector.cell.data.normal_()  # non-zero cell embeddings: the splice must place them per token
    items = [(v, ids, 0) for v, ids in items]
    split = module.caption_loss(make_collate([(m._prompt_ids[m.n_fixed:], m._image_mask[m.n_fixed:])], m.pad_id)(items))
    (g_split,) = torch.autograd.grad(split, m.connector.fc1.weight)
    full_batch = make_collate([(m._prompt_ids, m._image_mask)], m.pad_id)(items)
    emb = m.embed(full_batch["input_ids"], full_batch["image_mask"], full_batch["visual"])
    h = m.lm.model(inputs_embeds=emb, attention_mask=full_batch["attention_mask"], use_cache=False).last_hidden_state
    targets = full_batch["labels"][:, 1:]
    keep = targets != IGNORE
    full = torch.nn.functional.cross_entropy(m.lm.lm_head(h[:, :-1][keep]), targets[keep])
    (g_full,) = torch.autograd.grad(full, m.connector.fc1.weight)
    m.connector.cell.data.zero_()
    assert m.n_fixed > 0 and keep.sum() == 5
    torch.testing.assert_close(split, full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g_split, g_full, rtol=1e-4, atol=1e-6)


def test_visual_tokens_are_cached_once(tiny_model, tmp_path):
    world = ShapesWorld("train", n_train=5)
    first = encode_world(tiny_model, world, str(tmp_path))
    files = os.listdir(tmp_path)
    assert first.shape == (5, 16, VISION_DIM) and len(files) == 1 and files[0].endswith(".safetensors")
    again = encode_world(tiny_model, world, str(tmp_path))
    assert torch.equal(first, again) and os.listdir(tmp_path) == files
    encode_world(tiny_model, ShapesWorld("train", n_train=5, seed=1), str(tmp_path))
    assert len(os.listdir(tmp_path)) == 2  # another world, another key


@pytest.mark.slow
def test_short_training_run_lowers_the_loss(tiny_model, tmp_path):
    before = {k: v.clone() for k, v in tiny_model.connector.state_dict().items()}
    facts = train(compose_cfg(tmp_path), model=tiny_model)
    assert facts["steps"] == 12
    assert facts["final_loss_mean_last_20"] < facts["first_loss"]
    assert facts["styles"] == STYLE_PROMPTS and facts["world_version"] == GENERATOR_VERSION
    for style in STYLES:  # both styles trained, each with its own loss curve and val loss
        per = facts["per_style"][style]
        assert per["steps"] > 0 and per["val_loss"] is not None, facts["per_style"]
    assert sorted(map(tuple, facts["world"]["heldout_pairs"])) == sorted(HELDOUT_PAIRS)
    assert any(not torch.equal(before[k], v) for k, v in tiny_model.connector.state_dict().items())
    assert not any(p.requires_grad for p in tiny_model.lm.parameters())
    # the written checkpoint is what the model loads, with its card beside it
    out = tmp_path / "connector.safetensors"
    c = load_connector(str(out), VISION_DIM, 64, 128)
    with safe_open(str(out), "pt") as f:
        assert f.get_tensor("fc2.weight").dtype == torch.float16
    assert c.fc2.weight.shape == (64, 64)
    assert c.config["styles"] == STYLE_PROMPTS and c.config["world_version"] == GENERATOR_VERSION
    assert (tmp_path / "connector.json").is_file() and (tmp_path / "run" / "csv" / "metrics.csv").is_file()
    with open(tmp_path / "run" / "csv" / "metrics.csv") as f:
        columns = next(csv.reader(f))
    assert "train/style" in columns and {f"val/loss_{s}" for s in STYLES} <= set(columns)


@pytest.mark.slow
def test_cli_trains_with_smollm2(tmp_path):
    """`python -m coxlmm.train.connector` with the real SmolLM2: a few epochs of 8 images lower the loss."""
    cmd = [sys.executable, "-m", "coxlmm.train.connector", "data.n_train=8", "data.n_val=0",
           "train.batch_size=8", "train.max_steps=9", "train.warmup_steps=1", "train.lr=3e-3",
           "progress_bar=false", "train.log_every_n_steps=1", "logger=csv",
           f"cache_dir={tmp_path}/cache", f"output={tmp_path}/c.safetensors", f"hydra.run.dir={tmp_path}/run"]
    res = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    with open(tmp_path / "run" / "csv" / "metrics.csv") as f:
        losses = [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]
    assert len(losses) == 9 and sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses
    assert (tmp_path / "c.safetensors").is_file() and (tmp_path / "c.json").is_file()
