"""`coxlmm-doctor`: check a model on a handful of your images before a long run.

    coxlmm-doctor model=hf model.name_or_path=/path/to/vlm data=folder data.root=/images token=dog

It composes the same config as `coxlmm` (every override of a run works here), loads the model, runs it
on `doctor.n_images` images of the training split (those whose reference captions hold t first) and
prints one row per check:

    generate   the model loads and captions the images with the prompt
    modules    the decoder blocks, the final norm and the output head are found
    capture    the states hooked during generation equal a teacher-forced recomputation (first, middle and
               last block, and the final norm)
    lens       the logit lens at the last block predicts the generated token
    logp       coxlmm's log-probabilities (the norm layer through the head, the cached readout at the last
               block, the causal stage's edited forward) equal the model's own, from the logits it returned
               during generation
    target     t appears in the captions: in how many, how the tokenizer splits it, how it is matched
    image      the image changes the states (each image against a noise image of its size)
    estimate   extraction time and cache size for the configured data, from the time measured here

A failed check says what to change; the exit code is 1 when a check fails (2 when the config or the
model cannot be loaded), 0 otherwise. A warning (an image that barely changes the states) does not fail.
Nothing is written: no run directory, no feature store.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch

from coxlmm.errors import CoxlmmError
from coxlmm.models.base import LogitHead

log = logging.getLogger(__name__)

PASS, FAIL, WARN, INFO, SKIP = "pass", "FAIL", "warn", "info", "skip"
IMAGE_MIN_CHANGE = 1e-3  # relative change of the last block's state below which the image "does not matter"
_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


@dataclass
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""


# --- the checks ------------------------------------------------------------------------------------------
def _tolerance(lmm) -> tuple[float, float]:
    """(relative state tolerance, log-probability tolerance in nats) for the model's dtype."""
    low = lmm.W_U.dtype in (torch.bfloat16, torch.float16)
    return (3e-2, 0.3) if low else (1e-4, 2e-3)


def _generate(lmm, inputs: dict, layers: list[int], max_new_tokens: int):
    """Greedy captions with the last position of every hook point in `layers` and of the model's logits kept
    at each forward call -> (output, {l: [(B, H) per call]}, [(B, vocab) per call])."""
    from coxlmm.models.hooks import capture_last, hooked

    modules = lmm.logits_modules()
    seen: list[list[torch.Tensor]] = [[] for _ in modules]

    def keep_logits(i: int):
        def hook(_module, _args, output):
            z = getattr(output, "logits", None)
            if torch.is_tensor(z):
                seen[i].append(z[:, -1].detach().float())
        return hook

    points = lmm.hook_points()
    with (hooked(*((m, keep_logits(i)) for i, m in enumerate(modules))), torch.inference_mode(),
          capture_last({l: points[l] for l in layers}) as rows):
        out = lmm.generate(inputs, max_new_tokens=max_new_tokens)
    T = out.sequences.shape[1]
    logits = next((s for s in seen if len(s) == T), [])  # the outermost module that ran once per token
    return out, rows, logits


def diagnose(lmm, samples: list, token: str, max_new_tokens: int = 50,
             estimate: dict[str, Any] | None = None) -> list[Check]:
    """Run every check on `samples` (images with reference captions); see the module doc."""
    from coxlmm.extraction.lightning import noise_image
    from coxlmm.extraction.matching import find_target, validate_token
    from coxlmm.models.readout import Readout

    checks: list[Check] = []
    images = [s.image for s in samples]
    L = lmm.num_layers
    layers = sorted({0, L // 2, L - 1, L})  # first, middle, last block and the final norm
    state_tol, lp_tol = _tolerance(lmm)
    dev = lmm.device
    inputs = {k: v.to(dev) if torch.is_tensor(v) else v for k, v in lmm.prepare(images).items()}

    # modules (what was found; whether they are the generating ones is known after generation) -------------
    blocks = lmm.decoder_layers()
    names = Counter(type(b).__name__ for b in blocks)
    head = f"W_U {tuple(lmm.W_U.shape)}" + (f" then {lmm.logit_head}" if lmm.logit_head != LogitHead() else "")
    found = (f"{len(blocks)} decoder blocks ({', '.join(f'{n} × {c}' for c, n in names.items())}); final norm "
             f"{type(lmm.norm_module()).__name__}; head {head}")
    modules = Check("modules", PASS, found)
    if len(blocks) != L:
        modules = Check("modules", FAIL, found, f"the text config says {L} decoder blocks: the resolver found another "
                        "module list; put the path of the language model's decoder stack in coxlmm.models.hf._LM_PATHS")

    # generate ----------------------------------------------------------------------------------------------
    t0 = time.perf_counter()
    try:
        out, rows, model_logits = _generate(lmm, inputs, layers if modules.status == PASS else [], max_new_tokens)
    except Exception as e:  # noqa: BLE001 - any crash here is the answer of this check
        checks.append(Check("generate", FAIL, f"generation failed: {type(e).__name__}: {e}",
                            "check model.prompt / model.raw_prompt and that the processor takes an image and this text"))
        return checks + [modules]
    seconds = time.perf_counter() - t0
    t0 = time.perf_counter()  # again, warm and without hooks: the extraction's time per image
    with torch.inference_mode():
        lmm.generate(inputs, max_new_tokens=max_new_tokens)
    warm = time.perf_counter() - t0
    seqs, lengths = out.sequences.cpu(), out.lengths.cpu()
    tok = lmm.tokenizer
    captions = [tok.decode(seqs[b, : int(lengths[b])].tolist(), skip_special_tokens=True).strip()
                for b in range(len(images))]
    prompt = getattr(lmm, "prompt_text", lmm.prompt)
    detail = (f"{len(images)} images in {seconds:.1f} s (again: {warm:.1f} s); prompt {_short(prompt)}; first caption "
              f"{_short(captions[0])}")
    if not any(captions):
        checks.append(Check("generate", FAIL, detail, "every caption is empty: check the prompt (model.prompt, or "
                            "model.raw_prompt with \\n for a newline) and the checkpoint's chat template"))
    else:
        checks.append(Check("generate", PASS, detail))

    T = seqs.shape[1]
    fired = {l: len(r) for l, r in rows.items()}
    if modules.status == PASS and any(n != T for n in fired.values()):
        modules = Check("modules", FAIL, found + f"; the hooks ran {sorted(set(fired.values()))} times for {T} "
                        "generated tokens", "the hooked blocks are not the ones that generate the caption: put the path "
                        "of the language model's decoder stack in coxlmm.models.hf._LM_PATHS")
    checks.append(modules)
    hooked = None
    if modules.status == PASS:
        hooked = {l: torch.stack(r, dim=1) for l, r in rows.items()}  # (B, T, H)
    else:
        for name in ("capture", "lens", "logp"):
            checks.append(Check(name, SKIP, "needs the decoder blocks that generate the caption"))

    valid = torch.arange(T)[None, :] < lengths[:, None]  # (B, T) generated positions up to EOS
    if hooked is not None:
        # capture ---------------------------------------------------------------------------------------------
        try:
            forced = lmm.teacher_forced_states(inputs, seqs, layers)
            worst = max(_rel_diff(forced[l].float().cpu()[valid], hooked[l].float().cpu()[valid]) for l in layers)
            detail = f"max relative difference {worst:.1e} over {len(layers)} layers (tolerance {state_tol:.0e})"
            checks.append(Check("capture", PASS, detail) if worst <= state_tol else Check(
                "capture", FAIL, detail, "the teacher-forced forward does not see what generation saw: per-token "
                "inputs extended differently (coxlmm.models.hf.extend_for_generated) or hooks on the wrong blocks"))
        except Exception as e:  # noqa: BLE001
            checks.append(Check("capture", FAIL, f"teacher-forced forward failed: {type(e).__name__}: {e}",
                                "the model's forward rejects prompt + generated ids: see extend_for_generated"))

        # lens --------------------------------------------------------------------------------------------------
        last = hooked[L - 1]
        lens_ids = lmm.unembed(last.reshape(-1, last.shape[-1])).argmax(-1).view(last.shape[:2]).cpu()
        share = float((lens_ids == seqs)[valid].float().mean())
        detail = f"lens argmax at the last block = generated token at {share:.0%} of {int(valid.sum())} positions"
        checks.append(Check("lens", PASS, detail) if share >= (0.95 if state_tol > 1e-3 else 0.99) else Check(
            "lens", FAIL, detail, "the last hook point is not the last decoder block, or the final norm or head are not "
            "the model's (coxlmm.models.hf.find_language_model / _final_norm)"))

        # logp --------------------------------------------------------------------------------------------------
        checks.append(_check_logp(lmm, images, seqs, lengths, hooked, model_logits, valid, lp_tol, Readout))

    # target --------------------------------------------------------------------------------------------------
    checks.append(_check_target(tok, token, samples, seqs, lengths, captions, find_target, validate_token))

    # image ---------------------------------------------------------------------------------------------------
    try:
        noise = [noise_image(im.size, 0, i) for i, im in enumerate(images)]
        z_noise = _last_prompt_state(lmm, noise, L - 1)
        z_real = _last_prompt_state(lmm, images, L - 1)
        change = float(torch.median((z_real - z_noise).norm(dim=-1) / z_real.norm(dim=-1).clamp_min(1e-12)))
        detail = (f"the last block's state at the last prompt position moves by {change:.1e} (relative, median) when "
                  f"the image is replaced by noise")
        checks.append(Check("image", PASS, detail) if change >= IMAGE_MIN_CHANGE else Check(
            "image", WARN, detail, "the image barely changes the states, so concepts would come from the text alone: "
            "check that the vision tower's and connector's weights loaded (a checkpoint with missing or zeroed vision "
            "weights loads without error) and that the prompt holds the image token"))
    except Exception as e:  # noqa: BLE001
        checks.append(Check("image", FAIL, f"forward with noise images failed: {type(e).__name__}: {e}",
                            "the processor must accept images of any size"))

    # estimate ------------------------------------------------------------------------------------------------
    if estimate is not None:
        hits = sum(find_target(tok, seqs[b, : int(lengths[b])].tolist(), token) is not None for b in range(len(images)))
        checks.append(_estimate(lmm, warm / max(len(images), 1), hits / max(len(images), 1), len(images), **estimate))
    return checks


def _check_logp(lmm, images, seqs, lengths, hooked, model_logits, valid, tol, Readout, top: int = 10) -> Check:
    """coxlmm's log-probabilities three ways against the model's own (the logits it returned in generation), on
    the generated token and the model's `top` most likely tokens at every generated position."""
    if len(model_logits) < seqs.shape[1]:
        return Check("logp", SKIP, "no module returned logits once per generated token (LMM.logits_modules)")
    own = torch.log_softmax(torch.stack(model_logits[: seqs.shape[1]], dim=1).cpu(), dim=-1)  # (B, T, vocab)
    ids = torch.cat([seqs[..., None], own.topk(top, dim=-1).indices], dim=-1)  # (B, T, 1 + top)
    L, B = lmm.num_layers, len(images)
    readout = Readout.from_lmm(lmm)
    last = hooked[L - 1]
    ways = {"the norm layer through the head": torch.log_softmax(lmm.head(hooked[L]).cpu(), dim=-1),
            "the cached readout at the last block": torch.log_softmax(
                readout.unembed(last.reshape(-1, last.shape[-1]).float(), L - 1).view(*last.shape[:2], -1), dim=-1)}
    diffs = {name: float((lp.gather(-1, ids) - own.gather(-1, ids))[valid].abs().max()) for name, lp in ways.items()}
    # the causal stage's edited forward, with the clean state, at the middle of each caption
    pos = (lengths - 1).clamp_min(0) // 2
    rows = torch.arange(B)
    causal = lmm.target_logprobs(images, [seqs[b, : int(pos[b])].tolist() for b in range(B)], L,
                                 hooked[L][rows, pos.to(hooked[L].device)])  # (B, vocab)
    at = ids[rows, pos]  # (B, 1 + top)
    diffs["the causal stage"] = float((causal.gather(-1, at) - own[rows, pos].gather(-1, at)).abs().max())
    where, worst = max(diffs.items(), key=lambda kv: kv[1])
    detail = (f"max |coxlmm log p − model log p| {worst:.1e} nats (tolerance {tol:.0e}) on the generated and the model's "
              f"top-{top} tokens, through the norm layer, the cached readout and the causal stage; model head {lmm.logit_head}")
    if worst <= tol:
        return Check("logp", PASS, detail)
    return Check("logp", FAIL, detail + f"; worst: {where}",
                 "coxlmm's readout differs from the model's: the block hooked as the last is not the last one "
                 "(coxlmm.models.hf.find_language_model), the final norm is not the model's (_final_norm), or the "
                 "model's forward transforms lm_head's output in a way coxlmm.models.hf.logit_head does not know")


def _check_target(tok, token, samples, seqs, lengths, captions, find_target, validate_token) -> Check:
    from coxlmm.data.base import contains_word

    try:
        token = validate_token(tok, token)
    except CoxlmmError as e:
        return Check("target", FAIL, str(e), "pick a single word the tokenizer can encode")
    pieces = {v: tok.convert_ids_to_tokens(tok.encode(v, add_special_tokens=False)) for v in (" " + token, token)}
    split = "; ".join(f"{v!r} -> {p}" for v, p in pieces.items())
    found = [find_target(tok, seqs[b, : int(lengths[b])].tolist(), token) for b in range(len(samples))]
    hits = [m for m in found if m is not None]
    gt = sum(any(contains_word(c, token) for c in s.captions) for s in samples)
    how = ("matched as a whole word on the generated pieces (case-insensitive; a leading space or ▁ may begin its "
           "first piece)")
    if any(len(m.token_ids) > 1 for m in hits) or any(len(p) > 1 for p in pieces.values()):
        how += "; a word of several pieces is taken at the position that predicts its first piece"
    detail = (f"{token!r} in {len(hits)} of {len(samples)} generated captions, in the references of {gt}; pieces: "
              f"{split}; as generated: {sorted({' '.join(tok.convert_ids_to_tokens(list(m.token_ids))) for m in hits})}"
              f"; {how}")
    if hits:
        return Check("target", PASS, detail)
    words = Counter(w for c in captions for w in re.findall(r"[a-z]+", c.lower()))
    top = ", ".join(f"{w} ({n})" for w, n in words.most_common(10)) or "none"
    return Check("target", FAIL, detail, f"the model never generated {token!r} here: pick a token it generates "
                 f"(most frequent words: {top}) or more images with it (doctor.n_images)")


def _last_prompt_state(lmm, images, layer: int) -> torch.Tensor:
    """(B, H) float32: the state of `layer` at the last prompt position (it predicts the first caption token)."""
    inputs = lmm.prepare(images)
    empty = torch.zeros(len(images), 1, dtype=torch.long)  # one column: [:, 0] is the last prompt position
    return lmm.teacher_forced_states(inputs, empty, [layer])[layer][:, 0].float().cpu()


def _estimate(lmm, s_per_image: float, hit_rate: float, n_seen: int, candidates: dict[str, int],
              batch_size: int, store_layers: int, store_dtype: str, device: str) -> Check:
    """Extraction time and cache size of the configured splits, from the time per image measured here."""
    per_row = store_layers * lmm.hidden_size * _BYTES.get(store_dtype, 4)
    parts, total_s, total_b = [], 0.0, 0.0
    for split, n in candidates.items():
        sel = n * hit_rate if hit_rate > 0 else n
        total_s += n * s_per_image
        total_b += sel * per_row
        parts.append(f"{split}: {n:,} images to caption, ~{sel:,.0f} selected")
    hit = f"{hit_rate:.0%} of the {n_seen} images here said t" if hit_rate > 0 else "no image here said t: an upper bound"
    detail = (f"{'; '.join(parts)} ({hit}); extraction ≈ {_duration(total_s)} at {s_per_image:.2f} s per image "
              f"(measured here at batch {n_seen} on {device}; extraction.batch_size={batch_size} batches more, so "
              f"usually less); cache ≈ {_size(total_b)} ({store_layers} layers × {lmm.hidden_size} × {store_dtype} per "
              f"sample; extraction.layers=requested or store_dtype=bfloat16 shrink it)")
    return Check("estimate", INFO, detail)


# --- report ---------------------------------------------------------------------------------------------------
def report(checks: list[Check]) -> str:
    from tabulate import tabulate

    rows = [(c.name, c.status, c.detail) for c in checks]
    text = tabulate(rows, headers=["check", "result", "detail"], tablefmt="simple", maxcolwidths=[None, None, 90])
    fixes = [f"  {c.name}: {c.fix}" for c in checks if c.fix and c.status in (FAIL, WARN)]
    if fixes:
        text += "\n\nWhat to change:\n" + "\n".join(fixes)
    failed = [c.name for c in checks if c.status == FAIL]
    text += "\n\n" + (f"coxlmm-doctor: FAILED ({', '.join(failed)})" if failed else "coxlmm-doctor: all checks passed"
                      + (" (with warnings)" if any(c.status == WARN for c in checks) else ""))
    return text


def _rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12)) if b.numel() else 0.0


def _short(text: str, n: int = 60) -> str:
    text = repr(text)
    return text if len(text) <= n else text[: n // 2 - 2] + " … " + text[-n // 2 + 2:]


def _duration(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h"


def _size(b: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if b < 1024 or unit == "TB":
            return f"{b:.0f} {unit}" if unit == "B" else f"{b:.1f} {unit}"
        b /= 1024
    return ""


# --- the command ------------------------------------------------------------------------------------------------
def run(cfg) -> list[Check]:
    """The checks for a composed config: the model, `doctor.n_images` training images, the token."""
    from coxlmm.config import build, device_of
    from coxlmm.data.base import contains_word
    from coxlmm.extraction import stored_layers
    from coxlmm.models.spec import ModelSpec

    spec = ModelSpec(cfg.model)
    train = build(cfg.data, split=cfg.train_split)
    n = int(cfg.doctor.n_images)
    with_t = [i for i in range(len(train)) if any(contains_word(c, cfg.token) for c in train.records[i].captions)]
    order = with_t + [i for i in range(len(train)) if i not in set(with_t)] if len(with_t) < n else with_t
    samples = []
    for i in order:
        s = train[i]
        if s.image is not None:
            samples.append(s)
        if len(samples) == n:
            break
    if not samples:
        raise CoxlmmError(f"no readable image in {train.name}: the doctor needs at least one.")
    candidates = {"train": len(with_t) if cfg.extraction.require_gt else len(train)}
    if cfg.test_split:
        test = build(cfg.data, split=cfg.test_split)
        candidates["test"] = len(test.indices_with_word(cfg.token)) if cfg.extraction.require_gt else len(test)
    for split, cap in (("train", cfg.extraction.max_samples_train), ("test", cfg.extraction.max_samples_test)):
        if cap is not None and split in candidates:
            candidates[split] = min(candidates[split], cap)

    t0 = time.perf_counter()
    lmm = spec.get()
    device = device_of(cfg.trainer.accelerator)
    if getattr(lmm, "device_map", None) is None:
        lmm.to(device)
    log.info("model loaded in %.1f s", time.perf_counter() - t0)
    n_store = len(stored_layers(lmm.num_layers, [spec.resolve_layer(l) for l in cfg.layers], cfg.extraction.layers))
    estimate = dict(candidates=candidates, batch_size=cfg.extraction.batch_size, store_layers=n_store,
                    store_dtype=cfg.extraction.store_dtype, device=device)
    with torch.no_grad():
        return diagnose(lmm, samples, cfg.token, cfg.extraction.max_new_tokens, estimate)


def main(argv: list[str] | None = None) -> int:
    """`coxlmm-doctor [overrides]`: the same overrides as `coxlmm`; exit 1 when a check fails."""
    import os

    from hydra import compose, initialize_config_module

    from coxlmm.config import register_configs

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    register_configs()
    try:
        with initialize_config_module(config_module="coxlmm.conf", version_base="1.3"):
            cfg = compose("config", overrides=list(argv))
        checks = run(cfg)
    except CoxlmmError as e:
        print(report([Check("generate", FAIL, f"the model or the data could not be loaded: {e}", "see the message")]))
        return 2
    except Exception as e:  # noqa: BLE001 - a composition error (a mistyped key) or a loader crash, said plainly
        if type(e).__module__.startswith(("hydra", "omegaconf")):
            print(f"coxlmm-doctor: error: the config does not compose ({type(e).__name__}: {e})", file=sys.stderr)
            return 2
        raise
    print(report(checks))
    return 1 if any(c.status == FAIL for c in checks) else 0


if __name__ == "__main__":
    sys.exit(main())
