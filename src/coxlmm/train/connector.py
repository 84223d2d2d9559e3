"""Train DePALM-mini's connector on the shapes world (`make train-mini`).

    python -m coxlmm.train.connector [hydra overrides, e.g. train.max_steps=100 trainer=gpu logger=wandb]

Recipe (conf/train_mini.yaml): the frozen EfficientNet-Lite0 encodes every training image once
(visual tokens cached as safetensors under outputs/cache/, keyed by the world and the encoder);
then a Lightning `Trainer.fit` trains only the connector with next-token cross-entropy on the
caption tokens (+ <|im_end|>) that follow the chat-templated prompt with the visual prefix, through
the frozen SmolLM2. The prompt's first `model.n_fixed` ids (system turn, user header: 24 of the
~74 positions) do not depend on the image, so each step runs them once at batch 1 without
gradients and the batch attends to their keys/values: same loss, 3.0 instead of 5.2 s per step on
the 2-core CPU. Two caption styles (the world's grammars), each with its own instruction
(`model.prompts`): each (image, style, reference caption of that style) is one training example,
and every batch holds one style (so one prompt, and the shared fixed-prompt cache: the styles'
instructions come after the image, so the fixed ids are the same). The train split never holds the
world's held-out (shape, colour) pairs. AdamW, linear warm-up then cosine decay (`coxlmm.trainer.warmup_cosine`).
At the end the connector goes to an fp16 safetensors file with a JSON sidecar of training facts (data, steps,
wall time, losses, machine).
"""

from __future__ import annotations

import json
import os
import platform
import time
import warnings
from typing import Any

import hydra
import lightning as L
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset, Sampler
from transformers import DynamicCache
from tqdm import tqdm

from coxlmm.data.shapes import GENERATOR_VERSION, STYLES, ShapesWorld, captions_for
from coxlmm.errors import CoxlmmError
from coxlmm.io import atomic_write, content_key
from coxlmm.trainer import build_trainer, warmup_cosine
from coxlmm.models.depalm_mini import (
    DEFAULT_CONNECTOR,
    VISION_DIM,
    Connector,
    DePALMMini,
    cache_kwargs,
    load_language_model,
    load_vision_encoder,
    pixel_values,
    prompt_inputs,
    save_connector,
)
from coxlmm.config import build, device_of
from coxlmm.paths import CONF_PACKAGE
from coxlmm.paths import cache_dir as cache_dir_default
from coxlmm.report.log import trainer_loggers

IGNORE = -100  # label of positions that carry no loss (prompt, padding)


# --- cached visual tokens -----------------------------------------------------------------------
def encode_world(model: DePALMMini, world: ShapesWorld, cache_dir: str, batch_size: int = 64) -> torch.Tensor:
    """Visual tokens of every image of `world`: (n_images, N, VISION_DIM) float16, cached on disk.

    The key hashes the world's fingerprint and the encoder, so another world or image size gets
    its own file; the file is written under a temporary name and renamed, so an interrupted run
    never leaves a truncated cache that a later run would trust."""
    key = content_key({"world": world.fingerprint(), "encoder": "efficientnet-lite0+s8", "size": model.image_size})
    path = os.path.join(cache_dir, f"depalm_mini_visual_tokens_{key}.safetensors")
    if os.path.isfile(path):
        return load_file(path)["visual_tokens"]
    chunks = []
    for start in tqdm(range(0, len(world), batch_size), desc="encoding images (once)", unit="batch"):
        images = [world[i].image for i in range(start, min(start + batch_size, len(world)))]
        chunks.append(model.encode_images(pixel_values(images, model.image_size)).to("cpu", torch.float16))
    tokens = torch.cat(chunks) if chunks else torch.empty(0, model.n_visual_tokens, VISION_DIM, dtype=torch.float16)
    atomic_write(path, lambda tmp: save_file({"visual_tokens": tokens.contiguous()}, str(tmp),
                                             metadata={"world": json.dumps(world.fingerprint())}))
    return tokens


# --- examples and batches -----------------------------------------------------------------------
class CaptionPairs(Dataset):
    """One example per (image, style, reference caption of that style):
    (visual tokens (N, VISION_DIM), caption ids (T,), style index into `styles`)."""

    def __init__(self, visual_tokens: torch.Tensor, world: ShapesWorld, tokenizer: Any, eos_id: int,
                 styles: list[str], captions_per_style: int | None = None):
        self.visual_tokens = visual_tokens
        self.pairs: list[tuple[int, list[int], int]] = []
        for i, rec in enumerate(world.records):
            for s, style in enumerate(styles):
                for cap in captions_for(rec.attributes, style)[:captions_per_style]:
                    self.pairs.append((i, tokenizer(cap, add_special_tokens=False).input_ids + [eos_id], s))
        self.styles = [s for _, _, s in self.pairs]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, list[int], int]:
        i, ids, s = self.pairs[k]
        return self.visual_tokens[i], ids, s


class StyleBatches(Sampler[list[int]]):
    """Batches of one style each (one prompt per batch). shuffle: examples shuffled within each
    style and the batches of all styles in a random order, anew every epoch (seeded); else the
    styles' batches alternate, so the first few batches of a validation cover every style."""

    def __init__(self, styles: list[int], batch_size: int, shuffle: bool, seed: int = 0, drop_last: bool = True):
        self.by_style = [[k for k, s in enumerate(styles) if s == v] for v in sorted(set(styles))]
        self.batch_size, self.shuffle, self.seed, self.drop_last = batch_size, shuffle, seed, drop_last
        self.epoch = 0

    def _batches(self, gen: torch.Generator | None) -> list[list[list[int]]]:
        out = []
        for idx in self.by_style:
            order = [idx[k] for k in torch.randperm(len(idx), generator=gen).tolist()] if gen else idx
            chunks = [order[a: a + self.batch_size] for a in range(0, len(order), self.batch_size)]
            out.append([c for c in chunks if len(c) == self.batch_size or not self.drop_last])
        return out

    def __iter__(self):
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed + self.epoch)
            self.epoch += 1
            batches = [b for per_style in self._batches(gen) for b in per_style]
            yield from (batches[k] for k in torch.randperm(len(batches), generator=gen).tolist())
        else:
            per_style = self._batches(None)
            for k in range(max(map(len, per_style), default=0)):
                yield from (b[k] for b in per_style if k < len(b))

    def __len__(self) -> int:
        return sum(map(len, self._batches(None)))


def make_collate(prompts: list[tuple[torch.Tensor, torch.Tensor]], pad_id: int):
    """Batch = prompt of the batch's style (with visual placeholders) + caption, right-padded.
    prompts[s] = (ids, image_mask) of style s's prompt after its fixed ids
    (`prompt_inputs(...)[1:3]` from n_fixed on); every item of a batch has the same style.

    Returns visual (B, N, VISION_DIM) float32, input_ids / labels / attention_mask (B, P + T_max),
    image_mask (B, P + T_max) bool, style () long. Labels hold the caption ids (IGNORE elsewhere),
    aligned with input_ids: the loss shifts them by one."""

    def collate(items: list[tuple[torch.Tensor, list[int], int]]) -> dict[str, torch.Tensor]:
        styles = {s for _, _, s in items}
        if len(styles) != 1:
            raise ValueError(f"a batch must hold one caption style, got {sorted(styles)} (use StyleBatches)")
        style = styles.pop()
        prompt_ids, image_mask = prompts[style]
        P = len(prompt_ids)
        B, T = len(items), max(len(ids) for _, ids, _ in items)
        input_ids = torch.full((B, P + T), pad_id, dtype=torch.long)
        labels = torch.full((B, P + T), IGNORE, dtype=torch.long)
        attn = torch.zeros(B, P + T, dtype=torch.long)
        input_ids[:, :P] = prompt_ids
        attn[:, :P] = 1
        for b, (_, ids, _) in enumerate(items):
            input_ids[b, P: P + len(ids)] = torch.tensor(ids)
            labels[b, P: P + len(ids)] = torch.tensor(ids)
            attn[b, P: P + len(ids)] = 1
        mask = torch.zeros(B, P + T, dtype=torch.bool)
        mask[:, :P] = image_mask
        visual = torch.stack([v for v, _, _ in items]).float()
        return {"visual": visual, "input_ids": input_ids, "labels": labels, "attention_mask": attn,
                "image_mask": mask, "style": torch.tensor(style)}

    return collate


def style_prompts(model: DePALMMini, prompts: dict[str, str]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per style (in the order of `prompts`): its prompt's (ids, image_mask) after the fixed ids.
    The fixed ids (system turn, user header) must be the model's: `ConnectorModule.fixed_cache`
    computes one cache for every style."""
    out = []
    for style, prompt in prompts.items():
        _, ids, mask, n_fixed = prompt_inputs(model.tokenizer, prompt, model.n_visual_tokens, model.pad_id)
        if n_fixed != model.n_fixed or not torch.equal(ids[:n_fixed], model._prompt_ids[: model.n_fixed]):
            raise CoxlmmError(f"the prompt of style {style!r} changes the chat template before the image: the "
                              "styles must differ only in the instruction after it.")
        out.append((ids[n_fixed:], mask[n_fixed:]))
    return out


# --- the Lightning module -----------------------------------------------------------------------
class ConnectorModule(L.LightningModule):
    """Trains `model.connector` only; the LM and encoder stay frozen (and in eval mode)."""

    def __init__(self, model: DePALMMini, lr: float, weight_decay: float, warmup_steps: int, max_steps: int,
                 min_lr_ratio: float = 0.1, styles: tuple[str, ...] = ("attribute_first",)):
        super().__init__()
        self.model, self.styles = model, list(styles)  # styles[s]: name of batch["style"] == s
        model.connector.requires_grad_(True)  # a loaded checkpoint comes frozen; fine-tuning it must work
        self.lr, self.weight_decay = lr, weight_decay
        self.warmup_steps, self.max_steps, self.min_lr_ratio = warmup_steps, max_steps, min_lr_ratio

    def on_train_epoch_start(self) -> None:
        # Lightning puts every submodule in train mode; the frozen parts must not change behaviour.
        self.model.lm.eval()
        self.model.encoder.eval()

    def fixed_cache(self, batch_size: int) -> dict[str, DynamicCache]:
        """Keys/values of the prompt's fixed ids (no gradient: they do not depend on the connector),
        computed at batch 1 and expanded to the batch (no copy), as the keyword the LM's forward
        takes (`cache_kwargs`: its name changed within transformers 5.x)."""
        fixed = self.model._prompt_ids[: self.model.n_fixed].to(self.device)[None]
        with torch.no_grad():
            out = self.model.lm.model(input_ids=fixed, use_cache=True)
        ((name, cache),) = cache_kwargs(out).items()
        return {name: DynamicCache(ddp_cache_data=[(layer.keys.expand(batch_size, -1, -1, -1),
                                                    layer.values.expand(batch_size, -1, -1, -1))
                                                   for layer in cache.layers])}

    def caption_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean next-token cross-entropy over caption tokens. The batch holds the prompt after its
        fixed ids (see `fixed_cache`); the 49k-way LM head runs only at the positions that predict
        a caption token, not over the prompt."""
        emb = self.model.embed(batch["input_ids"], batch["image_mask"], batch["visual"])
        B, T = batch["input_ids"].shape
        n_fixed = self.model.n_fixed
        attn = torch.cat([batch["attention_mask"].new_ones(B, n_fixed), batch["attention_mask"]], dim=1)
        pos = torch.arange(n_fixed, n_fixed + T, device=emb.device).expand(B, -1)
        h = self.model.lm.model(inputs_embeds=emb, attention_mask=attn, position_ids=pos,
                                use_cache=True, **self.fixed_cache(B)).last_hidden_state
        targets = batch["labels"][:, 1:]
        keep = targets != IGNORE
        logits = self.model.lm.lm_head(h[:, :-1][keep])
        return F.cross_entropy(logits.float(), targets[keep])

    def _style(self, batch: dict[str, torch.Tensor]) -> str:
        return self.styles[int(batch["style"])] if "style" in batch else self.styles[0]

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, Any]:
        loss = self.caption_loss(batch)
        B = batch["visual"].shape[0]
        self.log("train/loss", loss, prog_bar=True, on_step=True, batch_size=B)
        # the style of this step's batch (index into `styles`), logged with its loss: a per-style loss
        # key would be logged only on its own steps, and loggers repeat a stale value on the others
        self.log("train/style", float(batch.get("style", 0)), on_step=True, batch_size=B)
        return {"loss": loss, "style": self._style(batch)}

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss, B = self.caption_loss(batch), batch["visual"].shape[0]
        self.log("val/loss", loss, prog_bar=True, batch_size=B)
        self.log(f"val/loss_{self._style(batch)}", loss, batch_size=B)

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.model.connector.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        sched = warmup_cosine(opt, self.warmup_steps, self.max_steps, self.min_lr_ratio)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class LossHistory(L.Callback):
    """Keeps the per-step training loss and each step's style (for the facts file; loggers may be off)."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.styles: list[str] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))
        self.styles.append(outputs.get("style", ""))

    def summary(self, style: str | None = None, n: int = 20) -> dict[str, float | None]:
        """First loss and mean of the last n (of one style, or all steps)."""
        ls = [l for l, s in zip(self.losses, self.styles) if style is None or s == style]
        tail = ls[-n:]
        return {"steps": len(ls), "first_loss": ls[0] if ls else None,
                "final_loss_mean_last_20": sum(tail) / len(tail) if tail else None}


# --- the recipe ---------------------------------------------------------------------------------
def build_model(cfg: DictConfig) -> DePALMMini:
    """DePALM-mini with a freshly initialised connector (seeded before this call)."""
    lm, tokenizer = load_language_model(torch.float32)
    connector = Connector(VISION_DIM, cfg.model.hidden_dim, lm.config.hidden_size, (cfg.data.image_size // 32) ** 2)
    return DePALMMini(load_vision_encoder(cfg.data.image_size), connector, lm, tokenizer,
                      prompt=recipe_prompts(cfg)[STYLES[0]], image_size=cfg.data.image_size)


def recipe_prompts(cfg: DictConfig) -> dict[str, str]:
    """{style: instruction} of the recipe (`model.prompts`), checked: known styles, distinct prompts,
    the attribute_first one first (it is the model's default prompt)."""
    prompts = {str(k): str(v) for k, v in cfg.model.prompts.items()}
    unknown = sorted(set(prompts) - set(STYLES))
    if unknown or not prompts or STYLES[0] not in prompts or len(set(prompts.values())) != len(prompts):
        raise CoxlmmError(
            f"model.prompts={prompts} must map caption styles {list(STYLES)} (attribute_first included) to "
            f"distinct instructions{f'; unknown styles: {unknown}' if unknown else ''}."
        )
    return {STYLES[0]: prompts.pop(STYLES[0]), **prompts}


def train(cfg: DictConfig, model: DePALMMini | None = None) -> dict[str, Any]:
    """Run the recipe; returns the training facts (also written next to the connector)."""
    t0 = time.time()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    L.seed_everything(cfg.seed, workers=True)
    model = model or build_model(cfg)
    if device_of(cfg.trainer.accelerator) == "cuda" and torch.cuda.is_available():
        model.to("cuda")  # encode the images on the GPU too (Lightning moves the module anyway)
    prompts = recipe_prompts(cfg)
    styles = list(prompts)
    world, val_world = build(cfg.data, split="train"), build(cfg.data, split="val")
    if not isinstance(world, ShapesWorld):
        raise CoxlmmError(f"the connector recipe trains on the shapes world (data=shapes), not {type(world).__name__}.")
    cache_dir = cfg.cache_dir or str(cache_dir_default())
    t_enc = time.time()
    train_tokens, val_tokens = encode_world(model, world, cache_dir), encode_world(model, val_world, cache_dir)
    t_enc = time.time() - t_enc

    collate = make_collate(style_prompts(model, prompts), model.pad_id)
    eos_id = model.end_of_turn_id
    train_set = CaptionPairs(train_tokens, world, model.tokenizer, eos_id, styles)
    val_set = CaptionPairs(val_tokens, val_world, model.tokenizer, eos_id, styles, captions_per_style=1)
    bs = cfg.train.batch_size
    train_loader = DataLoader(train_set, batch_sampler=StyleBatches(train_set.styles, bs, shuffle=True, seed=cfg.seed),
                              collate_fn=collate, num_workers=0)
    val_loader = (DataLoader(val_set, batch_sampler=StyleBatches(val_set.styles, bs, shuffle=False, drop_last=False),
                             collate_fn=collate, num_workers=0) if len(val_set) else None)

    history = LossHistory()
    trainer = build_trainer(  # the `trainer` group's Trainer (accelerator, devices, precision), the recipe's loop
        cfg.trainer,
        max_steps=cfg.train.max_steps,
        logger=trainer_loggers(cfg.logger),
        callbacks=[history],
        enable_checkpointing=False,
        enable_progress_bar=cfg.progress_bar,
        log_every_n_steps=cfg.train.log_every_n_steps,
        val_check_interval=cfg.train.val_every_n_steps if val_loader else None,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        limit_val_batches=cfg.train.val_batches if val_loader else 0,
        enable_model_summary=False,
        use_distributed_sampler=False,  # the batches are StyleBatches' (one style each)
    )
    module = ConnectorModule(model, cfg.train.lr, cfg.train.weight_decay, cfg.train.warmup_steps,
                             cfg.train.max_steps, styles=tuple(styles))
    t_fit = time.time()
    with warnings.catch_warnings():
        # expected: the frozen LM and encoder stay in eval mode on purpose
        warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
        trainer.fit(module, train_loader, val_loader)
    t_fit = time.time() - t_fit

    metrics = trainer.callback_metrics
    val_loss = metrics.get("val/loss")
    facts = {
        "prompt": prompts[STYLES[0]],
        "styles": prompts,
        "world_version": GENERATOR_VERSION,
        "n_visual_tokens": model.n_visual_tokens,
        "image_size": model.image_size,
        "world": world.fingerprint(),
        "n_train_images": len(world),
        "n_train_pairs": len(train_set),
        **history.summary(),  # steps, first_loss, final_loss_mean_last_20
        "batch_size": cfg.train.batch_size,
        "lr": cfg.train.lr,
        "seed": cfg.seed,
        "val_loss": float(val_loss) if val_loss is not None else None,
        "per_style": {s: {**history.summary(s),
                          "val_loss": float(metrics[f"val/loss_{s}"]) if f"val/loss_{s}" in metrics else None}
                      for s in styles},
        "encode_seconds": round(t_enc, 1),
        "fit_seconds": round(t_fit, 1),
        "wall_seconds": round(time.time() - t0, 1),
        "machine": {"accelerator": str(trainer.strategy.root_device), "cpu_count": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
                    "torch": torch.__version__},
        "date": time.strftime("%Y-%m-%d"),
        "recipe": OmegaConf.to_container(cfg, resolve=True),
    }
    out = cfg.output or DEFAULT_CONNECTOR
    save_connector(model.connector, out, facts)
    per_style = "; ".join(f"{s} {v['first_loss']:.3f} -> {v['final_loss_mean_last_20']:.3f} (val {v['val_loss']})"
                          for s, v in facts["per_style"].items() if v["steps"])
    print(f"connector -> {out}  ({facts['steps']} steps, loss {facts['first_loss']:.3f} -> "
          f"{facts['final_loss_mean_last_20']:.3f}, val {facts['val_loss']}, {facts['wall_seconds']} s; {per_style})")
    return facts


@hydra.main(config_path=CONF_PACKAGE, config_name="train_mini", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        train(cfg)
    except CoxlmmError as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
