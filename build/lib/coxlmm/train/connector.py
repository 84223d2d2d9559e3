"""Train DePALM-mini's connector on the shapes world (`make train-mini`).

    python -m coxlmm.train.connector [hydra overrides, e.g. train.max_steps=100 trainer.accelerator=gpu]

Recipe (conf/train_mini.yaml): the frozen EfficientNet-Lite0 encodes every training image once
(visual tokens cached as safetensors under outputs/cache/, keyed by the world and the encoder);
then a Lightning `Trainer.fit` trains only the connector with next-token cross-entropy on the
caption tokens (+ <|im_end|>) that follow the chat-templated prompt with the visual prefix, through
the frozen SmolLM2. The prompt's first `model.n_fixed` ids (system turn, user header: 24 of the
~74 positions) do not depend on the image, so each step runs them once at batch 1 without
gradients and the batch attends to their keys/values: same loss, 3.0 instead of 5.2 s per step on
the 2-core CPU. Each (image, reference caption) pair is one training example. AdamW, linear
warm-up then cosine decay. At the end the connector goes to an fp16 safetensors file with a JSON
sidecar of training facts (data, steps, wall time, losses, machine).
"""

from __future__ import annotations

import hashlib
import json
import math
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
from torch.utils.data import DataLoader, Dataset
from transformers import DynamicCache
from tqdm import tqdm

from coxlmm.data.shapes import ShapesWorld
from coxlmm.errors import CoxlmmError
from coxlmm.models.depalm_mini import (
    DEFAULT_CONNECTOR,
    VISION_DIM,
    Connector,
    DePALMMini,
    cache_kwargs,
    load_language_model,
    load_vision_encoder,
    pixel_values,
    save_connector,
)
from coxlmm.paths import CACHE_DIR, CONF_DIR, OUTPUTS_DIR

IGNORE = -100  # label of positions that carry no loss (prompt, padding)


# --- cached visual tokens -----------------------------------------------------------------------
def encode_world(model: DePALMMini, world: ShapesWorld, cache_dir: str, batch_size: int = 64) -> torch.Tensor:
    """Visual tokens of every image of `world`: (n_images, N, VISION_DIM) float16, cached on disk.

    The key hashes the world's fingerprint and the encoder, so another world or image size gets
    its own file; the file is written under a temporary name and renamed, so an interrupted run
    never leaves a truncated cache that a later run would trust."""
    key = hashlib.sha256(json.dumps({"world": world.fingerprint(), "encoder": "efficientnet-lite0+s8",
                                     "size": model.image_size}, sort_keys=True).encode()).hexdigest()[:16]
    path = os.path.join(cache_dir, f"depalm_mini_visual_tokens_{key}.safetensors")
    if os.path.isfile(path):
        return load_file(path)["visual_tokens"]
    chunks = []
    for start in tqdm(range(0, len(world), batch_size), desc="encoding images (once)", unit="batch"):
        images = [world[i].image for i in range(start, min(start + batch_size, len(world)))]
        chunks.append(model.encode_images(pixel_values(images, model.image_size)).to("cpu", torch.float16))
    tokens = torch.cat(chunks) if chunks else torch.empty(0, model.n_visual_tokens, VISION_DIM, dtype=torch.float16)
    os.makedirs(cache_dir, exist_ok=True)
    save_file({"visual_tokens": tokens.contiguous()}, path + ".tmp", metadata={"world": json.dumps(world.fingerprint())})
    os.replace(path + ".tmp", path)
    return tokens


# --- examples and batches -----------------------------------------------------------------------
class CaptionPairs(Dataset):
    """One example per (image, reference caption): (visual tokens (N, VISION_DIM), caption ids (T,))."""

    def __init__(self, visual_tokens: torch.Tensor, world: ShapesWorld, tokenizer: Any, eos_id: int):
        self.visual_tokens = visual_tokens
        self.pairs: list[tuple[int, list[int]]] = []
        for i, rec in enumerate(world.records):
            for cap in rec.captions:
                self.pairs.append((i, tokenizer(cap, add_special_tokens=False).input_ids + [eos_id]))

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, list[int]]:
        i, ids = self.pairs[k]
        return self.visual_tokens[i], ids


def make_collate(prompt_ids: torch.Tensor, image_mask: torch.Tensor, pad_id: int):
    """Batch = prompt (with visual placeholders) + caption, right-padded. `prompt_ids` is the part
    of the prompt after the fixed ids (`model._prompt_ids[model.n_fixed:]`).

    Returns visual (B, N, VISION_DIM) float32, input_ids / labels / attention_mask (B, P + T_max),
    image_mask (B, P + T_max) bool. Labels hold the caption ids (IGNORE elsewhere), aligned with
    input_ids: the loss shifts them by one."""
    P = len(prompt_ids)

    def collate(items: list[tuple[torch.Tensor, list[int]]]) -> dict[str, torch.Tensor]:
        B, T = len(items), max(len(ids) for _, ids in items)
        input_ids = torch.full((B, P + T), pad_id, dtype=torch.long)
        labels = torch.full((B, P + T), IGNORE, dtype=torch.long)
        attn = torch.zeros(B, P + T, dtype=torch.long)
        input_ids[:, :P] = prompt_ids
        attn[:, :P] = 1
        for b, (_, ids) in enumerate(items):
            input_ids[b, P: P + len(ids)] = torch.tensor(ids)
            labels[b, P: P + len(ids)] = torch.tensor(ids)
            attn[b, P: P + len(ids)] = 1
        mask = torch.zeros(B, P + T, dtype=torch.bool)
        mask[:, :P] = image_mask
        visual = torch.stack([v for v, _ in items]).float()
        return {"visual": visual, "input_ids": input_ids, "labels": labels, "attention_mask": attn, "image_mask": mask}

    return collate


# --- the Lightning module -----------------------------------------------------------------------
class ConnectorModule(L.LightningModule):
    """Trains `model.connector` only; the LM and encoder stay frozen (and in eval mode)."""

    def __init__(self, model: DePALMMini, lr: float, weight_decay: float, warmup_steps: int, max_steps: int,
                 min_lr_ratio: float = 0.1):
        super().__init__()
        self.model = model
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

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.caption_loss(batch)
        self.log("train/loss", loss, prog_bar=True, on_step=True, batch_size=batch["visual"].shape[0])
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.log("val/loss", self.caption_loss(batch), prog_bar=True, batch_size=batch["visual"].shape[0])

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.model.connector.parameters(), lr=self.lr, weight_decay=self.weight_decay)

        def schedule(step: int) -> float:
            if step < self.warmup_steps:
                return (step + 1) / self.warmup_steps
            t = min(1.0, (step - self.warmup_steps) / max(1, self.max_steps - self.warmup_steps))
            return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class LossHistory(L.Callback):
    """Keeps the per-step training loss (for the facts file; loggers may be off)."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


# --- the recipe ---------------------------------------------------------------------------------
def build_model(cfg: DictConfig) -> DePALMMini:
    """DePALM-mini with a freshly initialised connector (seeded before this call)."""
    lm, tokenizer = load_language_model(torch.float32)
    connector = Connector(VISION_DIM, cfg.model.hidden_dim, lm.config.hidden_size, (cfg.data.image_size // 32) ** 2)
    return DePALMMini(load_vision_encoder(cfg.data.image_size), connector, lm, tokenizer,
                      prompt=cfg.model.prompt, image_size=cfg.data.image_size)


def make_logger(cfg: DictConfig, run_dir: str):
    if cfg.log_to == "none":
        return False
    if cfg.log_to == "csv":
        return L.pytorch.loggers.CSVLogger(run_dir, name="", version="")
    if cfg.log_to == "wandb":
        return L.pytorch.loggers.WandbLogger(project="coxlmm", name="train_mini", save_dir=run_dir,
                                             offline=os.environ.get("WANDB_MODE", "offline") == "offline")
    raise CoxlmmError(f"log_to={cfg.log_to!r} is not a logger of train_mini: use csv, wandb or none.")


def train(cfg: DictConfig, model: DePALMMini | None = None) -> dict[str, Any]:
    """Run the recipe; returns the training facts (also written next to the connector)."""
    t0 = time.time()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    L.seed_everything(cfg.seed, workers=True)
    model = model or build_model(cfg)
    if cfg.trainer.accelerator in ("gpu", "cuda") and torch.cuda.is_available():
        model.to("cuda")  # encode the images on the GPU too (Lightning moves the module anyway)
    world = ShapesWorld("train", n_train=cfg.data.n_images, seed=cfg.data.seed, image_size=cfg.data.image_size,
                        p_two=cfg.data.p_two)
    val_world = ShapesWorld("val", n_val=cfg.data.n_val, seed=cfg.data.seed, image_size=cfg.data.image_size,
                            p_two=cfg.data.p_two)
    cache_dir = cfg.cache_dir or str(CACHE_DIR)
    t_enc = time.time()
    train_tokens, val_tokens = encode_world(model, world, cache_dir), encode_world(model, val_world, cache_dir)
    t_enc = time.time() - t_enc

    collate = make_collate(model._prompt_ids[model.n_fixed:], model._image_mask[model.n_fixed:], model.pad_id)
    eos_id = model.end_of_turn_id
    train_set = CaptionPairs(train_tokens, world, model.tokenizer, eos_id)
    val_set = CaptionPairs(val_tokens, val_world, model.tokenizer, eos_id)
    loaders = dict(batch_size=cfg.train.batch_size, collate_fn=collate, num_workers=0)
    train_loader = DataLoader(train_set, shuffle=True, drop_last=True, **loaders)
    val_loader = DataLoader(val_set, shuffle=False, **loaders) if len(val_set) else None

    run_dir = cfg.run_dir or os.path.join(OUTPUTS_DIR, "train_mini")
    history = LossHistory()
    trainer = L.Trainer(
        max_steps=cfg.train.max_steps,
        accelerator=cfg.trainer.accelerator,
        devices=cfg.trainer.devices,
        precision=cfg.trainer.precision,
        logger=make_logger(cfg, run_dir),
        callbacks=[history],
        enable_checkpointing=False,
        enable_progress_bar=cfg.trainer.progress_bar,
        log_every_n_steps=cfg.trainer.log_every_n_steps,
        val_check_interval=cfg.train.val_every_n_steps if val_loader else None,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        limit_val_batches=cfg.train.val_batches if val_loader else 0,
        enable_model_summary=False,
        default_root_dir=run_dir,
    )
    module = ConnectorModule(model, cfg.train.lr, cfg.train.weight_decay, cfg.train.warmup_steps,
                             cfg.train.max_steps)
    t_fit = time.time()
    with warnings.catch_warnings():
        # expected: the frozen LM and encoder stay in eval mode on purpose
        warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
        trainer.fit(module, train_loader, val_loader)
    t_fit = time.time() - t_fit

    val_loss = trainer.callback_metrics.get("val/loss")
    tail = history.losses[-20:]
    facts = {
        "prompt": model.prompt,
        "n_visual_tokens": model.n_visual_tokens,
        "image_size": model.image_size,
        "world": world.fingerprint(),
        "n_train_images": len(world),
        "n_train_pairs": len(train_set),
        "steps": len(history.losses),
        "batch_size": cfg.train.batch_size,
        "lr": cfg.train.lr,
        "seed": cfg.seed,
        "first_loss": history.losses[0] if history.losses else None,
        "final_loss_mean_last_20": sum(tail) / len(tail) if tail else None,
        "val_loss": float(val_loss) if val_loss is not None else None,
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
    print(f"connector -> {out}  ({facts['steps']} steps, loss {facts['first_loss']:.3f} -> "
          f"{facts['final_loss_mean_last_20']:.3f}, val {facts['val_loss']}, {facts['wall_seconds']} s)")
    return facts


@hydra.main(config_path=str(CONF_DIR), config_name="train_mini", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    if not cfg.run_dir:
        cfg.run_dir = HydraConfig.get().runtime.output_dir
    try:
        train(cfg)
    except CoxlmmError as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
