"""Causal faithfulness: does the model *use* the concepts? Ablate and steer with them, against controls.

Notation: z (H,) a test sample's state at layer L at the position that predicts t; v = codes of z
(dictionary.encode); c_k(z) = decode(v) − decode(v with v_k = 0), concept k's part of the
reconstruction (= v_k u_k for the linear dictionaries); log p(x) the model's next-token log-probability
of token x at that position.

**Faithfulness at the target position** (the analogue of SAELens' loss recovered, for one token):

    clean  z               recon  decode(v) (the dictionary's view)            mean  the train mean of Z
    prediction_recovered = (E log p_recon(t) − E log p_mean(t)) / (E log p_clean(t) − E log p_mean(t))
    kl_recon = E KL(p_clean || p_recon)          (E: mean over test samples; bootstrap 95 % CIs)
    dlogp_t_recon = E [log p_recon(t) − log p_clean(t)]
The ratio needs a baseline that hurts: it is nan when the paired CI of log p_clean(t) − log p_mean(t)
does not lie above 0 (on the embedded default the train mean predicts t as well as the states do).

**Concept ablation**: z − c_k(z) for every concept k; Δ log p(t) and the mean Δ log p of the concept's
words (the first piece of each word of T_k), over every test sample and over the concept's top test
samples; the same for `n_random` random directions of the same norm per sample (seeded). And each
sample's top-1 concept against its random control, as a paired difference with a CI.

**Steering**: z_j + α · s_k · u_k at every generated position j (s_k = the `percentile`-th percentile of
v_k on the training samples), captions greedy, for α in `alphas`. Per concept and α: the share of
samples whose caption gains a word of T_k it lacked, the fluency (mean log-likelihood per token of
the steered caption under the unsteered model, given the image), and, on data with factor labels,
the ground-truth steering success: for the factor value matched to concept k (Hungarian on the test
AUROCs, as in recovery), the share of test samples whose target lacks that value and whose steered
caption names the target with it. Controls at the same α and norm: a random unit direction, and the
value's DiffMean direction (the supervised reference, concepts/diffmean.py).

The metric plans the interventions from cached tensors (`plan`), the pipeline runs them as model
stages (extraction/interventions.py, cached), and the metric reads the results. Keys (flat):
prediction_recovered (+ _ci_lo/_ci_hi; nan where the mean ablation does not lower log p(t)),
logp_t_clean / _recon / _mean, dlogp_t_recon (+ CI: recon − clean), kl_recon, kl_mean, ablation_dlogp_t, ablation_dlogp_t_random,
ablation_dlogp_words, top1_ablation_minus_random_{diff,ci_lo,ci_hi,significant}, and per α:
steer_success/alpha_<α> (+ _random, _diffmean), steer_word_gain/alpha_<α> (+ _random),
steer_fluency/alpha_<α> (+ _random, _diffmean), steer_fluency_unsteered. Artefacts: "causal" (per
concept, and "aggregate"), "steering_examples", "steering" (figure).
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from coxlmm.errors import CoxlmmError
from coxlmm.extraction.interventions import SteerPlan, TargetPlan
from coxlmm.metrics.base import EvalInput, Metric, MetricResult
from coxlmm.metrics.stats import paired_scores

log = logging.getLogger(__name__)



@dataclass
class CausalResults:
    """What the causal model stages returned for a plan (rows follow the plan's samples)."""

    target: dict[str, torch.Tensor]  # logp (M, V, W), kl (M, V)
    steer: dict[str, torch.Tensor] | None  # ids (M, D, T), lengths (M, D), fluency (M, D)


@dataclass(eq=False)
class CausalRequest:
    """The model stages of one causal plan: the target-position edits and the steered captions."""

    plan: "CausalPlan"
    rows_per_forward: int = 32

    def describe(self) -> str:
        return (f"causal stages: {len(self.plan.rows)} samples x ({len(self.plan.target.variants)} edits, "
                f"{len(self.plan.steer.directions) if self.plan.steer is not None else 0} steering directions)")

    def run(self, model, parent, dataset, layer, root, settings, trainer) -> CausalResults:
        from coxlmm.extraction.interventions import run_steer, run_target

        target = run_target(model, parent, dataset, self.plan.target, layer, root, settings, trainer,
                            self.rows_per_forward)
        steer = run_steer(model, parent, dataset, self.plan.steer, layer, root, settings, trainer,
                          self.rows_per_forward) if self.plan.steer is not None else None
        return CausalResults(target, steer)


@dataclass
class CausalPlan:
    target: TargetPlan
    steer: SteerPlan | None
    rows: list[int]  # the test rows (of the split) the plan covers
    t_col: list[int]  # per sample, the column of its t in `target.watched`
    word_cols: list[list[int]]  # per concept, the columns of its words in `target.watched`
    matched: dict[int, tuple[str, str]]  # concept -> the factor value matched to it
    s: torch.Tensor  # (K,) steering scale per concept


# --- pure helpers ---------------------------------------------------------------------------------------
def concept_parts(dictionary, V: torch.Tensor) -> torch.Tensor:
    """(M, K) codes -> (M, K, H) c_k = decode(V) − decode(V with column k zeroed)."""
    full = dictionary.decode(V)
    parts = []
    for k in range(V.shape[1]):
        Vk = V.clone()
        Vk[:, k] = 0
        parts.append(full - dictionary.decode(Vk))
    return torch.stack(parts, dim=1)


def random_like_norms(norms: torch.Tensor, H: int, seed: int) -> torch.Tensor:
    """(M, K) norms -> (M, K, H) random directions (unit, seeded) scaled to those norms."""
    g = torch.Generator().manual_seed(seed)
    R = torch.randn(*norms.shape, H, generator=g)
    return R / R.norm(dim=-1, keepdim=True) * norms[..., None]


def ratio_ci(clean: np.ndarray, recon: np.ndarray, mean: np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    """prediction_recovered and a bootstrap 95 % CI (resampling the samples).

    The ratio is defined only when the mean ablation lowers log p(t): when the paired CI of
    log p_clean(t) − log p_mean(t) does not lie above 0 (the train mean of states that predict t can
    predict t as well as each state does), the denominator is noise and the ratio is (nan, nan, nan)."""
    from scipy.stats import bootstrap

    if len(clean) >= 3:
        _, den_lo, _ = mean_ci(np.asarray(clean, float) - np.asarray(mean, float), seed)
        if not den_lo > 0:
            return float("nan"), float("nan"), float("nan")

    def stat(c, r, m, axis=-1):
        den = c.mean(axis) - m.mean(axis)
        return np.where(den != 0, (r.mean(axis) - m.mean(axis)) / np.where(den != 0, den, 1), np.nan)

    value = float(stat(clean, recon, mean))
    if len(clean) < 3:
        return value, float("nan"), float("nan")
    res = bootstrap((clean, recon, mean), stat, paired=True, vectorized=True, n_resamples=2000, method="percentile",
                    rng=np.random.default_rng(seed))
    return value, float(res.confidence_interval.low), float(res.confidence_interval.high)


def mean_ci(x: np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    from coxlmm.metrics.stats import paired_ci

    return paired_ci(x, np.zeros_like(x), seed=seed)


def caption_words(text: str) -> set[str]:
    words = set(re.findall(r"[a-z]+", text.lower()))
    return words | {w[:-1] for w in words if w.endswith("s")}


# --- the metric -----------------------------------------------------------------------------------------
class Causal(Metric):
    """Causal faithfulness, concept ablation and steering against matched controls (module doc).

    Args:
        alphas: steering strengths (α = 0 is the unsteered caption).
        n_samples: test samples intervened on (the first ones, by dataset index).
        n_random: random directions per concept (ablation and steering controls).
        positions: where the steering vector is added: "generated" (every position that predicts a
            generated token) or "all" (the prompt too).
        steer: which concepts are steered: "matched" (those matched to a factor value; all when the
            data has no factors), "all", or "none".
        percentile: s_k = this percentile of v_k on the training samples.
        max_new_tokens: length cap of the steered captions.
        n_top: test samples per concept in the "top samples" ablation numbers.
        rows_per_forward: edited rows per model forward.
        n_show: concepts in the steering figure.
    """

    name = "causal"

    def __init__(self, alphas=(0, 1, 2, 4, 8), n_samples: int = 32, n_random: int = 1, positions: str = "generated",
                 steer: str = "matched", percentile: float = 95.0, max_new_tokens: int = 32, n_top: int = 5,
                 rows_per_forward: int = 32, n_show: int = 4, seed: int | None = None):
        bad = [a for a in alphas if isinstance(a, bool) or not isinstance(a, (int, float)) or not math.isfinite(a)]
        if bad or not len(alphas):
            raise CoxlmmError(f"causal: alphas={list(alphas)!r} must be a non-empty list of numbers, e.g. [0, 1, 2, 4, 8]; "
                              f"not numbers: {bad}.")
        for key, value, ok in (("positions", positions, positions in ("generated", "all")),
                               ("steer", steer, steer in ("matched", "all", "none")),
                               ("n_samples", n_samples, isinstance(n_samples, int) and n_samples > 0),
                               ("n_random", n_random, isinstance(n_random, int) and n_random > 0),
                               ("percentile", percentile, 0 < percentile <= 100)):
            if not ok:
                raise CoxlmmError(f"causal: {key}={value!r} is invalid (positions: generated | all; steer: matched | "
                                  "all | none; n_samples, n_random: positive integers; percentile in (0, 100]).")
        self.alphas = sorted({float(a) for a in alphas})
        self.n_samples, self.n_random, self.positions, self.steer = n_samples, n_random, positions, steer
        self.percentile, self.max_new_tokens, self.n_top = percentile, max_new_tokens, n_top
        self.rows_per_forward, self.n_show, self.seed = rows_per_forward, n_show, seed

    def plan(self, inp: EvalInput) -> tuple:
        built = self.build_plan(inp)
        return () if built is None else (CausalRequest(built, self.rows_per_forward),)

    # --- the plan (tensors only) ---
    def build_plan(self, inp: EvalInput) -> CausalPlan | None:
        test = inp.test
        if test is None or not len(test):
            log.warning("causal skipped: no test features")
            return None
        seed = inp.seed if self.seed is None else self.seed
        rows = list(range(min(self.n_samples, len(test))))
        z, v = test.Z[rows].float(), test.V[rows].float()
        M, H = z.shape
        K = v.shape[1]
        d = inp.dictionary
        parts = concept_parts(d, v)  # (M, K, H)
        rnd = torch.stack([random_like_norms(parts.norm(dim=-1), H, seed * 1000 + j) for j in range(self.n_random)], 2)
        variants = ["clean", "recon", "mean"] + [f"ablate:{k}" for k in range(K)] + \
                   [f"random:{k}:{j}" for k in range(K) for j in range(self.n_random)]
        mean = inp.train.Z.float().mean(0)
        states = torch.cat([z[:, None], d.decode(v)[:, None], mean.expand(M, 1, H), z[:, None] - parts,
                            (z[:, None, None] - rnd).reshape(M, K * self.n_random, H)], 1)

        tok = inp.services.lens.tokenizer
        t_ids = [int(test.records[r]["token_ids"][0]) for r in rows]
        word_ids = [[_first_piece(tok, w) for w in ws] for ws in inp.concepts.words]
        watched = list(dict.fromkeys(t_ids + [i for ids in word_ids for i in ids if i is not None]))
        col = {t: i for i, t in enumerate(watched)}
        target = TargetPlan([test.indices[r] for r in rows], variants, states, torch.tensor(watched))

        s = torch.quantile(inp.train.V.float().clamp_min(0), self.percentile / 100, dim=0)  # (K,)
        matched = self._matching(inp)
        steer = None
        if self.steer != "none" and len(self.alphas) > 1:
            steer = self._steer_plan(inp, target.indices, matched, s, seed)
        return CausalPlan(target, steer, rows, [col[t] for t in t_ids],
                          [[col[i] for i in ids if i is not None] for ids in word_ids], matched, s)

    def _matching(self, inp: EvalInput) -> dict[int, tuple[str, str]]:
        """concept -> factor value, the Hungarian matching of recovery on the test samples ({} without factors)."""
        from coxlmm.metrics.recovery import auroc_matrix, match_concepts, target_labels

        if not inp.factors:
            return {}
        names, Y = target_labels(inp.test.annotations, inp.factors)
        if not names:
            return {}
        A = auroc_matrix(inp.test.V.float().numpy(), Y)
        return {k: names[j] for j, k in enumerate(match_concepts(A)) if k is not None}

    def _steer_plan(self, inp: EvalInput, indices: list[int], matched, s: torch.Tensor, seed: int) -> SteerPlan:
        from coxlmm.concepts.diffmean import diff_mean

        U = inp.dictionary.U.float()
        K, H = U.shape
        U = U / U.norm(dim=1, keepdim=True).clamp_min(1e-12)
        concepts = sorted(matched) if self.steer == "matched" and matched else list(range(K))
        g = torch.Generator().manual_seed(seed + 17)
        R = torch.randn(K, self.n_random, H, generator=g)
        R = R / R.norm(dim=-1, keepdim=True)
        dm = {}
        if matched:
            targets = [a.get("target") or {} for a in inp.train.annotations]
            for k in concepts:
                f, value = matched.get(k, (None, None))
                y = torch.tensor([t.get(f) == value for t in targets]) if f else None
                if y is not None and 0 < int(y.sum()) < len(y):
                    dm[k] = diff_mean(inp.train.Z, y[:, None])[0]
        directions, deltas = [{"kind": "none", "alpha": 0.0}], [torch.zeros(H)]
        for k in concepts:
            value = "=".join(matched[k]) if k in matched else None
            for a in (a for a in self.alphas if a != 0):
                step = a * float(s[k])
                directions.append({"kind": "concept", "concept": k, "value": value, "alpha": a})
                deltas.append(step * U[k])
                for j in range(self.n_random):
                    directions.append({"kind": "random", "concept": k, "value": value, "alpha": a, "j": j})
                    deltas.append(step * R[k, j])
                if k in dm:
                    directions.append({"kind": "diffmean", "concept": k, "value": value, "alpha": a})
                    deltas.append(step * dm[k])
        return SteerPlan(indices, directions, torch.stack(deltas), self.max_new_tokens, self.positions)

    # --- the scores (results only) ---
    def __call__(self, inp: EvalInput) -> MetricResult:
        request = next(iter(inp.sources), None)
        if request is None:
            return MetricResult()
        plan, res = request.plan, inp.sources[request]
        seed = inp.seed if self.seed is None else self.seed
        lp, kl = res.target["logp"].double(), res.target["kl"].double()
        M = lp.shape[0]
        V = plan.target.variants
        K = len(inp.concepts.words)
        col = {name: i for i, name in enumerate(V)}
        lp_t = lp[torch.arange(M), :, torch.tensor(plan.t_col)]  # (M, V)
        out: dict[str, float] = {"causal_n_samples": float(M)}
        pr, lo, hi = ratio_ci(lp_t[:, col["clean"]].numpy(), lp_t[:, col["recon"]].numpy(), lp_t[:, col["mean"]].numpy(),
                              seed)
        out |= {"prediction_recovered": pr, "prediction_recovered_ci_lo": lo, "prediction_recovered_ci_hi": hi}
        for name in ("clean", "recon", "mean"):
            out[f"logp_t_{name}"] = float(lp_t[:, col[name]].mean())
        m, l_, h_ = mean_ci((lp_t[:, col["recon"]] - lp_t[:, col["clean"]]).numpy(), seed)
        out |= {"dlogp_t_recon": m, "dlogp_t_recon_ci_lo": l_, "dlogp_t_recon_ci_hi": h_}
        if not math.isfinite(pr):
            log.warning("prediction_recovered is undefined here: the train-mean ablation does not lower log p(t) "
                        "(E log p: clean %.4f, mean %.4f; the mean of the states that predict t predicts t too). "
                        "Read kl_recon and dlogp_t_recon (recon − clean: %.4f) instead.",
                        out["logp_t_clean"], out["logp_t_mean"], m)
        for name in ("recon", "mean"):
            m, l_, h_ = mean_ci(kl[:, col[name]].numpy(), seed)
            out |= {f"kl_{name}": m, f"kl_{name}_ci_lo": l_, f"kl_{name}_ci_hi": h_}

        codes = inp.test.V[plan.rows].float()
        clean = lp_t[:, col["clean"]]
        d_t = torch.stack([lp_t[:, col[f"ablate:{k}"]] - clean for k in range(K)], 1)  # (M, K)
        d_r = torch.stack([torch.stack([lp_t[:, col[f"random:{k}:{j}"]] for j in range(self.n_random)], 0).mean(0)
                           - clean for k in range(K)], 1)
        d_w = torch.full((M, K), float("nan"), dtype=torch.float64)
        for k, cols in enumerate(plan.word_cols):
            if cols:
                d_w[:, k] = (lp[:, col[f"ablate:{k}"], cols] - lp[:, col["clean"], cols]).mean(1)
        per_concept: dict[str, dict[str, Any]] = {}
        top = codes.argsort(0, descending=True)[: self.n_top]  # (n_top, K) rows of each concept's top samples
        for k in range(K):
            rows_k = top[:, k][codes[top[:, k], k] > 0]
            per_concept[str(k)] = {
                "ablation_dlogp_t": float(d_t[:, k].mean()), "ablation_dlogp_t_random": float(d_r[:, k].mean()),
                "ablation_dlogp_t_top": float(d_t[rows_k, k].mean()) if len(rows_k) else None,
                "ablation_dlogp_t_top_random": float(d_r[rows_k, k].mean()) if len(rows_k) else None,
                "ablation_dlogp_words": float(torch.nanmean(d_w[:, k])) if plan.word_cols[k] else None,
                "steering_scale": float(plan.s[k]),
                "matched_value": "=".join(plan.matched[k]) if k in plan.matched else None}
        out["ablation_dlogp_t"] = float(d_t.mean())
        out["ablation_dlogp_t_random"] = float(d_r.mean())
        if (~torch.isnan(d_w)).any():
            out["ablation_dlogp_words"] = float(torch.nanmean(d_w))
        has = codes.abs().sum(1) > 0
        k1 = codes.argmax(1)
        if has.sum() >= 2:
            a, b = d_t[has, k1[has]], d_r[has, k1[has]]
            out |= paired_scores("top1_ablation_minus_random", a.numpy(), b.numpy(), seed=seed)
            out["top1_ablation_dlogp_t"] = float(a.mean())
            out["top1_ablation_dlogp_t_random"] = float(b.mean())

        artifacts: dict[str, Any] = {}
        if plan.steer is not None and res.steer is not None:
            out |= self._steering(inp, plan, res.steer, per_concept, artifacts)
        per_concept["aggregate"] = {k: v for k, v in out.items()}
        artifacts["causal"] = per_concept
        return MetricResult(out, artifacts)

    def _steering(self, inp: EvalInput, plan: CausalPlan, steer: dict[str, torch.Tensor],
                  per_concept: dict[str, dict[str, Any]], artifacts: dict[str, Any]) -> dict[str, float]:
        tok = inp.services.lens.tokenizer
        ids, lengths, fluency = steer["ids"], steer["lengths"], steer["fluency"].double()
        M, D, _ = ids.shape
        captions = [[tok.decode(ids[m, d, : int(lengths[m, d])].clamp_min(0).tolist(), skip_special_tokens=True).strip()
                     for d in range(D)] for m in range(M)]
        dirs = plan.steer.directions
        named = getattr(inp.test.dataset, "named_target", None)
        targets = [inp.test.annotations[r].get("target") or {} for r in plan.rows]
        out: dict[str, float] = {"steer_fluency_unsteered": float(fluency[:, 0].mean())}
        rows: dict[tuple[str, float], list[dict[str, float]]] = {}
        for d, info in enumerate(dirs):
            if info["kind"] == "none":
                continue
            k, a, kind = info["concept"], info["alpha"], info["kind"]
            words = set(inp.concepts.words[k])
            gained = [bool((words - caption_words(captions[m][0])) & caption_words(captions[m][d]))
                      for m in range(M) if words - caption_words(captions[m][0])]
            rec = {"fluency": float(fluency[:, d].mean()), "word_gain": float(np.mean(gained)) if gained else float("nan")}
            if info.get("value") and named is not None:
                f, value = info["value"].split("=", 1)
                lack = [m for m in range(M) if targets[m].get(f) not in (None, value)]
                hits = [(named(captions[m][d], inp.token) or {}).get(f) == value for m in lack]
                rec["success"] = float(np.mean(hits)) if hits else float("nan")
            rows.setdefault((kind, a), []).append(rec)
            key = f"steer_{kind}_alpha_{a:g}"
            per_concept[str(k)].update({f"{key}_{n}": x for n, x in rec.items()})
        for (kind, a), recs in rows.items():
            suffix = "" if kind == "concept" else f"_{kind}"
            for n, name in (("success", "steer_success"), ("word_gain", "steer_word_gain"), ("fluency", "steer_fluency")):
                vals = [r[n] for r in recs if n in r and not math.isnan(r[n])]
                if vals:
                    out[f"{name}{suffix}/alpha_{a:g}"] = float(np.mean(vals))
        examples = []
        for d, info in enumerate(dirs):
            if info["kind"] == "concept":
                examples.append({"direction": info, "captions": {inp.test.records[r]["id"]: captions[m][d]
                                                                 for m, r in enumerate(plan.rows[:8])}})
        artifacts["steering_examples"] = {"unsteered": {inp.test.records[r]["id"]: captions[m][0]
                                                        for m, r in enumerate(plan.rows[:8])}, "steered": examples}
        artifacts["steering"] = steering_figure(inp, plan, captions, self.n_show)
        return out


def _first_piece(tokenizer, word: str) -> int | None:
    ids = tokenizer.encode(" " + word, add_special_tokens=False)
    return int(ids[0]) if ids else None


def steering_figure(inp: EvalInput, plan: CausalPlan, captions: list[list[str]], n_show: int):
    """For a few steered concepts: one test image, its caption, and its steered caption at each α."""
    import textwrap

    from matplotlib.figure import Figure

    dirs = plan.steer.directions
    concepts = list(dict.fromkeys(d["concept"] for d in dirs if d["kind"] == "concept"))[:n_show]
    if not concepts:
        return None
    fig = Figure(figsize=(11, 2.3 * len(concepts)), layout="constrained")
    axes = fig.subplots(len(concepts), 2, squeeze=False, width_ratios=[1, 4])
    for i, k in enumerate(concepts):
        m = i % len(plan.rows)
        im = inp.test.image(plan.rows[m])
        axes[i, 0].imshow(np.asarray(im.convert("RGB")) if im is not None else np.zeros((8, 8, 3)))
        axes[i, 0].set_axis_off()
        lines = [f"concept {k} ({', '.join(inp.concepts.words[k][:4]) or 'no words'})"
                 + (f", matched {dirs_value(dirs, k)}" if dirs_value(dirs, k) else ""),
                 f"α = 0: {captions[m][0]}"]
        for d, info in enumerate(dirs):
            if info["kind"] == "concept" and info["concept"] == k:
                lines.append(f"α = {info['alpha']:g}: {captions[m][d]}")
        axes[i, 1].text(0, 1, "\n".join(textwrap.shorten(l, 120) for l in lines), va="top", fontsize=8,
                        family="monospace", transform=axes[i, 1].transAxes)
        axes[i, 1].set_axis_off()
    return fig


def dirs_value(dirs: list[dict], k: int) -> str | None:
    return next((d.get("value") for d in dirs if d.get("concept") == k and d.get("value")), None)
