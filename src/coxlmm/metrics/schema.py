"""What a metric's outputs mean: the description every view renders (tables, browser, summary, W&B).

A metric returns its numbers *with* a `Schema` that says what each one is, so no view needs to know
a metric's keys (a test greps `src/` for key literals outside `metrics/`):

    Score          one value of metrics.json: `key`, display `label`, the `tables` it belongs to (and
                   the `row` of them, e.g. "CS" or a factor), whose it is (`of`: None for the
                   dictionary's own score, else the baseline's display name, e.g. "Rnd-Words"),
                   the key of its spread over samples (`spread`), whether higher is better
                   (`better`: +1, -1, 0), and whether it is a headline number (`summary`) or a
                   curve over a swept layer / K (`curve`).
    Samples        one per-sample score array, written to samples.safetensors: (M,) for one value per
                   unit, (M, R) for R draws of a null per unit (Rnd-Words, Noise-Imgs). `unit` says
                   what a row is: "sample" (a test sample, paired across jobs by its id) or
                   "concept" (unpaired). `nulls`: the arrays it is compared with, per unit.
    ConceptColumn  one per-concept value (concepts.json `scores` and the concept browser).
    TableSpec      a table's title, note and layout; `pivot`: methods as columns (paper Table 1),
                   else one row per (method, token, row).

The schema is data (JSON-able dataclasses); `Schema.merge` joins the schemas of a run's metrics and
the jobs of a sweep. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass(frozen=True)
class Score:
    key: str  # metrics.json key (without a multi-layer run's `layer_<name>/` prefix)
    label: str  # column title (or, in a pivoted table, the row title when `row` is None)
    tables: tuple[str, ...] = ()  # TableSpec names; () = in no table (the browser and W&B still show it)
    row: str | None = None  # sub-row of the table ("CS", a factor, ...); None: the group's main row
    of: str | None = None  # None: the dictionary's score; else the baseline / control / null it belongs to
    spread: str | None = None  # key of this score's std over the job's samples (shown with one seed)
    ci: tuple[str, str] | None = None  # keys of its 95 % interval (shown with one seed, instead of a spread)
    better: int = 0  # +1 higher is better, -1 lower is better, 0 neither
    summary: bool = False  # a headline number: the printed summary, the sweep index, W&B's summary
    curve: bool = False  # shown in the by-layer and by-K tables when a sweep varies them
    last: bool = False  # in a pivoted table, the column goes after the methods' (e.g. GT-captions)
    objective: bool = False  # the value a Hydra sweeper optimises (the job's return value), in its `better` sense
    digits: int = 3


def with_spreads(scores: list[Score]) -> list[Score]:
    """The scores and a description of each one's spread key ("<label>: std over samples", in no table)."""
    out = list(scores)
    have = {s.key for s in scores}
    for s in scores:
        if s.spread and s.spread not in have:
            label = s.label + (f" ({s.of})" if s.of else "") + (f" · {s.row}" if s.row and s.row != s.label else "")
            out.append(Score(s.spread, f"{label}: std over samples", digits=s.digits))
            have.add(s.spread)
    return out


@dataclass(frozen=True)
class Samples:
    name: str  # the array's name in samples.safetensors
    label: str  # display name, e.g. "CS"
    of: str | None = None  # None: the dictionary's; else the null's display name
    unit: str = "sample"  # "sample": rows are test samples, paired across methods by id; "concept": unpaired
    nulls: tuple[str, ...] = ()  # names of the arrays this one is compared with, unit by unit
    better: int = 1


@dataclass(frozen=True)
class ConceptColumn:
    key: str  # key in each concept's `scores` (concepts.json, report.json)
    label: str
    better: int = 0
    null: str | None = None  # the key of the same score for this concept's null (scatter plots)
    sortable: bool = False  # offered as a sort key in the concept browser


@dataclass(frozen=True)
class TableSpec:
    name: str
    title: str
    note: str = ""
    pivot: bool = False  # methods as columns (paper Table 1, overlap); else one row per method
    token_mean: bool = False  # a pivoted table adds a row with the mean (± std) over tokens
    by_layer: bool = False  # one row per layer of a multi-layer job (else the representative layer only)
    order: int = 50  # tables are written in this order


@dataclass
class Schema:
    scores: list[Score] = field(default_factory=list)
    samples: list[Samples] = field(default_factory=list)
    concepts: list[ConceptColumn] = field(default_factory=list)
    tables: list[TableSpec] = field(default_factory=list)

    def merge(self, *others: "Schema") -> "Schema":
        """This schema and `others`, first description of each key kept, order kept."""
        out = Schema(list(self.scores), list(self.samples), list(self.concepts), list(self.tables))
        for o in others:
            for name, key in (("scores", "key"), ("samples", "name"), ("concepts", "key"), ("tables", "name")):
                have = {getattr(x, key) for x in getattr(out, name)}
                getattr(out, name).extend(x for x in getattr(o, name) if getattr(x, key) not in have)
        return out

    def only(self, keys) -> "Schema":
        """The schema restricted to the scores whose key is in `keys` (what a run actually produced)."""
        keys = set(keys)
        return Schema([s for s in self.scores if s.key in keys], list(self.samples), list(self.concepts),
                      list(self.tables))

    def score(self, key: str) -> Score | None:
        return next((s for s in self.scores if s.key == key), None)

    def table(self, name: str) -> TableSpec:
        return next((t for t in self.tables if t.name == name), TableSpec(name, name))

    def to_json(self) -> dict[str, Any]:
        return {name: [{k: v for k, v in asdict(x).items()} for x in getattr(self, name)]
                for name in ("scores", "samples", "concepts", "tables")}

    @classmethod
    def from_json(cls, doc: dict[str, Any] | None) -> "Schema":
        doc = doc or {}
        types = {"scores": Score, "samples": Samples, "concepts": ConceptColumn, "tables": TableSpec}

        def make(t, d):
            names = {f.name for f in fields(t)}
            d = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in names}
            return t(**d)

        return cls(**{name: [make(t, d) for d in doc.get(name, [])] for name, t in types.items()})

    def headline(self) -> list[Score]:
        return [s for s in self.scores if s.summary]

    def objective(self, values: dict[str, float]) -> float | None:
        """The job's value for a Hydra sweeper that minimises: the first `objective` score present,
        negated when higher is better; None when there is none."""
        s = next((s for s in self.scores if s.objective and s.key in values), None)
        if s is None:
            return None
        return -float(values[s.key]) if s.better > 0 else float(values[s.key])
