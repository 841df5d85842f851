"""The metrics of a summary, each one entry of one registry that every figure of peftsum reads.

A metric is a :class:`Metric`: its name (its key in ``results.json``, ``predictions.jsonl``, ``results.csv`` and the
trackers), its label, a function of one (prediction, reference, article) — or, for a metric that runs a model, of
the whole split at once — whether higher is better, and what it needs.  The evaluation computes every selected
metric on every test article (``eval.metrics``; the default set is every metric that needs no model); the report
gives each one its mean, its bootstrap interval and the Holm-adjusted differences between methods, in the table of
its ``group``; the trackers, the model card, ``summarize --metrics`` and the grid's report read the same entries.

Adding a metric is one module that calls :func:`register` and one line in :data:`BUILTIN` (a user's own metric:
import its module before the run, e.g. from a plugin of theirs)::

    register(Metric("exclaims", "exclamations", "summary", per_example=lambda p, r, a: p.count("!"),
                    higher_is_better=None, needs_reference=False))
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import UserError

# the modules whose metrics exist in every run (each registers its own on import)
BUILTIN = ("peftsum.evaluate.metrics", "peftsum.evaluate.summary_stats", "peftsum.evaluate.bertscore")
HEADLINE = "rougeLsum"  # what ranks, selects and plots methods (summary-level ROUGE-L)
# the report's tables: agreement with the reference, and what the summaries are (no reference needed)
GROUPS = {"overlap": "Agreement with the reference", "summary": "What the summaries are"}


@dataclass(frozen=True)
class Metric:
    """One metric: ``per_example(prediction, reference, article) -> float`` or ``batch(predictions, references,
    articles, eval_cfg) -> list[float]`` (a metric that runs a model scores the split in batches)."""

    name: str  # the key in results.json, predictions.jsonl, results.csv and the trackers
    label: str  # how the tables and figures name it
    group: str  # one of GROUPS: the report's table it appears in
    per_example: Callable[[str, str, str], float] | None = None
    batch: Callable[[list[str], list[str], list[str], object], list[float]] | None = None
    higher_is_better: bool | None = True  # None: a description (a length, a share of copied text), not a quality
    needs_reference: bool = True  # False: it describes the summary alone (the references get it too; summarize)
    needs_article: bool = False  # reads the article: `report` loads the test split to add it to an older run
    needs_model: bool = False  # loads a model: off unless eval.metrics names it, never computed by `report`
    check: Callable[[object], None] | None = None  # f(eval_cfg) before a run starts: what it needs is there
    fmt: str = ".2f"  # how tables print it
    about: str = ""  # one sentence for the report: what it measures and how

    def __post_init__(self):
        if (self.per_example is None) == (self.batch is None):
            raise ValueError(f"metric {self.name}: give per_example or batch, not both or neither")
        if self.group not in GROUPS:
            raise ValueError(f"metric {self.name}: group {self.group!r} is not one of {', '.join(GROUPS)}")

    @property
    def default(self) -> bool:
        """Computed in every evaluation unless ``eval.metrics`` lists the metrics to compute."""
        return not self.needs_model

    def score(self, predictions: list[str], references: list[str], articles: list[str], eval_cfg=None) -> list[float]:
        """One value per article."""
        if self.batch is not None:
            values = self.batch(predictions, references, articles, eval_cfg)
        else:
            values = [self.per_example(p, r, a) for p, r, a in zip(predictions, references, articles)]
        return [float(v) for v in values]


_REGISTRY: dict[str, Metric] = {}
_loaded = False


def register(metric: Metric) -> Metric:
    """Add ``metric`` (a name registered again is replaced: a module imported twice registers the same entry)."""
    _REGISTRY[metric.name] = metric
    return metric


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def registry() -> dict[str, Metric]:
    """Every registered metric by name, in the order of registration (the built-in ones first)."""
    global _loaded
    if not _loaded:
        for module in BUILTIN:
            importlib.import_module(module)
        _loaded = True
    return _REGISTRY


def get(name: str) -> Metric:
    return registry()[name]


def label(name: str) -> str:
    return registry()[name].label


def selected(names: list[str] | None) -> list[Metric]:
    """The metrics an evaluation computes: ``names`` (``eval.metrics``) or, when None, every default metric.
    ROUGE-Lsum is always among them: it ranks methods and selects checkpoints."""
    reg = registry()
    if names is None:
        return [m for m in reg.values() if m.default]
    unknown = [n for n in names if n not in reg]
    if unknown:
        raise UserError(f"eval.metrics: unknown metric(s) {', '.join(unknown)}; registered: {', '.join(reg)}")
    chosen = list(dict.fromkeys([HEADLINE, *names]))
    return [reg[n] for n in reg if n in chosen]


def checked(names: list[str] | None, eval_cfg=None) -> list[Metric]:
    """:func:`selected`, each metric's ``check`` run: before a run starts, not after its training."""
    metrics = selected(names)
    for m in metrics:
        if m.check is not None:
            m.check(eval_cfg)
    return metrics


def per_article(metrics: list[Metric], predictions: list[str], references: list[str], articles: list[str],
                eval_cfg=None) -> dict[str, list[float]]:
    """Each metric's value on each article: the per-example ones article by article (the metrics that share work,
    ROUGE's four or the fragments' three, find it in their caches right away), the batch ones over the split."""
    values: dict[str, list[float]] = {m.name: [] for m in metrics}
    one = [m for m in metrics if m.batch is None]
    for p, r, a in zip(predictions, references, articles):
        for m in one:
            values[m.name].append(float(m.per_example(p, r, a)))
    for m in metrics:
        if m.batch is not None:
            values[m.name] = m.score(predictions, references, articles, eval_cfg)
    return values


def score_all(metrics: list[Metric], predictions: list[str], references: list[str], articles: list[str],
              eval_cfg=None) -> tuple[dict[str, list[float]], list[dict]]:
    """Each metric's values on the split, and for each article the reference's own values of the metrics that need
    no reference (what a reference summary is, the baseline every method's summaries are read against)."""
    values = per_article(metrics, predictions, references, articles, eval_cfg)
    of_refs = per_article([m for m in metrics if not m.needs_reference], references, references, articles, eval_cfg)
    per_reference = [{name: v[j] for name, v in of_refs.items()} for j in range(len(references))]
    return values, per_reference
