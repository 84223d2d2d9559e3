"""`HFVisionLM`: any Hugging Face image-text-to-text model behind the `LMM` adapter protocol.

Loading: `AutoProcessor` + `AutoModelForImageTextToText` (or the class named by `model_class`)
from a hub id or a local directory written by `save_pretrained`; eval mode, frozen.

Prompt: one user turn holding one image and the instruction, rendered by the processor's own chat
template with the generation prompt; the exact rendered text is part of `fingerprint()`. Batches
are left-padded so every row's last prompt position is the last column.

Generation: pure greedy (`do_sample=False`, one beam). The checkpoint's generation config is
replaced at load time by one that keeps only its special-token ids: hub configs carry sampling
and repetition-penalty settings, and a repetition penalty would make the generated token differ
from the argmax of the logits, breaking the logit lens at the extracted position.

Decoder-only models only: coxlmm reads the residual stream of the language model that generates the
caption, at the generated positions. An encoder-decoder (Florence-2, T5Gemma 2, Pix2Struct...)
generates with a decoder that cross-attends to an encoder's states; it is refused at once, saying so.

Decoder layers are found by one resolver (`find_language_model`): start from the model's
`get_decoder()` (transformers 5 returns the text decoder for VLM wrappers), then the usual
attributes (`model.language_model`, `model.model.language_model`, `model.text_model`, ...), and take
the first candidate with a `layers` ModuleList, looking one or two levels deeper (`.model`,
`.decoder`, `.model.decoder`: CausalLM wrappers, BLIP-2's OPT). Its final norm is the first of
`norm`, `final_layer_norm`, `final_layernorm`, `ln_f`. The output head is `get_output_embeddings()`
followed by the transforms the model's forward applies to its output, read from the text config
(`logit_head`: `logit_scale`, `logits_scaling`, `final_logit_softcapping`), kept only if one short
forward at load confirms it (`_measure_logit_head`); `coxlmm-doctor` checks on the user's images that
coxlmm's log-probabilities equal the model's own.

Per-token inputs (attention mask, token types, Mllama's cross-attention mask) are extended over the
generated tokens by the model's own generation rule (`_update_model_kwargs_for_generation`), so the
teacher-forced forward sees what `generate` saw: PaliGemma's generated tokens join the causal suffix
(token type 1), Mllama's attend to the image as the last prompt token does.

Tested on tiny random checkpoints of 17 architectures (tests/fixtures/tiny_archs.py; the README lists
them and the ones that do not build here) with transformers 5.25.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import re
from pathlib import Path
from typing import Any

import torch
import transformers
from PIL import Image
from torch import nn
from transformers import GenerationConfig

from coxlmm.errors import CoxlmmError
from coxlmm.models import hooks
from coxlmm.models.base import LMM, GenerationOutput, LogitHead, fit_logit_head
from coxlmm.models.fingerprint import small_files_sha256, weights_fingerprint

log = logging.getLogger(__name__)
DEFAULT_PROMPT = "Provide a one-sentence caption for the provided image."
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}
_LM_PATHS = ("language_model", "model.language_model", "model.text_model", "text_model", "model.model",
             "model", "language_model.model")
_NORM_NAMES = ("norm", "final_layer_norm", "final_layernorm", "ln_f")


class HFVisionLM(LMM):
    """A captioning VLM from the Hugging Face hub or a local directory.

    Args:
        name_or_path: hub id (e.g. "llava-hf/llava-1.5-7b-hf") or a local `save_pretrained` directory.
        model_class: None for `AutoModelForImageTextToText`, else a class name in `transformers`
            ("LlavaForConditionalGeneration") or a dotted path ("transformers.LlavaForConditionalGeneration").
        dtype: float32 | bfloat16 | float16 | auto (the checkpoint's dtype). `torch_dtype` is an alias.
        prompt: the user instruction put after the image in the chat template.
        raw_prompt: the exact prompt text instead of the chat template, for models without one (e.g.
            PaliGemma, whose processor adds its image tokens and BOS itself: "caption en"). `prompt`
            is then ignored. Write the model's image token in it where its processor needs one
            ("USER: <image>\nDescribe. ASSISTANT:" for LLaVA-1.5).
        device: where to put the model after loading ("cpu", "cuda", "cuda:1", "auto"); None leaves it
            on the CPU for the caller (e.g. Lightning) to move.
        device_map: passed to `from_pretrained` to shard a large model (then `device` is ignored).
        processor_kwargs: passed to `AutoProcessor.from_pretrained`, e.g. {"max_pixels": 401408} to cap
            Qwen2-VL's image tokens.
    """

    def __init__(
        self,
        name_or_path: str,
        model_class: str | None = None,
        dtype: str = "auto",
        prompt: str = DEFAULT_PROMPT,
        raw_prompt: str | None = None,
        device: str | None = None,
        device_map: str | dict | None = None,
        processor_kwargs: dict[str, Any] | None = None,
        torch_dtype: str | None = None,
    ):
        super().__init__()
        dtype = torch_dtype or dtype
        if dtype not in DTYPES:
            raise CoxlmmError(f"model dtype {dtype!r} is not supported: use one of {', '.join(DTYPES)}.")
        source = _resolve_source(name_or_path)
        self.model_id = source
        prompt, raw_prompt = unescape(prompt), unescape(raw_prompt)
        self.prompt = prompt
        self.device_map = device_map  # a sharded model stays where accelerate put it (the stages never move it)

        config = _load_config(source, name_or_path)
        check_decoder_only(config, name_or_path)
        try:
            self.processor = load_processor(source, config, **dict(processor_kwargs or {}))
        except (OSError, ValueError, TypeError) as e:
            raise CoxlmmError(
                f"cannot load the processor of {name_or_path!r} ({_first_line(e)}): the model needs its processor "
                f"files (tokenizer, image processor, chat template) beside config.json.") from None
        self.tokenizer = self.processor.tokenizer
        self.tokenizer.padding_side = "left"  # last column = last prompt token for every row
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

        cls = _model_class(model_class)
        kwargs: dict[str, Any] = {"dtype": DTYPES[dtype]}
        if device_map is not None:
            kwargs["device_map"] = device_map
        try:
            self.model = cls.from_pretrained(source, **kwargs)
        except (OSError, ValueError) as e:
            raise CoxlmmError(f"cannot load the weights of {name_or_path!r} as {cls.__name__} ({_first_line(e)}): "
                              f"check that the checkpoint is complete and that model_class fits its config.") from None
        self.model.eval().requires_grad_(False)
        if device is not None and device_map is None:
            self.model.to(_device(device))

        self.eos_ids, self.pad_id = _special_ids(self.model, self.tokenizer)
        self.model.generation_config = GenerationConfig(
            bos_token_id=self.model.generation_config.bos_token_id, eos_token_id=self.eos_ids,
            pad_token_id=self.pad_id)

        text_config = self.model.config.get_text_config(decoder=True)
        self.num_layers = int(text_config.num_hidden_layers)
        self.hidden_size = int(text_config.hidden_size)
        self._lm = find_language_model(self.model)
        if len(self._lm.layers) != self.num_layers:
            raise CoxlmmError(f"{source}: found {len(self._lm.layers)} decoder blocks but the text config says "
                              f"{self.num_layers}; the layer resolver picked the wrong module.")
        self._norm = _final_norm(self._lm, source)
        if self.W_U.shape[1] != self.hidden_size:  # e.g. OPT-350m's project_out between the final norm and the head
            raise CoxlmmError(f"{source}: its LM head reads vectors of size {self.W_U.shape[1]} but the residual stream "
                              f"has {self.hidden_size}: a projection between the final norm and the head, which the "
                              "logit lens does not model. Use a model whose head reads the residual stream.")

        self.prompt_text: str = raw_prompt if raw_prompt is not None else self._chat_prompt(prompt, source)
        # Like the processor's own tokenize=True path: a template that writes BOS gets no second one.
        bos = self.tokenizer.bos_token
        self._add_special_tokens = not (bos is not None and self.prompt_text.startswith(bos))
        self.logit_head = self._measure_logit_head(logit_head(text_config))

    @torch.no_grad()
    def _measure_logit_head(self, declared: LogitHead) -> LogitHead:
        """What this model's forward does to lm_head's output, measured on one short forward (text only, or
        one blank image where the model needs an image): z = W_U · (the final norm's output) against the
        logits the forward returns (`base.fit_logit_head`). The config's constants (`declared`) are tried
        first: a class may ignore one (transformers 5.25's Gemma3ForConditionalGeneration does not cap its
        logits although its config names a cap). A head that nothing reproduces is reported, and
        coxlmm-doctor's logp check fails on it."""
        with hooks.capture({"norm": self._norm}) as kept:
            try:
                ids = self.tokenizer("A photo of", return_tensors="pt").input_ids.to(self.device)
                y = self.model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits[:, -1]
            except Exception:  # noqa: BLE001 - a model that needs its image (BLIP-2): one blank image
                inputs = self._to_model(self.prepare([Image.new("RGB", (32, 32), (128, 128, 128))]))
                y = self.model(**inputs, use_cache=False).logits[:, -1]
        W = self.W_U
        z = kept["norm"][:, -1].to(W.device, torch.float32) @ W.float().T
        rtol = 1e-4 if W.dtype == torch.float32 else 3e-2
        head = fit_logit_head(z, y.to(W.device), declared, rtol)
        if head is None:
            log.warning("%s: the logits its forward returns are not W_U · final_norm(h) under any known transform "
                        "(%s, identity, a scale): coxlmm's log-probabilities will differ from the model's; run "
                        "coxlmm-doctor", self.model_id, declared)
            return declared
        return head

    @staticmethod
    def describe(name_or_path: str, model_class: str | None = None, dtype: str = "auto", prompt: str = DEFAULT_PROMPT,
                 raw_prompt: str | None = None, processor_kwargs: dict[str, Any] | None = None,
                 torch_dtype: str | None = None, **_: Any) -> dict[str, Any]:
        """What identifies this model's features, read without loading its weights (the feature-store key
        of a job whose features are cached): the resolved source, the settings that change the features,
        the checkpoint's revision, a hash of its small files (config, tokenizer, chat template, processor
        config) and a fingerprint of its weight files (sizes, safetensors headers and a fixed sample of
        bytes of every tensor: `models/fingerprint.py`), so new weights saved at the same path re-extract.
        Also its number of decoder blocks, from config.json."""
        dtype = torch_dtype or dtype
        if dtype not in DTYPES:
            raise CoxlmmError(f"model dtype {dtype!r} is not supported: use one of {', '.join(DTYPES)}.")
        source = _resolve_source(name_or_path)
        config = _load_config(source, name_or_path)
        check_decoder_only(config, name_or_path)
        prompt, raw_prompt = unescape(prompt), unescape(raw_prompt)
        key = {"class": "HFVisionLM", "source": source, "model_class": model_class, "dtype": dtype,
               "prompt": prompt if raw_prompt is None else None, "raw_prompt": raw_prompt,
               "processor_kwargs": dict(processor_kwargs or {}), "revision": getattr(config, "_commit_hash", None),
               "files": small_files_sha256(source), "weights": weights_fingerprint(source),
               "transformers": transformers.__version__}
        n = int(config.get_text_config(decoder=True).num_hidden_layers)
        return {"key": key, "num_layers": n, "model_id": source}

    def _chat_prompt(self, prompt: str, source: str) -> str:
        """One user turn (image, then `prompt`) through the processor's chat template + generation prompt."""
        import jinja2

        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        try:
            return self.processor.apply_chat_template(messages, add_generation_prompt=True)
        except (ValueError, TypeError, KeyError, jinja2.TemplateError) as e:
            # No chat template (PaliGemma, BLIP-2), or a text-only one that cannot take an image turn (a
            # TypeError inside jinja): the prompt format would be a guess.
            raise CoxlmmError(
                f"{source}: its processor cannot render an image turn with a chat template ({type(e).__name__}: "
                f"{_first_line(e)}); give the exact prompt text with model.raw_prompt, e.g. model.raw_prompt='caption "
                "en' for PaliGemma, or 'USER: <image>\\nDescribe the image. ASSISTANT:' for LLaVA-1.5 (\\n is read as "
                "a newline).") from None

    def train(self, mode: bool = True) -> HFVisionLM:
        """Always eval: the model is a frozen feature extractor (dropout would change the states)."""
        return super().train(False)

    # --- inputs -------------------------------------------------------------------------------
    def prepare(self, images: list[Image.Image]) -> dict[str, torch.Tensor]:
        """(B images) -> input_ids/attention_mask (B, P) left-padded, plus the processor's image tensors."""
        batch = self.processor(
            images=[[im.convert("RGB")] for im in images], text=[self.prompt_text] * len(images),
            padding=True, padding_side="left", return_tensors="pt", add_special_tokens=self._add_special_tokens)
        batch.pop("labels", None)  # PaliGemma's processor adds training labels: inputs, not targets, go to the model
        return dict(batch)

    def _to_model(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        dev, dt = self.device, self.model.dtype
        return {k: v.to(dev, dt) if v.is_floating_point() else v.to(dev) for k, v in inputs.items()}

    # --- generation -----------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, inputs: dict[str, torch.Tensor], max_new_tokens: int) -> GenerationOutput:
        """Greedy captions: sequences (B, T) new ids only, pad after EOS; lengths (B,) incl. EOS."""
        inputs = self._to_model(inputs)
        config = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=max_new_tokens)
        out = self.model.generate(**inputs, generation_config=config)
        new = out[:, inputs["input_ids"].shape[1]:]
        return GenerationOutput(*_cut_at_eos(new, self.eos_ids, self.pad_id))

    def decoder_layers(self) -> nn.ModuleList:
        return self._lm.layers

    def logits_modules(self) -> list[nn.Module]:
        """The model and every sub-model that owns its LM head (BLIP-2 generates through its OPTForCausalLM)."""
        from transformers import PreTrainedModel

        head = self.model.get_output_embeddings()
        return [m for m in self.model.modules()
                if isinstance(m, PreTrainedModel) and m.get_output_embeddings() is head]

    def forward_sequence(self, inputs: dict[str, torch.Tensor], generated: torch.Tensor) -> None:
        """The whole model over prompt + generated ids; the per-token inputs are extended as `generate` extends
        them (`extend_for_generated`)."""
        inputs = self._to_model(inputs)
        generated = generated.to(self.device)
        inputs = extend_for_generated(self.model, inputs, generated.shape[1])
        inputs["input_ids"] = torch.cat([inputs["input_ids"], generated], dim=1)
        if "logits_to_keep" in inspect.signature(self.model.forward).parameters:
            inputs["logits_to_keep"] = 1  # only states are needed; skip the (P+T, vocab) logits
        self.model(**inputs, use_cache=False)

    @torch.no_grad()
    def text_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The language model on text alone (no image, no prompt): its decoder (final norm included) and the
        model's own head, (R, T, vocab). The decoder is called directly: some wrappers (BLIP-2) refuse a
        forward without pixels."""
        ids = input_ids.to(self.device)
        h = self._lm(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).last_hidden_state
        return self.head(h)

    # --- logit lens -----------------------------------------------------------------------------
    def norm_module(self) -> nn.Module:
        return self._norm

    @property
    def W_U(self) -> torch.Tensor:
        return self.model.get_output_embeddings().weight

    # --- identity -------------------------------------------------------------------------------
    def fingerprint(self) -> dict[str, Any]:
        return {
            **super().fingerprint(),
            "prompt_text": self.prompt_text,
            "model_class": type(self.model).__name__,
            "dtype": str(self.model.dtype).removeprefix("torch."),
            "revision": getattr(self.model.config, "_commit_hash", None),
            "weights": weights_fingerprint(self.model_id),
            "transformers": transformers.__version__,
        }

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device


# --- loading helpers ----------------------------------------------------------------------------
def _resolve_source(name_or_path: str) -> str:
    """A local directory (absolute, so the feature-store key does not depend on the cwd) or a hub id."""
    p = Path(os.path.expanduser(str(name_or_path)))
    if p.is_dir():
        return str(p.resolve())
    return str(name_or_path)


def _load_config(source: str, given: str):
    try:
        return transformers.AutoConfig.from_pretrained(source)
    except Exception as e:  # OSError, ValueError, HTTP errors...: all mean "cannot load this model"
        reason = _first_line(e)
        accepted = ("model.name_or_path accepts a directory written by save_pretrained (config.json, weights and "
                    "processor files) or a hub id such as llava-hf/llava-1.5-7b-hf that is cached locally or "
                    "downloadable.")
        if Path(source).is_dir():
            raise CoxlmmError(f"cannot load model {given!r}: the directory holds no loadable Hugging Face model "
                              f"({reason}). {accepted}") from None
        if not _looks_like_hub_id(given):
            raise CoxlmmError(f"cannot load model {given!r}: no such directory. {accepted}") from None
        offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "", "false", "no", "off")
        hub = ("the hub is switched off (HF_HUB_OFFLINE=1)" if offline
               else "the hub could not be reached or has no such repository")
        raise CoxlmmError(
            f"cannot load model {given!r}: it is not an existing local directory, and as a Hugging Face hub id "
            f"it is not in the local cache and {hub} ({reason}). {accepted}"
        ) from None


def unescape(text: str | None) -> str | None:
    """A prompt typed in an override: `\\n` and `\\t` (a backslash and a letter, as the shell and Hydra pass them)
    -> a newline and a tab; `\\\\` -> one backslash. A model's prompt never means a literal backslash-n."""
    if text is None:
        return None
    return re.sub(r"\\(\\|n|t)", lambda m: {"\\": "\\", "n": "\n", "t": "\t"}[m.group(1)], str(text))


def check_decoder_only(config, given: str) -> None:
    """coxlmm reads the generating LM's residual stream at the generated positions: decoder-only models only."""
    text = config.get_text_config(decoder=True)
    if getattr(config, "is_encoder_decoder", False) or getattr(text, "is_encoder_decoder", False):
        raise CoxlmmError(
            f"model {given!r} ({type(config).__name__}) is an encoder-decoder: its caption is generated by a decoder "
            "that cross-attends to an encoder's states, and coxlmm reads the residual stream of a decoder-only "
            "language model that reads the image tokens in its own sequence (LLaVA, Qwen2-VL, Gemma 3, Idefics, "
            "PaliGemma, ...). Use a decoder-only image-text-to-text model.")


def logit_head(text_config) -> LogitHead:
    """What the model's forward is declared to do to lm_head's output, from its text config (transformers 5):
    `logit_scale` multiplies (Cohere, Aya Vision, Cohere2-Vision); `logits_scaling` divides (Granite and the
    Granite-based VLMs; HyperCLOVA X multiplies); `final_logit_softcapping` caps (Gemma 2, Gemma 3). Checked
    against the model's own logits at load (`HFVisionLM._measure_logit_head`)."""
    scale = 1.0
    if getattr(text_config, "logit_scale", None):
        scale *= float(text_config.logit_scale)
    if getattr(text_config, "logits_scaling", None):
        s = float(text_config.logits_scaling)
        scale = scale * s if str(getattr(text_config, "model_type", "")).startswith("hyperclovax") else scale / s
    softcap = getattr(text_config, "final_logit_softcapping", None)
    return LogitHead(scale=scale, softcap=float(softcap) if softcap else None)


def extend_for_generated(model: nn.Module, inputs: dict[str, torch.Tensor], T: int) -> dict[str, torch.Tensor]:
    """The prompt's per-token inputs (B, P, ...) extended over T generated tokens as `generate` extends them:
    the model's own `_update_model_kwargs_for_generation`, one token at a time (attention mask: ones;
    Qwen's mm_token_type_ids: 0; PaliGemma's token_type_ids: 1, the causal suffix; Gemma 3's: the last
    prompt token's, text; Mllama's cross_attention_mask: its last row repeated). `input_ids` is left as is."""
    kwargs = {k: v for k, v in inputs.items() if k != "input_ids"}
    for _ in range(T):
        kwargs = model._update_model_kwargs_for_generation({}, kwargs, is_encoder_decoder=False)
    return {**kwargs, "input_ids": inputs["input_ids"]}


def _looks_like_hub_id(name: str) -> bool:
    """A hub id ("org/name" or "name": letters, digits, - _ .), not a path such as /data/llava or ./llava."""
    return re.fullmatch(r"[A-Za-z0-9_-][\w.-]*(/[\w.-]+)?", str(name)) is not None


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _model_class(name: str | None):
    """None -> AutoModelForImageTextToText; "LlavaForConditionalGeneration" or a dotted path -> that class."""
    if name is None:
        return transformers.AutoModelForImageTextToText
    module_name, _, attr = str(name).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), attr) if module_name else getattr(transformers, attr)
    except (ImportError, AttributeError):
        cls = None
    if not (isinstance(cls, type) and hasattr(cls, "from_pretrained")):
        raise CoxlmmError(f"model_class {name!r} is not a model class: use null for AutoModelForImageTextToText, a "
                          f"class name in transformers (LlavaForConditionalGeneration) or a dotted path to one.")
    return cls


def _device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_processor(source: str, config=None, **kwargs):
    """`AutoProcessor.from_pretrained`, or the same processor class without its video part.

    Why: in transformers 5 a processor that declares a video sub-processor (Qwen2-VL, Qwen2.5-VL...)
    cannot be built without torchvision (the class check of `VideoProcessorMixin` fails), nor from a
    checkpoint that ships no video processor config, even to process images only.
    """
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING

    cls = PROCESSOR_MAPPING[type(config)] if config is not None and type(config) in PROCESSOR_MAPPING else None
    has_video = cls is not None and "video_processor" in cls.get_attributes()
    if has_video and not transformers.utils.is_torchvision_available():
        return image_only_processor_class(cls).from_pretrained(source, **kwargs)
    try:
        return transformers.AutoProcessor.from_pretrained(source, **kwargs)
    except (OSError, ValueError, TypeError):
        if not has_video:
            raise
        return image_only_processor_class(cls).from_pretrained(source, **kwargs)


def image_only_processor_class(processor_cls: type) -> type:
    """A subclass of `processor_cls` without its video sub-processor (same name, so it saves the same)."""

    class ImageOnly(processor_cls):
        # No __init__ override: transformers reads the accepted arguments off the parent's __init__.
        video_processor = None

        @classmethod
        def get_attributes(cls) -> list[str]:
            return [a for a in processor_cls.get_attributes() if a != "video_processor"]

    ImageOnly.__name__ = ImageOnly.__qualname__ = processor_cls.__name__
    return ImageOnly


# --- architecture helpers ---------------------------------------------------------------------------
def _get_path(obj: Any, dotted: str) -> Any:
    for name in dotted.split("."):
        obj = getattr(obj, name, None)
        if obj is None:
            return None
    return obj


def find_language_model(model: nn.Module) -> nn.Module:
    """The text decoder stack of a VLM: the module whose `layers` ModuleList are the decoder blocks."""
    try:
        candidates = [model.get_decoder()]
    except Exception:  # absent, or raising for architectures transformers has no rule for
        candidates = []
    candidates += [_get_path(model, p) for p in _LM_PATHS]
    for m in candidates:
        for stack in (m, _get_path(m, "model"), _get_path(m, "decoder"), _get_path(m, "model.decoder")):
            if isinstance(getattr(stack, "layers", None), nn.ModuleList) and len(stack.layers) > 0:
                return stack
    looked = [type(model).__name__] + sorted({type(s).__name__ for m in candidates if m is not None and m is not model
                                              for s in (m, _get_path(m, "model"), _get_path(m, "decoder"),
                                                        _get_path(m, "model.decoder")) if s is not None})
    raise CoxlmmError(
        f"cannot find the language model's decoder blocks in {type(model).__name__}: looked for a `layers` "
        f"ModuleList on get_decoder() and on {', '.join(_LM_PATHS)} (and their .model, .decoder, .model.decoder), "
        f"i.e. on the modules {', '.join(looked)}. To add a rule, put the attribute path of the "
        "module that holds the decoder blocks in coxlmm.models.hf._LM_PATHS (its blocks must be a `layers` "
        "ModuleList; coxlmm-doctor then checks the hooks)."
    )


def _final_norm(lm: nn.Module, source: str) -> nn.Module:
    for name in _NORM_NAMES:
        norm = getattr(lm, name, None)
        if isinstance(norm, nn.Module):
            return norm
    raise CoxlmmError(f"{source}: the language model {type(lm).__name__} has none of the final-norm modules "
                      f"{', '.join(_NORM_NAMES)}; the logit lens needs one (add its name to _NORM_NAMES).")


def _special_ids(model: nn.Module, tokenizer) -> tuple[list[int], int]:
    """All EOS ids (generation config and tokenizer, in that order) and the pad id."""
    eos: list[int] = []
    for ids in (model.generation_config.eos_token_id, tokenizer.eos_token_id):
        for i in ids if isinstance(ids, (list, tuple)) else [ids]:
            if i is not None and int(i) not in eos:
                eos.append(int(i))
    pad = model.generation_config.pad_token_id
    if pad is None:
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    return eos, int(pad)


def _cut_at_eos(new: torch.Tensor, eos_ids: list[int], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) generated ids -> same ids with pad after the first EOS, and lengths (B,) incl. that EOS."""
    is_eos = torch.isin(new, torch.tensor(eos_ids, device=new.device))
    T = new.shape[1]
    first = torch.where(is_eos.any(1), is_eos.float().argmax(1), torch.full_like(is_eos[:, 0], T, dtype=torch.long))
    lengths = torch.clamp(first + 1, max=T)
    after = torch.arange(T, device=new.device)[None, :] >= lengths[:, None]
    return new.masked_fill(after, pad_id), lengths
