"""`metrics=causal`: does the model use the concepts? Faithfulness, ablation and steering, against controls.

At the run's layer L (run it at a layer the logit lens cannot read as well as at the last block:
`experiment=causal` does both), on the first `n_samples` test samples:

**Faithfulness.** Whole-caption cross-entropy of each sample's own greedy caption with the state at
every position that predicts a caption token replaced by the dictionary's reconstruction, against the
same splice with zero and with the train mean (SAEBench's loss recovered):
`ce_recovered_zero = (CE_zero − CE_recon) / (CE_zero − CE_clean)`, likewise `_mean`, with bootstrap CIs
over the samples. At the target position: KL(p_clean ‖ p_recon) of the next token and Δ log p(t). (The
single-position ratio of v2, `prediction_recovered`, is gone: the mean of the states that predict t
predicts t as well as they do, so its denominator had no range.)

**Ablation** at the target position: each sample's top-1 concept removed, z − c_k(z), against removing
the same norm along an isotropic direction, another concept of the same dictionary and a
covariance-shaped direction (plan.py): Δ log p(t) of each, and the paired difference concept − control.

**Steering**: for each concept matched on the *training* split to a factor value (Hungarian on the
training AUROCs, as recovery), α · n along its unit direction at every generated position (n: the
sample's ‖z‖, `step_unit`), greedy captions. Success: the share of (test sample, concept) pairs whose
target lacked the value and whose steered caption names the target with it, parsed by the dataset
(the world's parser; never the concept's own lens words), with a bootstrap CI clustered by sample.
The same for each control at the same α and n (plan.py), their paired differences, and beside them:
fluency (mean log-probability per token under the text-only LM: no image, so a correct change is not
penalised), the share of captions that still name the target (they parse), and the unsteered caption.

Scores are described (schema) into two tables, `causal_faithfulness` and `causal_steering`, one row
per (method, token, layer[, α]); each method against its own controls, never pooled.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch

from coxlmm.causal import plan as P
from coxlmm.causal import scores as S
from coxlmm.causal.stages import CaptionCE, Steering, TargetEdits
from coxlmm.errors import CoxlmmError
from coxlmm.metrics.base import EvalInput, Metric, MetricResult
from coxlmm.metrics.schema import ConceptColumn, Schema, Score, TableSpec

log = logging.getLogger(__name__)

CONTROL_NAMES = {"isotropic": "isotropic", "concept_other": "other concept", "covariance": "covariance",
                 "diffmean": "DiffMean"}
ABLATION_CONTROLS = ("isotropic", "concept_other", "covariance")
FAITHFULNESS = TableSpec("causal_faithfulness", "Causal faithfulness: the reconstruction spliced into the model, and "
                         "the top-1 concept ablated at the target position",
                         "CE recovered: (CE_base − CE_recon) / (CE_base − CE_clean) of each test sample's own caption "
                         "with the state at every generated position replaced (base: zero or the train mean); "
                         "[bootstrap 95 % CI over samples]. KL and Δlog p(t) at the position that predicts t. "
                         "Ablation: the sample's top-1 concept removed vs the same norm removed along each control.",
                         by_layer=True, order=70)
STEERING = TableSpec("causal_steering", "Steering with the concepts against controls (steps in units of ‖z‖)",
                     "Success: share of (test sample, concept) pairs whose target lacked the concept's matched value "
                     "(matched on train) and whose steered caption names the target with it, parsed from the caption; "
                     "[bootstrap 95 % CI clustered by sample]. Controls at the same step: isotropic, another concept "
                     "of the same dictionary, a covariance-shaped direction, the value's DiffMean. Δ: concept minus "
                     "control, paired. Fluency: mean log-probability per token under the text-only LM. Names t: share "
                     "of steered captions that still name the target.", by_layer=True, order=75)


def _check(name: str, ok: bool, value: Any, want: str) -> None:
    if not ok:
        raise CoxlmmError(f"causal: {name}={value!r} is invalid: {want}.")


class Causal(Metric):
    """Faithfulness, ablation and steering against matched controls (module doc).

    Args:
        steps: α, the steering steps as fractions of the step unit (e.g. [0.05, 0.1, 0.2]).
        step_unit: "sample" (the sample's ‖z‖ at the target position), "median" (the median training ‖z‖),
            or "code" (α · s_k, s_k the `percentile` of concept k's training codes: the method's own units).
        controls: steering controls among isotropic, concept_other, covariance, diffmean.
        n_samples: test samples intervened on (the first ones).
        steer: "matched" (concepts matched to a factor value), "all", or "none".
        steer_factors: the factors whose matched concepts are steered (None: every factor).
        positions: "generated" (every position that predicts a generated token) or "all".
        caption_ce: run the whole-caption splice (faithfulness).
        ablation: run the target-position edits.
        max_new_tokens: length cap of the steered captions.
        rows_per_forward: edited rows per model forward.
        percentile: s_k of the "code" step unit.
        n_show: concepts in the steering figure.
    """

    name = "causal"

    def __init__(self, steps=(0.05, 0.1, 0.2), step_unit: str = "sample", controls=P.CONTROLS, n_samples: int = 64,
                 steer: str = "matched", steer_factors=None, positions: str = "generated", caption_ce: bool = True,
                 ablation: bool = True, max_new_tokens: int = 32, rows_per_forward: int = 32, percentile: float = 95.0,
                 n_show: int = 4, seed: int | None = None):
        steps = list(steps) if steps is not None else []
        bad = [a for a in steps if isinstance(a, bool) or not isinstance(a, (int, float)) or not math.isfinite(a) or a <= 0]
        _check("steps", bool(steps) and not bad, steps, "give positive fractions of the step unit, e.g. [0.05, 0.1, 0.2] "
               f"(not positive numbers: {bad}; the unsteered caption is always included)")
        controls = list(controls) if controls is not None else []
        unknown = [c for c in controls if c not in P.CONTROLS]
        _check("controls", not unknown, controls, f"unknown {unknown}; accepted: {', '.join(P.CONTROLS)}")
        _check("step_unit", step_unit in P.STEP_UNITS, step_unit, f"use one of {', '.join(P.STEP_UNITS)}")
        _check("steer", steer in ("matched", "all", "none"), steer, "use matched, all or none")
        _check("positions", positions in ("generated", "all"), positions, "use generated or all")
        for key, value in (("n_samples", n_samples), ("max_new_tokens", max_new_tokens),
                           ("rows_per_forward", rows_per_forward)):
            _check(key, isinstance(value, int) and not isinstance(value, bool) and value > 0, value, "a positive integer")
        _check("percentile", 0 < percentile <= 100, percentile, "a number in (0, 100]")
        self.steps, self.step_unit, self.controls = sorted({float(a) for a in steps}), step_unit, controls
        self.n_samples, self.steer, self.positions = n_samples, steer, positions
        self.steer_factors = list(steer_factors) if steer_factors else None
        self.caption_ce, self.ablation, self.max_new_tokens = caption_ce, ablation, max_new_tokens
        self.rows_per_forward, self.percentile, self.n_show, self.seed = rows_per_forward, percentile, n_show, seed

    # --- the plan (tensors only) ---
    def plan(self, inp: EvalInput) -> tuple:
        test = inp.test
        if test is None or not len(test):
            log.warning("causal skipped: no test features")
            return ()
        seed = inp.seed if self.seed is None else self.seed
        rows = list(range(min(self.n_samples, len(test))))
        indices = [test.indices[r] for r in rows]
        z, V = test.Z[rows].float(), test.V[rows].float()
        d = inp.dictionary
        requests: list = []
        if self.ablation:
            t_ids = [int(test.records[r]["token_ids"][0]) for r in rows]
            requests.append(TargetEdits(P.target_plan(z, V, d, inp.train.Z, indices, t_ids, seed), self.rows_per_forward))
        if self.caption_ce:
            fingerprint = {"name": d.name, "K": d.n_concepts, "class": type(d).__name__}
            requests.append(CaptionCE(P.CaptionPlan(indices, d, inp.train.Z.float().mean(0), fingerprint=fingerprint)))
        if self.steer != "none":
            steered = self.steered(inp)
            if steered:
                code = torch.quantile(inp.train.V.float().clamp_min(0), self.percentile / 100, dim=0) \
                    if self.step_unit == "code" else None
                scale = P.step_scale(self.step_unit, z, inp.train.Z)
                diffmean = self.diffmean(inp, steered) if "diffmean" in self.controls else {}
                requests.append(Steering(P.steer_plan(d.U, steered, self.steps, self.controls, inp.train.Z, diffmean,
                                                      scale, indices, self.max_new_tokens, self.positions, seed, code),
                                         self.rows_per_forward))
        return tuple(requests)

    def steered(self, inp: EvalInput) -> dict[int, tuple[str, str] | None]:
        """concept -> the factor value it was matched to on the training split (Hungarian on the training
        AUROCs, restricted to `steer_factors`); every concept (value None) with steer="all" or no factors."""
        K = inp.dictionary.n_concepts
        if self.steer == "all" or not inp.factors:
            return {k: None for k in range(K)}
        from coxlmm.metrics.recovery import auroc_matrix, match_concepts, target_labels

        factors = {f: v for f, v in inp.factors.items() if self.steer_factors is None or f in self.steer_factors}
        names, Y = target_labels(inp.train.annotations, factors, inp.test.annotations)
        if not names:
            return {}
        match = match_concepts(auroc_matrix(inp.train.V.float().numpy(), Y))
        return {k: names[j] for j, k in sorted(enumerate(match), key=lambda jk: -1 if jk[1] is None else jk[1])
                if k is not None}

    @staticmethod
    def diffmean(inp: EvalInput, steered: dict[int, tuple[str, str] | None]) -> dict[int, torch.Tensor]:
        from coxlmm.concepts.diffmean import diff_mean

        targets = [a.get("target") or {} for a in inp.train.annotations]
        out = {}
        for k, value in steered.items():
            if value is None:
                continue
            y = torch.tensor([t.get(value[0]) == value[1] for t in targets])
            if 0 < int(y.sum()) < len(y):
                out[k] = diff_mean(inp.train.Z, y[:, None])[0]
        return out

    # --- the scores (results only) ---
    def __call__(self, inp: EvalInput) -> MetricResult:
        if not inp.sources:
            return MetricResult()
        seed = inp.seed if self.seed is None else self.seed
        out: dict[str, float] = {}
        concepts: dict[str, list] = {}
        artifacts: dict[str, Any] = {}
        for request, result in inp.sources.items():
            if isinstance(request, TargetEdits):
                out |= self.target_scores(request.plan, result, seed)
            elif isinstance(request, CaptionCE):
                out |= self.caption_scores(request.plan, result, seed)
            elif isinstance(request, Steering):
                s, c, a = self.steering_scores(inp, request.plan, result, seed)
                out, concepts, artifacts = out | s, concepts | c, artifacts | a
        out["causal_n_samples"] = float(len(next(iter(inp.sources)).plan.indices))
        return MetricResult(out, artifacts, schema=causal_schema(self.steps, self.controls).only(out), concepts=concepts)

    @staticmethod
    def target_scores(plan: P.TargetPlan, res: dict[str, torch.Tensor], seed: int) -> dict[str, float]:
        lp, kl = res["logp"].double().numpy(), res["kl"].double().numpy()  # (M, V, W), (M, V)
        col = {name: i for i, name in enumerate(plan.variants)}
        watched = plan.watched.tolist()
        # each sample's own t among the watched ids: the one with the highest clean log-probability
        t_col = lp[:, col["clean"], :].argmax(1)
        lp_t = lp[np.arange(len(lp)), :, t_col]  # (M, V)
        out: dict[str, float] = {}
        for name in ("recon", "mean", "zero"):
            m, lo, hi = S.clustered_ci(kl[:, col[name]], seed=seed)
            out |= {f"kl_{name}": m, f"kl_{name}_ci_lo": lo, f"kl_{name}_ci_hi": hi}
        m, lo, hi = S.clustered_ci(lp_t[:, col["recon"]] - lp_t[:, col["clean"]], seed=seed)
        out |= {"dlogp_t_recon": m, "dlogp_t_recon_ci_lo": lo, "dlogp_t_recon_ci_hi": hi}
        concept = lp_t[:, col["ablate"]] - lp_t[:, col["clean"]]
        out["ablation_dlogp_t"] = float(np.mean(concept))
        for c in ABLATION_CONTROLS:
            if f"ablate:{c}" in col:
                control = lp_t[:, col[f"ablate:{c}"]] - lp_t[:, col["clean"]]
                out[f"ablation_dlogp_t_{c}"] = float(np.mean(control))
                m, lo, hi = S.clustered_ci(concept - control, seed=seed)
                out |= {f"ablation_minus_{c}": m, f"ablation_minus_{c}_ci_lo": lo, f"ablation_minus_{c}_ci_hi": hi}
        del watched
        return out

    @staticmethod
    def caption_scores(plan: P.CaptionPlan, res: dict[str, torch.Tensor], seed: int) -> dict[str, float]:
        lp, n = res["logp"].double().numpy(), res["lengths"].numpy()  # (M, V, T), (M,)
        ce = {v: S.caption_ce(lp[:, i], n) for i, v in enumerate(plan.variants)}
        out = {f"ce_{v}": float(np.nanmean(x)) for v, x in ce.items()}
        for base in ("zero", "mean"):
            m, lo, hi = S.paired_ratio_ci(ce["clean"], ce["recon"], ce[base], seed=seed)
            out |= {f"ce_recovered_{base}": m, f"ce_recovered_{base}_ci_lo": lo, f"ce_recovered_{base}_ci_hi": hi}
        return out

    def steering_scores(self, inp: EvalInput, plan: P.SteerPlan, res: dict[str, torch.Tensor], seed: int):
        tok = inp.services.lens.tokenizer
        ids, lengths, text_lp = res["ids"], res["lengths"], res["text_logp"].double().numpy()
        M, D, _ = ids.shape
        captions = [[tok.decode(ids[m, d, : int(lengths[m, d])].clamp_min(0).tolist(), skip_special_tokens=True).strip()
                     for d in range(D)] for m in range(M)]
        fluent = np.stack([S.fluency(text_lp[:, d], lengths[:, d].numpy()) for d in range(D)], 1)  # (M, D)
        row_of = {i: r for r, i in enumerate(inp.test.indices)}
        truth = [inp.test.annotations[row_of[i]].get("target") or {} for i in plan.indices]
        named_target = getattr(inp.test.dataset, "named_target", None)
        named = [[named_target(captions[m][d], inp.token) if named_target else None for d in range(D)] for m in range(M)]
        out: dict[str, float] = {"steer_fluency_unsteered": float(np.nanmean(fluent[:, 0]))}
        if named_target:
            out["steer_names_t_unsteered"] = float(np.mean([n[0] is not None for n in named]))
        success: dict[tuple[str, float], list[np.ndarray]] = {}  # (kind, α) -> per concept (M,) success
        per_dir: dict[tuple[str, float], list[int]] = {}
        for d, info in enumerate(plan.directions):
            if info.kind == "none":
                continue
            per_dir.setdefault((info.kind, info.alpha), []).append(d)
            if info.value is not None and named_target:
                success.setdefault((info.kind, info.alpha), []).append(
                    S.steering_success([named[m][d] for m in range(M)], truth, info.value))
        concept_success: dict[int, float] = {}
        for (kind, a), dirs in per_dir.items():
            tag = "" if kind == "concept" else f"_{kind}"
            at = f"/alpha_{a:g}"
            out[f"steer_fluency{tag}{at}"] = float(np.nanmean(fluent[:, dirs]))
            if named_target:
                out[f"steer_names_t{tag}{at}"] = float(np.mean([[named[m][d] is not None for d in dirs] for m in range(M)]))
            if (kind, a) in success:
                X = np.stack(success[(kind, a)], 1)  # (M, C): clustered by sample
                m_, lo, hi = S.clustered_ci(X, seed=seed)
                out |= {f"steer_success{tag}{at}": m_, f"steer_success{tag}{at}_ci_lo": lo,
                        f"steer_success{tag}{at}_ci_hi": hi}
        for (kind, a) in success:
            if kind == "concept":
                continue
            C = np.stack(success[("concept", a)], 1)
            X = np.stack(success[(kind, a)], 1)
            if C.shape == X.shape:
                m_, lo, hi = S.clustered_ci(C - X, seed=seed)
                out |= {f"steer_success_minus_{kind}/alpha_{a:g}": m_, f"steer_success_minus_{kind}/alpha_{a:g}_ci_lo": lo,
                        f"steer_success_minus_{kind}/alpha_{a:g}_ci_hi": hi}
        top = max(self.steps)
        for d, info in enumerate(plan.directions):
            if info.kind == "concept" and info.alpha == top and info.value is not None and named_target:
                concept_success[info.concept] = float(np.nanmean(
                    S.steering_success([named[m][d] for m in range(M)], truth, info.value)))
        K = inp.dictionary.n_concepts
        columns = {"causal_steer_value": [None] * K, "causal_steer_success": [None] * K}
        for info in plan.directions:
            if info.kind == "concept" and info.value is not None:
                columns["causal_steer_value"][info.concept] = "=".join(info.value)
        for k, v in concept_success.items():
            columns["causal_steer_success"][k] = v
        examples = [{"direction": info.to_json(), "captions": {inp.test.records[row_of[i]]["id"]: captions[m][d]
                                                                for m, i in enumerate(plan.indices[:8])}}
                    for d, info in enumerate(plan.directions) if info.kind == "concept"]
        artifacts = {"steering_examples": {"unsteered": {inp.test.records[row_of[i]]["id"]: captions[m][0]
                                                         for m, i in enumerate(plan.indices[:8])}, "steered": examples},
                     "steering": steering_figure(inp, plan, captions, self.n_show)}
        return out, columns, artifacts


def causal_schema(steps: list[float], controls: list[str]) -> Schema:
    """Every score the metric can write for these steps and controls, in its two tables."""
    faith = ("causal_faithfulness",)
    scores = [Score("ce_recovered_zero", "CE recovered (zero)", faith, better=1, summary=True,
                    ci=("ce_recovered_zero_ci_lo", "ce_recovered_zero_ci_hi")),
              Score("ce_recovered_mean", "CE recovered (mean)", faith, better=1,
                    ci=("ce_recovered_mean_ci_lo", "ce_recovered_mean_ci_hi")),
              Score("ce_clean", "CE clean", faith, better=-1), Score("ce_recon", "CE recon", faith, better=-1),
              Score("ce_zero", "CE zero-abl."), Score("ce_mean", "CE mean-abl."),
              Score("kl_recon", "KL recon (t position)", faith, better=-1, ci=("kl_recon_ci_lo", "kl_recon_ci_hi")),
              Score("kl_mean", "KL mean-abl.", faith), Score("kl_zero", "KL zero-abl."),
              Score("dlogp_t_recon", "Δlog p(t) recon", faith, ci=("dlogp_t_recon_ci_lo", "dlogp_t_recon_ci_hi")),
              Score("ablation_dlogp_t", "Δlog p(t) top-1 ablated", faith)]
    for c in ABLATION_CONTROLS:
        scores += [Score(f"ablation_dlogp_t_{c}", f"Δlog p(t) {CONTROL_NAMES[c]}", faith, of=CONTROL_NAMES[c]),
                   Score(f"ablation_minus_{c}", f"Δ ablation − {CONTROL_NAMES[c]}", faith,
                         ci=(f"ablation_minus_{c}_ci_lo", f"ablation_minus_{c}_ci_hi"))]
    steer = ("causal_steering",)
    scores += [Score("steer_fluency_unsteered", "fluency, unsteered", steer),
               Score("steer_names_t_unsteered", "names t, unsteered", steer)]
    for a in steps:
        row, at = f"α = {a:g}", f"/alpha_{a:g}"
        scores.append(Score(f"steer_success{at}", "success", steer, row=row, better=1, summary=a == max(steps),
                            ci=(f"steer_success{at}_ci_lo", f"steer_success{at}_ci_hi")))
        for c in controls:
            scores.append(Score(f"steer_success_{c}{at}", f"success, {CONTROL_NAMES[c]}", steer, row=row,
                                of=CONTROL_NAMES[c]))
        for c in controls:
            scores.append(Score(f"steer_success_minus_{c}{at}", f"Δ − {CONTROL_NAMES[c]}", steer, row=row,
                                ci=(f"steer_success_minus_{c}{at}_ci_lo", f"steer_success_minus_{c}{at}_ci_hi")))
        scores += [Score(f"steer_fluency{at}", "fluency", steer, row=row),
                   Score(f"steer_names_t{at}", "names t", steer, row=row)]
        for c in controls:
            scores += [Score(f"steer_fluency_{c}{at}", f"fluency, {CONTROL_NAMES[c]}", (), row=row, of=CONTROL_NAMES[c]),
                       Score(f"steer_names_t_{c}{at}", f"names t, {CONTROL_NAMES[c]}", (), row=row, of=CONTROL_NAMES[c])]
    scores.append(Score("causal_n_samples", "test samples intervened on", digits=0))
    with_ci = [*scores]
    for s in scores:
        if s.ci:
            with_ci += [Score(s.ci[0], f"{s.label}: CI low"), Score(s.ci[1], f"{s.label}: CI high")]
    return Schema(scores=with_ci,
                  concepts=[ConceptColumn("causal_steer_value", "steered toward (matched on train)"),
                            ConceptColumn("causal_steer_success", f"steering success at α = {max(steps):g}", better=1,
                                          sortable=True)],
                  tables=[FAITHFULNESS, STEERING])


def steering_figure(inp: EvalInput, plan: P.SteerPlan, captions: list[list[str]], n_show: int):
    """For a few steered concepts: one test image, its caption, and its steered caption at each α."""
    import textwrap

    from matplotlib.figure import Figure

    dirs = plan.directions
    shown = list(dict.fromkeys(d.concept for d in dirs if d.kind == "concept"))[:n_show]
    if not shown:
        return None
    row_of = {i: r for r, i in enumerate(inp.test.indices)}
    fig = Figure(figsize=(11, 2.3 * len(shown)), layout="constrained")
    axes = fig.subplots(len(shown), 2, squeeze=False, width_ratios=[1, 4])
    for i, k in enumerate(shown):
        m = i % len(plan.indices)
        im = inp.test.image(row_of[plan.indices[m]])
        axes[i, 0].imshow(np.asarray(im.convert("RGB")) if im is not None else np.zeros((8, 8, 3)))
        axes[i, 0].set_axis_off()
        value = next((d.value for d in dirs if d.concept == k and d.value), None)
        lines = [f"concept {k} ({', '.join(inp.concepts.words[k][:4]) or 'no words'})"
                 + (f", matched {'='.join(value)}" if value else ""), f"unsteered: {captions[m][0]}"]
        lines += [f"α = {d.alpha:g}: {captions[m][j]}" for j, d in enumerate(dirs) if d.kind == "concept" and d.concept == k]
        axes[i, 1].text(0, 1, "\n".join(textwrap.shorten(x, 120) for x in lines), va="top", fontsize=8,
                        family="monospace", transform=axes[i, 1].transAxes)
        axes[i, 1].set_axis_off()
    return fig
