"""Collect the finished runs of a comparison and attach the statistics the report shows."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import METHODS, PEFT_METHOD
from ..data.prepare import test_articles
from ..errors import UserError
from ..evaluate.registry import Metric, per_article, registry
from ..experiment import RESULTS, RunResult, read_metrics, read_results
from ..utils import read_jsonl
from . import bootstrap

ALPHA = 0.05
log = logging.getLogger(__name__)


@dataclass
class SeedRun:
    """One finished run directory: its results record, its test predictions and its metrics lines."""

    result: RunResult
    predictions: list[dict]
    metrics: list[dict]


@dataclass
class MethodRuns:
    """One method's row of the report: each seed's run, and ``result``: their mean (``eval`` and ``cost`` averaged
    over the seeds, their standard deviations in ``eval_std`` / ``cost_std``; every other section the first
    seed's).  ``ci``: the bootstrap interval of each metric, attached by :func:`with_intervals`."""

    result: RunResult
    seeds: list[SeedRun]
    eval_std: dict = field(default_factory=dict)
    cost_std: dict = field(default_factory=dict)
    ci: dict = field(default_factory=dict)

    @property
    def method(self) -> str:
        return self.result.method

    @property
    def predictions(self) -> list[dict]:
        return self.seeds[0].predictions

    @property
    def metrics(self) -> list[dict]:
        return self.seeds[0].metrics


def _load_run(run: Path) -> SeedRun:
    pred = run / "predictions.jsonl"
    return SeedRun(read_results(run), read_jsonl(pred) if pred.is_file() else [], read_metrics(run))


def method_runs(out: Path, method: str) -> list[SeedRun]:
    """A method's finished runs: ``out/<method>`` (one seed) or ``out/<method>/seed-<n>`` (several)."""
    folder = out / method
    if (folder / RESULTS).is_file():
        return [_load_run(folder)]
    seeds = sorted((p for p in folder.glob("seed-*") if (p / RESULTS).is_file()),
                   key=lambda p: int(p.name.split("-", 1)[1]) if p.name.split("-", 1)[1].isdigit() else 0)
    return [_load_run(p) for p in seeds]


def _mean_std(values: list) -> tuple[float | None, float | None]:
    vals = [v for v in values if v is not None]
    if not vals:
        return None, None
    return float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else None


def aggregate(seed_runs: list[SeedRun]) -> MethodRuns:
    """One method's row from its runs over seeds: each number of ``eval`` (each metric included) and ``cost`` as the
    mean across seeds, its standard deviation beside it."""
    first = seed_runs[0].result
    means, stds = {}, {}
    for section in ("eval", "cost"):
        record, mean, std = getattr(first, section), {}, {}
        for f in dataclasses.fields(record):
            v = getattr(record, f.name)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                values = [getattr(getattr(s.result, section), f.name) for s in seed_runs]
                mean[f.name], std[f.name] = _mean_std(values)
                if all(x == v for x in values):  # the same in every seed (a count, a byte size): kept as it is
                    mean[f.name] = v
        if section == "eval":
            names = [k for k in record.metrics if all(k in s.result.eval.metrics for s in seed_runs)]
            mean["metrics"] = {}
            for k in names:
                mean["metrics"][k], std[k] = _mean_std([s.result.eval.metrics[k] for s in seed_runs])
        means[section], stds[section] = dataclasses.replace(record, **mean), std
    return MethodRuns(dataclasses.replace(first, **means), seed_runs, stds["eval"], stds["cost"])


def complete_metrics(seed_runs: list[SeedRun], articles: Callable[[], dict[str, str] | None]) -> None:
    """Score what a run's predictions lack of the default metrics (a run made before a metric existed; a run whose
    ``eval.metrics`` chose its own is left as it is): each article's value into its prediction row (and the
    reference's own into ``reference_metrics``), the mean into ``eval.metrics``.  ``articles()`` gives the test
    articles by id, or None where they cannot be read (offline, the source gone): it is called only when a missing
    metric reads the article, and without them those metrics stay missing."""
    wanted = [m for m in registry().values() if m.default]
    for run in seed_runs:
        rows = run.predictions
        if not rows or run.result.config.eval.metrics is not None:
            continue
        missing = [m for m in wanted if any(m.name not in p for p in rows)]
        refs_missing = [m for m in wanted if not m.needs_reference
                        and any(m.name not in p.get("reference_metrics", {}) for p in rows)]
        by_id = articles() if any(m.needs_article for m in [*missing, *refs_missing]) else {}
        if by_id is None or any(p["id"] not in by_id for p in rows):
            missing = [m for m in missing if not m.needs_article]
            refs_missing = [m for m in refs_missing if not m.needs_article]
        arts = [by_id.get(p["id"], "") for p in rows] if by_id else [""] * len(rows)
        preds, refs = [p["prediction"] for p in rows], [p["reference"] for p in rows]
        for name, values in per_article(missing, preds, refs, arts).items():
            for p, v in zip(rows, values):
                p[name] = v
            run.result.eval.metrics[name] = float(np.mean(values))
        for name, values in per_article(refs_missing, refs, refs, arts).items():
            for p, v in zip(rows, values):
                p.setdefault("reference_metrics", {})[name] = v


def shown_metrics(runs: list[MethodRuns]) -> list[Metric]:
    """The registered metrics every run holds, in the registry's order: what the report shows (from each article's
    values in the predictions, or from results.json's mean where a run kept no predictions)."""
    def has(run: SeedRun, name: str) -> bool:
        return all(name in p for p in run.predictions) if run.predictions else name in run.result.eval.metrics

    return [m for name, m in registry().items() if all(has(s, name) for r in runs for s in r.seeds)]


def collect(out: Path) -> list[MethodRuns]:
    """The finished runs under ``out`` (one row per method, over its seeds); all share one test set.  A run made
    before a metric that needs no model existed gets it from its predictions and the test articles."""
    peft = sorted(p.name for p in out.glob(f"{PEFT_METHOD}-*") if p.is_dir())  # any PEFT tuner's runs
    found = [seed_runs for m in (*METHODS, *peft) if (seed_runs := method_runs(out, m))]
    if not found:
        raise UserError(f"no finished runs ({RESULTS}) under {out}")
    loaded: dict = {}

    def articles() -> dict[str, str] | None:  # the test articles, loaded once for every run that needs them
        if "test" not in loaded:
            try:
                loaded["test"] = test_articles(found[0][0].result.config.data)
            except Exception as e:  # offline, the source moved: the report goes on without what needs the article
                loaded["test"] = None
                log.warning("the test articles of %s could not be read (%s): the statistics that need the article "
                            "are left out for runs made before they existed", found[0][0].result.config.data.source,
                            str(e).splitlines()[0] if str(e) else type(e).__name__)
        return loaded["test"]

    for seed_runs in found:
        complete_metrics(seed_runs, articles)
    runs = [aggregate(seed_runs) for seed_runs in found]
    check_same_test_set(runs)
    return runs


def check_same_test_set(runs: list[MethodRuns]) -> None:
    """Every figure compares methods on the same articles: runs evaluated on different test sets (another
    --eval.limit, another data subset) are not compared."""
    sets = {}
    for r in runs:
        for seed_run in r.seeds:
            name = r.method + (f" seed {seed_run.result.config.train.seed}" if len(r.seeds) > 1 else "")
            sets[name] = frozenset(p["id"] for p in seed_run.predictions)
    first = next(iter(sets))
    differ = [m for m, s in sets.items() if s != sets[first]]
    if differ:
        sizes = ", ".join(f"{m}: {len(s)}" for m, s in sets.items())
        raise UserError(f"the runs were evaluated on different test articles ({sizes} articles; "
                        f"{', '.join(differ)} differ from {first}); rerun them with the same data and "
                        "eval.limit (compare --rerun) before comparing")


def flatten(d: dict, prefix: str = "") -> dict:
    flat = {}
    for k, v in d.items():
        if k.startswith("_"):
            continue
        if isinstance(v, dict):
            flat.update(flatten(v, f"{prefix}{k}."))
        elif isinstance(v, list):
            flat[f"{prefix}{k}"] = json.dumps(v)
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def with_intervals(runs: list[MethodRuns], resamples: int) -> tuple[list[MethodRuns], dict]:
    """Attach bootstrap intervals to each method and paired differences to each pair, on the test articles, for
    every metric the report shows (``boot["metrics"]``), and the references' own values of the metrics that need no
    reference with their intervals (``boot["references"]``).

    Two levels: every resample draws test articles (the same draw for every method: paired) and, for
    each method, its seeds (independently), so an interval holds both the articles' and the training
    runs' variance.  With one seed per method this is the plain paired bootstrap over articles."""
    metrics = shown_metrics(runs)
    keys = [m.name for m in metrics]
    ids = [p["id"] for p in runs[0].predictions]
    idx = bootstrap.resample_indices(len(ids), resamples) if ids else None
    scores, seed_idx = {}, {}
    for j, r in enumerate(runs):
        by_seed = [{p["id"]: p for p in s.predictions} for s in r.seeds]
        scores[r.method] = {k: np.array([[b[i][k] for i in ids] for b in by_seed]) for k in keys}
        seed_idx[r.method] = bootstrap.resample_indices(len(r.seeds), resamples, seed=1000 + j)
        r.ci = {k: bootstrap.interval_two_level(scores[r.method][k], idx, seed_idx[r.method]) if ids
                else (r.result.eval.value(k), None, None) for k in keys}
    pairs = {}
    for i, a in enumerate(runs):
        for b in runs[i + 1:]:
            if ids:
                pairs[(a.method, b.method)] = {
                    k: bootstrap.paired_difference_two_level(scores[a.method][k], scores[b.method][k], idx,
                                                             seed_idx[a.method], seed_idx[b.method])
                    for k in keys}
    for k in keys:  # Holm-Bonferroni over all pairs of one metric
        adjusted = bootstrap.holm([d[k]["p"] for d in pairs.values()])
        for d, p in zip(pairs.values(), adjusted):
            d[k]["p_holm"] = p
            d[k]["significant"] = p < ALPHA
    references = {}
    rows = runs[0].predictions
    for m in metrics:
        if not m.needs_reference and ids:
            values = [p.get("reference_metrics", {}).get(m.name) for p in rows]
            if all(v is not None for v in values):
                references[m.name] = bootstrap.interval(values, idx)
    seeds = sorted({len(r.seeds) for r in runs})
    return runs, {"n": len(ids), "resamples": resamples, "pairs": pairs, "seeds": seeds, "metrics": metrics,
                  "references": references}
