"""The paper's claims, checked: a markdown section written from the `tables.csv` of `make paper`'s sweeps.

    python -m coxlmm.report.claims outputs/multirun [--readme README.md]

Each claim reads cells of the sweeps' tables (by the table names of the metrics' descriptions, row and column label, as coxlmm-tables
wrote them) and states its verdict from the intervals there: a difference "holds" for a token when its
95 % CI lies above 0 (a method ranking: when its Holm-adjusted p is below 0.05), and the section says how
many tokens it holds for, with the numbers. With `--readme`, the section replaces the text between the
README's `<!-- claims:begin -->` and `<!-- claims:end -->` markers, so the README's numbers are the
tables' and nothing is copied by hand. A sweep or a table that is missing leaves its claims out with a
note. `make causal`'s sweep (`causal/tables.csv`) goes between `<!-- causal:begin -->` and
`<!-- causal:end -->` (and `causal.md`): its two tables with their CIs and, per layer and step, how many
methods' concepts beat each of their own controls. Each block is rewritten only when its sweeps are there.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from coxlmm.causal.metric import ABLATION_CONTROLS, CONTROL_NAMES, FAITHFULNESS, STEERING
from coxlmm.metrics.heldout import HELDOUT
from coxlmm.metrics.overlap import OVERLAP_TABLE
from coxlmm.metrics.recovery import RECOVERY, SPLIT
from coxlmm.metrics.test_eval import table1_spec

BEGIN, END = "<!-- claims:begin -->", "<!-- claims:end -->"
CAUSAL_BEGIN, CAUSAL_END = "<!-- causal:begin -->", "<!-- causal:end -->"
PAPER_SWEEPS = ("paper_table1", "paper_shape_first", "layer_ablation", "paper_heldout")
REFERENCE = "Semi-NMF"


def read(root: Path, sweep: str) -> pd.DataFrame | None:
    path = root / sweep / "tables.csv"
    return pd.read_csv(path) if path.is_file() else None


def cells(t: pd.DataFrame, table: str, row: str | None = None, column: str | None = None) -> pd.DataFrame:
    """The cells of one table whose row matches the regex `row` and column equals `column`."""
    c = t[t["table"] == table]
    if row is not None:
        c = c[c["row"].astype(str).str.fullmatch(row)]
    if column is not None:
        c = c[c["column"] == column]
    return c


def num(x: float, digits: int = 3, sign: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def diff_text(c: pd.Series) -> str:
    return f"{num(c['mean'], sign=True)} [{num(c['lo'], sign=True)}, {num(c['hi'], sign=True)}]"


def token_of(row: str) -> str:
    return str(row).split(" / ")[0]


def versus(t: pd.DataFrame, metric: str, null: str, method: str = REFERENCE, unit: str = "test sample") -> str:
    """'holds for n of N tokens' of the paired differences method − null, with the range of the intervals."""
    c = cells(t, "paired", rf".* / {re.escape(metric)}, {re.escape(unit)} / {re.escape(method)}", null)
    c = c.dropna(subset=["mean"])
    if c.empty:
        return "–"
    above = int((c["lo"] > 0).sum())
    below = int((c["hi"] < 0).sum())
    lo, hi = c.loc[c["mean"].idxmin()], c.loc[c["mean"].idxmax()]
    spread = diff_text(lo) + (f" ({token_of(lo['row'])}) to {diff_text(hi)} ({token_of(hi['row'])})" if len(c) > 1 else "")
    verdict = f"**above: {above} of {len(c)}**" if above else f"above: 0 of {len(c)}"
    if below:
        verdict += f", **below: {below}**"
    return f"{verdict}; {spread}"


def ranking(t: pd.DataFrame, metric: str) -> str:
    """Semi-NMF against every other method per token: significant wins / losses after Holm."""
    c = cells(t, "comparisons", rf".* / {re.escape(metric)}, test sample / .*", "Δ").dropna(subset=["mean"])
    if c.empty:
        return "–"
    wins = c[(c["p_holm"] < 0.05) & (c["mean"] > 0)]
    losses = c[(c["p_holm"] < 0.05) & (c["mean"] < 0)]
    out = f"{len(wins)} wins, {len(losses)} losses, {len(c) - len(wins) - len(losses)} not significant of {len(c)}"
    if len(losses):
        worst = losses.loc[losses["mean"].idxmin()]
        out += f" (largest loss: {worst['row'].split(' / ')[-1]}, {token_of(worst['row'])}, {diff_text(worst)}, " \
               f"p_Holm = {worst['p_holm']:.3g})"
    return out


def column_means(t: pd.DataFrame, table: str, row: str, columns: Sequence[str]) -> str:
    parts = []
    for col in columns:
        c = cells(t, table, row, col).dropna(subset=["mean"])
        if len(c):
            parts.append(f"{col} {num(c['mean'].mean())}" + (f" ({num(c['mean'].min())}–{num(c['mean'].max())})"
                                                              if len(c) > 1 else ""))
    return "; ".join(parts) or "–"


def section(root: Path) -> str:
    t1, shape, layers, heldout = (read(root, s) for s in PAPER_SWEEPS)
    lines = ["| claim | holds here? (95 % CIs; tokens circle, square, star, heart unless said) |", "| --- | --- |"]
    missing = []
    if t1 is not None:
        for m in ("CS", "BS"):
            for null, what in (("Rnd-Words", "random words (length-matched, 20 draws per sample)"),
                               ("Noise-Imgs", "a dictionary of noise images (position-matched, 3 noise draws)"),
                               ("Rnd-Concept", "another concept of the same dictionary (20 draws)"),
                               ("Token-only", "the target word alone")):
                lines.append(f"| Semi-NMF's top-1 concept describes a test image better than {what}, {m} | "
                             f"{versus(t1, m, null)} |")
        for m in ("CS", "BS"):
            lines.append(f"| Semi-NMF beats every other dictionary on {m} (paired, Holm over the family) | "
                         f"{ranking(t1, m)} |")
        lines.append(f"| Overlap (lower = more disentangled), mean over tokens | "
                     f"{column_means(t1, OVERLAP_TABLE.name, r'mean over tokens / .*', _methods(t1))} |")
        for m in ("CS", "BS"):
            lines.append(f"| A concept's words match its own top images better than random words, {m} | "
                         f"{versus(t1, m, 'Rnd-Words', unit='concept vs its top images')} |")
        for m in ("CS", "BS"):
            lines.append(f"| Detection: a concept's words predict which test samples activate it, {m} (vs random words; "
                         f"vs another concept's words) | {versus(t1, f'Detection {m} AUROC', 'Rnd-Words', unit='concept')}"
                         f"; {versus(t1, f'Detection {m} AUROC', 'Rnd-Concept', unit='concept')} |")
            lines.append(f"| The top-1 concept's words add to the target word (gain over t), {m}, vs the gain of random "
                         f"words | {versus(t1, f'Gain over t ({m})', 'Rnd-Words')} |")
        lines.append(f"| The top-1 concept's matched value is the sample's (factor accuracy) vs a random dictionary; vs "
                     f"the prefix-only control | {versus(t1, 'Factor acc.', 'Random dict.')}; "
                     f"{versus(t1, 'Factor acc.', 'Prefix-only')} |")
        lines.append(f"| Recovery of the target's factors (test AUROC of the concepts matched on train), Semi-NMF | "
                     f"{column_means(t1, RECOVERY.name, r'Semi-NMF / .* / all', ['Matched', 'Chance (perm.)', 'Prefix-only', 'Random dict.'])} |")
        l0 = column_means(t1, table1_spec().name, r".* / L0 \(test\)", _methods(t1))
        lines.append(f"| Test L0 of each method (Table 1 compares Semi-NMF at L0 ≈ K with SAEs at k = 5; Semi-NMF "
                     f"(L0≈5) is the matched-sparsity row) | {l0} |")
    else:
        missing.append("paper_table1")
    if shape is not None:
        for f in ("colour", "size", "position"):
            lines.append(f"| Shape-first captions: Semi-NMF recovers the target's {f} from the image (image-only samples) "
                         f"above the prefix and a random dictionary | "
                         f"{column_means(shape, SPLIT.name, rf'Semi-NMF / .* / {f}', ['image-only', 'prefix-only, image-only', 'random, image-only'])} |")
    else:
        missing.append("paper_shape_first")
    if layers is not None:
        lines.append(f"| Grounding is meaningful only in the later layers (layer_ablation, circle; by layer: lens "
                     f"top-10 ∋ t, grounding BS words vs random) | {_layer_curve(layers)} |")
    else:
        missing.append("layer_ablation")
    if heldout is not None:
        lines.append(f"| Colour concepts generalise to held-out (shape, colour) pairs (Semi-NMF; held-out vs seen AUROC; "
                     f"the model's caption accuracy on them) | "
                     f"{column_means(heldout, HELDOUT.name, r'Semi-NMF / .* / all', ['held-out AUROC', 'seen AUROC', 'held-out AUROC (random dict.)', 'caption acc.'])} |")
    else:
        missing.append("paper_heldout")
    note = f"\n\nNot in this run (no tables.csv): {', '.join(missing)}." if missing else ""
    return "\n".join(lines) + note + "\n"


def _methods(t: pd.DataFrame) -> list[str]:
    c = cells(t, OVERLAP_TABLE.name)
    return list(dict.fromkeys(c["column"])) if len(c) else []


def _layer_curve(t: pd.DataFrame) -> str:
    c = t[t["table"] == "layers"]
    out = []
    for col in ("Lens top-10 ∋ t", "BS words", "BS random"):
        v = c[c["column"] == col].dropna(subset=["mean"])
        if len(v):
            layers = v["row"].astype(str).str.split(" / ").str[2]
            out.append(f"{col}: " + ", ".join(f"{l} {num(m, 2)}" for l, m in zip(layers, v["mean"])))
    return "; ".join(out) or "–"


def ci_text(c: pd.DataFrame, sign: bool = True) -> str:
    """'m [lo, hi]' of the one cell in `c` (its own interval when tables.csv has one), '–' without a cell."""
    if c.empty or pd.isna(c["mean"].iloc[0]):
        return "–"
    r = c.iloc[0]
    has_ci = "lo" in r and "hi" in r and not (pd.isna(r["lo"]) or pd.isna(r["hi"]))
    return f"{num(r['mean'], sign=sign)}" + (f" [{num(r['lo'], sign=sign)}, {num(r['hi'], sign=sign)}]" if has_ci else "")


def verdict(c: pd.DataFrame) -> str | None:
    """above / below / n.s. of one paired difference from its interval."""
    if c.empty or "lo" not in c or pd.isna(c["lo"].iloc[0]):
        return None
    return "above" if c["lo"].iloc[0] > 0 else "below" if c["hi"].iloc[0] < 0 else "n.s."


def causal_section(t: pd.DataFrame) -> str:
    """`make causal`'s tables (faithfulness, steering per method, layer and α against each method's own
    controls, with their CIs) and, per layer and α, how many methods' concepts beat each control."""
    faith_t, steer_t = t[t["table"] == FAITHFULNESS.name], t[t["table"] == STEERING.name]
    heads = list(dict.fromkeys(faith_t["row"].astype(str)))  # method / token / layer
    abl = [f"Δ ablation − {CONTROL_NAMES[c]}" for c in ABLATION_CONTROLS]
    lines = ["Faithfulness (the reconstruction spliced in at every generated position; CE recovered against zero- and "
             "mean-ablation) and the top-1 concept ablated at the target position against the same norm along each "
             "control (Δlog p(t), paired); 95 % bootstrap CIs over the test samples:", "",
             "| method | token | layer | CE recovered (zero) | CE recovered (mean) | KL recon (t position) | "
             + " | ".join(abl) + " |", "| --- " * (6 + len(abl)) + "|"]
    for head in heads:
        row = faith_t[faith_t["row"] == head]
        cols = ["CE recovered (zero)", "CE recovered (mean)", "KL recon (t position)", *abl]
        lines.append(f"| {head.replace(' / ', ' | ')} | "
                     + " | ".join(ci_text(row[row["column"] == col], sign=col.startswith("Δ")) for col in cols) + " |")
    controls = [c for c in CONTROL_NAMES.values() if (steer_t["column"] == f"Δ − {c}").any()]
    lines += ["", "Steering along each concept matched on train, at α · ‖z‖ (success: the caption names the target with the "
              "concept's value, among pairs whose target lacked it; Δ: concept minus the control at the same step, paired; "
              "95 % CIs clustered by test sample; fluency: nats per token under the text-only LM; names t: share of "
              "captions that still name the target):", "", "| method | token | layer | step | success | " + " | ".join(f"Δ − {c}" for c in controls)
              + " | fluency | names t |", "| --- " * (7 + len(controls)) + "|"]
    tally: dict[tuple[str, str], dict[str, dict[str, int]]] = {}  # (layer, step) -> control -> verdict counts
    for r in dict.fromkeys(steer_t["row"].astype(str)):
        parts = r.split(" / ")
        row = steer_t[steer_t["row"] == r]
        if parts[-1] == "all":  # the unsteered captions' fluency and names-t (no step)
            lines.append(f"| {' | '.join(parts[:3])} | unsteered | – | " + " | ".join("–" for _ in controls) +
                         f" | {ci_text(row[row['column'] == 'fluency, unsteered'], sign=False)} | "
                         f"{ci_text(row[row['column'] == 'names t, unsteered'], sign=False)} |")
            continue
        diffs = []
        for c in controls:
            cell = row[row["column"] == f"Δ − {c}"]
            diffs.append(ci_text(cell))
            v = verdict(cell)
            if v:
                counts = tally.setdefault((parts[2], parts[3]), {}).setdefault(c, {"above": 0, "below": 0, "n.s.": 0})
                counts[v] += 1
        lines.append(f"| {' | '.join(parts)} | {ci_text(row[row['column'] == 'success'], sign=False)} | "
                     + " | ".join(diffs) + f" | {ci_text(row[row['column'] == 'fluency'], sign=False)} | "
                     f"{ci_text(row[row['column'] == 'names t'], sign=False)} |")
    if tally:
        lines += ["", "Steering success, concept minus each control at the same step (paired, 95 % CI clustered by test "
                  "sample): how many methods' intervals lie above 0 / below 0 / include 0.", "",
                  "| layer | step | " + " | ".join(f"vs {c}" for c in controls) + " |", "| --- " * (2 + len(controls)) + "|"]
        for (layer, step), by_control in tally.items():
            cells_ = [by_control.get(c) for c in controls]
            lines.append(f"| {layer} | {step} | " + " | ".join(
                "–" if n is None else f"{n['above']} / {n['below']} / {n['n.s.']}" for n in cells_) + " |")
    return "\n".join(lines) + "\n"


def update_readme(readme: Path, text: str, begin: str = BEGIN, end: str = END) -> None:
    doc = readme.read_text()
    if begin not in doc or end not in doc:
        raise SystemExit(f"claims: {readme} has no {begin} … {end} markers")
    head, rest = doc.split(begin, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(f"{head}{begin}\n{text}{end}{tail}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m coxlmm.report.claims", description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="the folder holding the sweeps (outputs/multirun)")
    parser.add_argument("--readme", help="write the section between the README's claims markers")
    args = parser.parse_args(argv)
    root = Path(args.root)
    has_tables = {s: (root / s / "tables.csv").is_file() for s in (*PAPER_SWEEPS, "causal")}
    if not any(has_tables.values()):
        raise SystemExit(f"claims: no tables.csv under {root}/{{{','.join(has_tables)}}}: run make paper "
                         "(or make causal) first")
    # each block is rewritten only from its own sweeps: make causal alone leaves the paper's claims as they are
    if any(has_tables[s] for s in PAPER_SWEEPS):
        text = section(root)
        (root / "claims.md").write_text(text)
        if args.readme:
            update_readme(Path(args.readme), text)
        print(text)
    causal = read(root, "causal")
    if causal is not None:
        text = causal_section(causal)
        (root / "causal.md").write_text(text)
        if args.readme:
            update_readme(Path(args.readme), text, CAUSAL_BEGIN, CAUSAL_END)
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
