"""Train the embedded CLIPScore scorer's heads on the shapes world (`make train-scorer`).

    python -m coxlmm.train.scorer [hydra overrides, e.g. optim.max_steps=300]

Recipe (conf/train_scorer.yaml; model: scorers/embedded.py):
1. Data: train-split world images (the world of `world`: by default every (shape, colour) pair,
   `heldout_pairs: []`, so the judge is as good on the connector's held-out pairs as on the others,
   and captions of both styles, `caption_style: both`, so it knows the shape-first grammar that a
   shape-first run's GT captions use); per image one reference caption (style and template drawn at
   random) and
   `word_lists_per_image` concept-style texts "A photo is described by the words red, circle,
   large": a random subset (1 to `max_words`) of the image's factor words, shuffled. A share
   `p_junk` of these lists also get 1 to `max_junk` random English words mixed in, and stay true
   of the image: real concepts' lists mix right and unrelated words. Plus `distractor_lists` lists
   of 1 to `max_distractor_words` random English words only, true of no image. Random words come
   from all-MiniLM's whole-word vocabulary ∩ the grounding's English word list, minus stopwords
   and world words; training and the report use disjoint halves of that pool. Held-out images for
   the report come from the val split (the pipeline scores the test split).
2. The frozen encoders run once over all images and once over all distinct texts; both feature
   sets are cached as safetensors under outputs/cache/scorer_features/ (keyed by world / texts).
3. Lightning `Trainer.fit` trains the heads with the CLIP loss (cross-entropy over a batch of
   (image, text) pairs, both directions) with *multi-positive* targets: text j counts as a positive
   of image i when it is true of it — a caption when it describes the same scene (same objects), a
   word list when all its factor words are factor values of the image. Why: lists of one or two
   words are true of many images in a batch, and the one-hot CLIP target would push those true
   pairs apart. Each batch also holds `distractors_per_batch` distractor lists, as negatives of
   every image. Why: without them the heads never see words from outside the world, and random
   English words scored nearly as high as an image's own words (CS 0.85 vs 1.05 in a first run),
   which would blur the Rnd-Words baseline.
4. Report on the val split: image→text retrieval top-1/top-5 among one caption per image (the
   first attribute-first one; `captions_shape_first_*`: the first shape-first one), and among
   one word list "colour, shape, size" (of the first object) per image (a retrieved text is a hit
   when it is true of the image); the mean CLIPScore of each image with that list, with a held-out
   distractor list, and with its list plus 3 held-out random words. Heads go to fp16 safetensors
   + a JSON sidecar of facts.
"""

from __future__ import annotations

import json
import os
import platform
import time
from typing import Any

import hydra
import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader

from coxlmm.data.shapes import COLOURS, POSITIONS, SHAPES, SIZES, ShapesWorld, captions_for, objects_of
from coxlmm.config import build
from coxlmm.io import atomic_write, content_key, digest
from coxlmm.trainer import build_trainer, warmup_cosine
from coxlmm.paths import CONF_PACKAGE
from coxlmm.paths import cache_dir as cache_dir_default
from coxlmm.scorers.base import clip_score, words_text
from coxlmm.models.vision import load_vision_encoder
from coxlmm.scorers.embedded import (
    DEFAULT_WEIGHTS,
    IMAGE_SIZE,
    ProjectionHeads,
    image_features,
    load_text_encoder,
    save_heads,
    text_features,
)

FEATURES_VERSION = 1  # bump when the frozen-feature recipe changes: old caches are then ignored
VOCAB: tuple[str, ...] = (*SHAPES, *COLOURS, *SIZES, *POSITIONS)  # the factor words a word list uses
WORD_INDEX = {w: i for i, w in enumerate(VOCAB)}


# --- labels (pure) ------------------------------------------------------------------------------------
def factor_words(attrs: dict[str, Any]) -> list[str]:
    """Every factor value of an image, each once: shapes, colours, sizes, positions of its objects."""
    words: list[str] = []
    for obj in objects_of(attrs):
        words += [w for w in (obj["colour"], obj["shape"], obj["size"], obj["position"]) if w not in words]
    return words


def multi_hot(words: list[str]) -> torch.Tensor:
    """(|VOCAB|,) bool, True at each factor word."""
    v = torch.zeros(len(VOCAB), dtype=torch.bool)
    v[[WORD_INDEX[w] for w in words]] = True
    return v


def scene_key(attrs: dict[str, Any]) -> str:
    """Identity of what a caption says: the objects (background is never captioned)."""
    return json.dumps(objects_of(attrs), sort_keys=True)


def positives(img_scene: torch.Tensor, img_words: torch.Tensor, txt_scene: torch.Tensor,
              txt_words: torch.Tensor) -> torch.Tensor:
    """(n, m) bool: is text j true of image i?

    img_scene (n,), txt_scene (m,) long: scene ids; txt_scene = -1 marks a word list, which is true
    when its words are a subset of the image's: img_words (n, V), txt_words (m, V) bool."""
    same_scene = img_scene[:, None] == txt_scene[None, :]
    subset = ~(txt_words[None, :, :] & ~img_words[:, None, :]).any(-1)
    return torch.where(txt_scene[None, :] >= 0, same_scene, subset)


def multi_positive_clip_loss(logits: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """CLIP loss with soft targets spread evenly over the positives. logits, pos (n_img, n_txt).

    Image→text over every image (each has a positive: its own text); text→image over the texts that
    are true of some image in the batch (distractor columns only serve as negatives)."""
    pos = pos.float()
    i2t = F.cross_entropy(logits, pos / pos.sum(1, keepdim=True))
    cols = pos.sum(0) > 0
    t2i = F.cross_entropy(logits.T[cols], pos.T[cols] / pos.T[cols].sum(1, keepdim=True))
    return 0.5 * (i2t + t2i)


def retrieval_accuracy(img_emb: torch.Tensor, txt_emb: torch.Tensor, pos: torch.Tensor,
                       ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Image→text retrieval: share of images with a true text among their top-k by cosine.
    img_emb (n, D), txt_emb (m, D), pos (n, m)."""
    ranked = (img_emb @ txt_emb.T).argsort(dim=1, descending=True)
    hits = torch.gather(pos, 1, ranked)
    return {f"top{k}": float(hits[:, :k].any(1).float().mean()) for k in ks}


def chance_top1(pos: torch.Tensor) -> float:
    """Expected top-1 accuracy of a random ranking: mean share of true texts per image."""
    return float(pos.float().mean(1).mean())


# --- data ---------------------------------------------------------------------------------------------
def training_texts(world: ShapesWorld, scene_ids: torch.Tensor, n_lists: int, max_words: int,
                   junk: list[str], p_junk: float, max_junk: int, rng: np.random.Generator
                   ) -> tuple[list[list[str]], torch.Tensor, torch.Tensor]:
    """Per image: [one caption, n_lists word lists] -> (texts, txt_scene (n, 1+n_lists) long,
    txt_words (n, 1+n_lists, V) bool); a caption carries its image's scene id, a word list -1.

    With probability p_junk a word list also gets 1..max_junk words from `junk` (shuffled in): its
    truth is still decided by its factor words alone, so the heads learn to give partial credit to
    a list that mixes right words with unrelated ones, as real concepts' word lists do."""
    texts, t_scene, t_words = [], [], []
    for rec, sid in zip(world.records, scene_ids.tolist()):
        words = factor_words(rec.attributes)
        row, row_s, row_w = [rec.captions[int(rng.integers(len(rec.captions)))]], [sid], [multi_hot(words)]
        for _ in range(n_lists):
            chosen = list(rng.permutation(words)[: int(rng.integers(1, min(max_words, len(words)) + 1))])
            extra = list(rng.choice(junk, size=int(rng.integers(1, max_junk + 1)), replace=False)) \
                if rng.random() < p_junk else []
            row.append(words_text([str(w) for w in rng.permutation(chosen + extra)]))
            row_s.append(-1)
            row_w.append(multi_hot(chosen))
        texts.append(row)
        t_scene.append(row_s)
        t_words.append(torch.stack(row_w))
    return texts, torch.tensor(t_scene), torch.stack(t_words)


def image_labels(worlds: list[ShapesWorld]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(scene ids (n,), words (n, V)) per world, scene ids shared across the worlds."""
    scenes: dict[str, int] = {}
    out = []
    for w in worlds:
        sids = [scenes.setdefault(scene_key(r.attributes), len(scenes)) for r in w.records]
        out.append((torch.tensor(sids), torch.stack([multi_hot(factor_words(r.attributes)) for r in w.records])))
    return out


def eval_word_lists(world: ShapesWorld) -> list[list[str]]:
    """Per val image, the words 'colour, shape, size' of its first object."""
    return [[o["colour"], o["shape"], o["size"]] for o in (objects_of(r.attributes)[0] for r in world.records)]


def eval_texts(world: ShapesWorld, style: str = "attribute_first") -> tuple[list[str], list[str], torch.Tensor]:
    """Val texts: the first caption of `style` of each image; its `eval_word_lists` text (and words
    as multi-hot (n, V))."""
    lists = eval_word_lists(world)
    return ([captions_for(r.attributes, style)[0] for r in world.records], [words_text(w) for w in lists],
            torch.stack([multi_hot(w) for w in lists]))


def distractor_pool(seed: int) -> tuple[list[str], list[str]]:
    """Random English words that name no world factor, split in two disjoint halves (train, val):
    all-MiniLM's whole-word vocabulary ∩ the grounding's English words, minus stopwords."""
    from coxlmm.words import english_words, minilm_vocabulary, stopwords

    english, stop = english_words(), stopwords()
    world = set(VOCAB) | {w + "s" for w in VOCAB} | {"colour", "color", "shape", "size", "position"}
    vocab = sorted(minilm_vocabulary())
    pool = [w for w in vocab if w.isascii() and w.isalpha() and len(w) > 2 and w in english
            and w not in stop and w not in world]
    order = np.random.default_rng(seed).permutation(len(pool))
    half = len(pool) // 2
    return [pool[i] for i in order[:half]], [pool[i] for i in order[half:]]


def distractor_lists(pool: list[str], n: int, max_words: int, rng: np.random.Generator) -> list[str]:
    """n texts "A photo is described by the words …" of 1..max_words words drawn from `pool`."""
    return [words_text(list(rng.choice(pool, size=int(rng.integers(1, max_words + 1)), replace=False)))
            for _ in range(n)]


def _cached(path: str, compute) -> tuple[dict[str, torch.Tensor], float]:
    """Load `path`, or compute, save (temporary name, then rename: never a half-written cache) and time it."""
    if os.path.isfile(path):
        print(f"frozen features: cached {path}")
        return load_file(path), 0.0
    t0 = time.time()
    feats = compute()
    atomic_write(path, lambda tmp: save_file({k: v.contiguous() for k, v in feats.items()}, str(tmp)))
    return feats, time.time() - t0


def cached_features(cfg: DictConfig, worlds: dict[str, ShapesWorld], texts: list[str], cache_dir: str
                    ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Frozen features {"img_<split>": (n, G², 1280), "txt": (len(texts), 384)}, each set computed
    once and cached. Returns (features, seconds spent computing each set; 0 = loaded from cache)."""

    def images() -> dict[str, torch.Tensor]:
        encoder, out, t0 = load_vision_encoder(IMAGE_SIZE), {}, time.time()
        for split, world in worlds.items():
            out[f"img_{split}"] = image_features(encoder, [world[i].image for i in range(len(world))],
                                                 cfg.model.grid, cfg.features_batch_size)
            print(f"frozen features: {len(world)} {split} images in {time.time() - t0:.0f} s")
        return out

    def text() -> dict[str, torch.Tensor]:
        model, tokenizer = load_text_encoder()
        return {"txt": text_features(model, tokenizer, texts, 2 * cfg.features_batch_size)}

    img_key = content_key({"v": FEATURES_VERSION, "grid": cfg.model.grid,
                    "worlds": {s: w.fingerprint() for s, w in worlds.items()}})
    txt_key = content_key({"v": FEATURES_VERSION, "texts": digest(["\n".join(texts)])})
    img, s_img = _cached(os.path.join(cache_dir, f"scorer_images_{img_key}.safetensors"), images)
    txt, s_txt = _cached(os.path.join(cache_dir, f"scorer_texts_{txt_key}.safetensors"), text)
    print(f"frozen features: {len(texts)} distinct texts; computed in {s_img:.0f} s (images) + {s_txt:.0f} s (texts)")
    return img | txt, {"images": round(s_img, 1), "texts": round(s_txt, 1)}


# --- Lightning ------------------------------------------------------------------------------------
class HeadsModule(L.LightningModule):
    """Trains `ProjectionHeads` on cached features. A batch is a set of train image indices; each
    image gets its caption (prob. p_caption) or one of its word lists, drawn per step."""

    def __init__(self, heads: ProjectionHeads, data: dict[str, torch.Tensor], optim: DictConfig):
        super().__init__()
        self.heads, self.optim = heads, optim
        for k, v in data.items():  # buffers: they follow the module to its device, never trained
            self.register_buffer(k, v, persistent=False)

    def training_step(self, idx: torch.Tensor, _batch_idx: int) -> torch.Tensor:
        n_lists = self.text_index.shape[1] - 1
        use_list = torch.rand(len(idx), device=idx.device) >= self.optim.p_caption
        col = torch.where(use_list, 1 + torch.randint(n_lists, (len(idx),), device=idx.device), 0)
        n_neg = min(self.optim.distractors_per_batch, len(self.distractor_index))
        neg = self.distractor_index[torch.randperm(len(self.distractor_index), device=idx.device)[:n_neg]]
        t = torch.cat([self.text_index[idx, col], neg])
        img = self.heads.embed_image_features(self.img_train[idx])
        txt = self.heads.embed_text_features(self.txt[t])
        pos = positives(self.scene_train[idx], self.words_train[idx], self.t_scene[idx, col], self.t_words[idx, col])
        pos = torch.cat([pos, pos.new_zeros(len(idx), n_neg)], 1)  # distractors are true of no image
        scale = self.heads.logit_scale.clamp(max=np.log(100.0)).exp()  # CLIP's cap on the temperature
        loss = multi_positive_clip_loss(scale * img @ txt.T, pos)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/logit_scale", scale)
        return loss

    def validation_step(self, _batch: Any, _batch_idx: int) -> None:
        for name, value in self.evaluate().items():
            self.log(f"val/{name}", value)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        img = self.heads.embed_image_features(self.img_val)
        caps = self.heads.embed_text_features(self.txt[self.val_caption_index])
        lists = self.heads.embed_text_features(self.txt[self.val_list_index])
        pos_cap = self.scene_val[:, None] == self.scene_val[None, :]
        pos_list = positives(self.scene_val, self.words_val, torch.full_like(self.scene_val, -1), self.val_list_words)
        out = {f"captions_{k}": v for k, v in retrieval_accuracy(img, caps, pos_cap).items()}
        caps_sf = self.heads.embed_text_features(self.txt[self.val_caption_sf_index])
        out |= {f"captions_shape_first_{k}": v for k, v in retrieval_accuracy(img, caps_sf, pos_cap).items()}
        out |= {f"words_{k}": v for k, v in retrieval_accuracy(img, lists, pos_list).items()}
        out |= {"captions_chance_top1": chance_top1(pos_cap), "words_chance_top1": chance_top1(pos_list)}
        distractors = self.heads.embed_text_features(self.txt[self.val_distractor_index])
        out["cs_own_words_mean"] = float(clip_score(img, lists).mean())
        out["cs_random_words_mean"] = float(clip_score(img, distractors).mean())
        mixed = self.heads.embed_text_features(self.txt[self.val_mixed_index])
        out["cs_own_plus_3_random_words_mean"] = float(clip_score(img, mixed).mean())
        return out

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.heads.parameters(), lr=self.optim.lr, weight_decay=self.optim.weight_decay)
        sched = warmup_cosine(opt, self.optim.warmup_steps, self.optim.max_steps)  # cosine decay to 0
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def build_data(cfg: DictConfig, cache_dir: str) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, float]]:
    """Worlds, texts, labels and cached frozen features -> tensors for `HeadsModule`, data facts, seconds."""
    w = cfg.data
    worlds = {s: build(w, split=s) for s in ("train", "val")}
    (scene_train, words_train), (scene_val, words_val) = image_labels([worlds["train"], worlds["val"]])
    rng = np.random.default_rng(cfg.seed)
    pool_train, pool_val = distractor_pool(cfg.seed)
    t = cfg.texts
    texts, t_scene, t_words = training_texts(worlds["train"], scene_train, t.word_lists_per_image, t.max_words,
                                             pool_train, t.p_junk, t.max_junk, rng)
    val_caps, val_lists, val_list_words = eval_texts(worlds["val"])
    val_caps_sf = eval_texts(worlds["val"], "shape_first")[0]
    val_mixed = [words_text(ws + [str(w) for w in rng.choice(pool_val, size=3, replace=False)])
                 for ws in eval_word_lists(worlds["val"])]
    distractors = distractor_lists(pool_train, cfg.texts.distractor_lists, cfg.texts.max_distractor_words, rng)
    val_distractors = distractor_lists(pool_val, len(val_lists), cfg.texts.max_distractor_words, rng)
    distinct = sorted({t for row in texts for t in row} | set(val_caps) | set(val_caps_sf) | set(val_lists)
                      | set(distractors) | set(val_distractors) | set(val_mixed))
    where = {t: i for i, t in enumerate(distinct)}
    feats, seconds = cached_features(cfg, worlds, distinct, cache_dir)
    data = {
        "img_train": feats["img_train"], "img_val": feats["img_val"], "txt": feats["txt"],
        "text_index": torch.tensor([[where[t] for t in row] for row in texts]),
        "t_scene": t_scene, "t_words": t_words, "scene_train": scene_train, "words_train": words_train,
        "scene_val": scene_val, "words_val": words_val, "val_list_words": val_list_words,
        "val_caption_index": torch.tensor([where[t] for t in val_caps]),
        "val_caption_sf_index": torch.tensor([where[t] for t in val_caps_sf]),
        "val_list_index": torch.tensor([where[t] for t in val_lists]),
        "distractor_index": torch.tensor([where[t] for t in distractors]),
        "val_distractor_index": torch.tensor([where[t] for t in val_distractors]),
        "val_mixed_index": torch.tensor([where[t] for t in val_mixed]),
    }
    facts = {"world": OmegaConf.to_container(w), "world_fingerprint": worlds["train"].fingerprint(),
             "train_images": len(worlds["train"]), "val_images": len(worlds["val"]),
             "distinct_texts": len(distinct), "train_texts_per_image": 1 + cfg.texts.word_lists_per_image,
             "train_scenes": int(scene_train.unique().numel()), "distractor_lists": len(set(distractors)),
             "distractor_pool_words": {"train": len(pool_train), "val": len(pool_val)}}
    return data, facts, seconds


@hydra.main(config_path=CONF_PACKAGE, config_name="train_scorer", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from coxlmm.report.log import trainer_loggers

    if cfg.num_threads:
        torch.set_num_threads(int(cfg.num_threads))
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    cache_dir = cfg.cache_dir or os.path.join(str(cache_dir_default()), "scorer_features")
    data, data_facts, feature_s = build_data(cfg, cache_dir)
    heads = ProjectionHeads(**OmegaConf.to_container(cfg.model))
    module = HeadsModule(heads, data, cfg.optim)
    n_train = data["img_train"].shape[0]
    loader = DataLoader(torch.arange(n_train), batch_size=cfg.optim.batch_size, shuffle=True, drop_last=True)
    val_loader = DataLoader([0], batch_size=1)  # one step that scores the whole val split
    steps_per_epoch = n_train // cfg.optim.batch_size
    trainer = build_trainer(  # the `trainer` group's Trainer, with the recipe's loop
        cfg.trainer, max_steps=cfg.optim.max_steps,
        check_val_every_n_epoch=max(1, cfg.optim.val_every_n_steps // steps_per_epoch),
        logger=trainer_loggers(cfg.logger),
        enable_checkpointing=False, enable_progress_bar=cfg.progress_bar,
        log_every_n_steps=min(cfg.log_every_n_steps, steps_per_epoch), deterministic=True,
    )
    t0 = time.time()
    trainer.fit(module, loader, val_loader)
    fit_s = time.time() - t0
    module.heads.eval()
    scores = module.cpu().evaluate()
    out = cfg.output or DEFAULT_WEIGHTS
    facts = {
        "recipe": "python -m coxlmm.train.scorer (conf/train_scorer.yaml)",
        "data": data_facts, "steps": int(trainer.global_step), "batch_size": cfg.optim.batch_size,
        "fit_seconds": round(fit_s, 1), "frozen_feature_seconds": feature_s,  # 0: read from the cache
        "val_retrieval": {k: round(v, 4) for k, v in scores.items()},
        "logit_scale": round(float(module.heads.logit_scale.detach().exp()), 3),
        "train_config": OmegaConf.to_container(cfg, resolve=True),
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "lightning": L.__version__,
                    "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                    "accelerator": type(trainer.accelerator).__name__},
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    save_heads(module.heads, out, facts)
    print(json.dumps({"weights": out, "steps": facts["steps"], "fit_seconds": facts["fit_seconds"],
                      "frozen_feature_seconds": facts["frozen_feature_seconds"],
                      "val_retrieval": facts["val_retrieval"]}, indent=1))


if __name__ == "__main__":
    main()
