"""Collect the finished runs of a comparison and attach the statistics the report shows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..config import METHODS, PEFT_METHOD
from ..errors import UserError
from ..evaluate.metrics import ROUGE_KEYS
from ..experiment import read_metrics
from ..utils import read_jsonl
from . import bootstrap

KEYS = ROUGE_KEYS
ALPHA = 0.05


def _load_run(run: Path) -> dict:
    p = run / "results.json"
    try:
        r = json.loads(p.read_text())
    except ValueError:
        raise UserError(f"{p} is not valid JSON; delete that run directory and run compare again") from None
    pred = run / "predictions.jsonl"
    r["_predictions"] = read_jsonl(pred) if pred.is_file() else []
    r["_metrics"] = read_metrics(run)
    return r


def method_runs(out: Path, method: str) -> list[dict]:
    """A method's finished runs: ``out/<method>`` (one seed) or ``out/<method>/seed-<n>`` (several)."""
    folder = out / method
    if (folder / "results.json").is_file():
        return [_load_run(folder)]
    seeds = sorted((p for p in folder.glob("seed-*") if (p / "results.json").is_file()),
                   key=lambda p: int(p.name.split("-", 1)[1]) if p.name.split("-", 1)[1].isdigit() else 0)
    return [_load_run(p) for p in seeds]


def _mean_std(values: list) -> tuple[float | None, float | None]:
    vals = [v for v in values if v is not None]
    if not vals:
        return None, None
    return float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else None


def aggregate(seed_runs: list[dict]) -> dict:
    """One method's row from its runs over seeds: numeric figures as the mean across seeds, their standard
    deviation beside them (``<section>_std``), each seed's run kept under ``seeds``."""
    r = dict(seed_runs[0])
    r["seeds"] = seed_runs
    r["seed_values"] = [s["config"]["train"]["seed"] for s in seed_runs]
    for section in ("eval", "cost"):
        mean, std = dict(r[section]), {}
        for k, v in r[section].items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                mean[k], std[k] = _mean_std([s[section].get(k) for s in seed_runs])
        r[section], r[f"{section}_std"] = mean, std
    return r


def collect(out: Path) -> list[dict]:
    """The finished runs under ``out`` (one row per method, over its seeds); all share one test set."""
    peft = sorted(p.name for p in out.glob(f"{PEFT_METHOD}-*") if p.is_dir())  # any PEFT tuner's runs
    runs = [aggregate(seed_runs) for m in (*METHODS, *peft) if (seed_runs := method_runs(out, m))]
    if not runs:
        raise UserError(f"no finished runs (results.json) under {out}")
    check_same_test_set(runs)
    return runs


def check_same_test_set(runs: list[dict]) -> None:
    """Every figure compares methods on the same articles: runs evaluated on different test sets (another
    --eval.limit, another data subset) are not compared."""
    sets = {}
    for r in runs:
        for seed_run in r.get("seeds", [r]):
            name = r["method"] + (f" seed {seed_run['config']['train']['seed']}" if len(r.get("seeds", [])) > 1 else "")
            sets[name] = frozenset(p["id"] for p in seed_run["_predictions"])
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


def with_intervals(runs: list[dict], resamples: int) -> tuple[list[dict], dict]:
    """Attach bootstrap intervals to each method and paired differences to each pair, on the test articles.

    Two levels: every resample draws test articles (the same draw for every method: paired) and, for
    each method, its seeds (independently), so an interval holds both the articles' and the training
    runs' variance.  With one seed per method this is the plain paired bootstrap over articles."""
    ids = [p["id"] for p in runs[0]["_predictions"]]
    idx = bootstrap.resample_indices(len(ids), resamples) if ids else None
    scores, seed_idx = {}, {}
    for j, r in enumerate(runs):
        seed_runs = r.get("seeds", [r])
        by_seed = [{p["id"]: p for p in s["_predictions"]} for s in seed_runs]
        scores[r["method"]] = {k: np.array([[b[i][k] for i in ids] for b in by_seed]) for k in KEYS}
        seed_idx[r["method"]] = bootstrap.resample_indices(len(seed_runs), resamples, seed=1000 + j)
        r["ci"] = {k: bootstrap.interval_two_level(scores[r["method"]][k], idx, seed_idx[r["method"]]) if ids
                   else (r["eval"][k], None, None) for k in KEYS}
    pairs = {}
    for i, a in enumerate(runs):
        for b in runs[i + 1:]:
            if ids:
                pairs[(a["method"], b["method"])] = {
                    k: bootstrap.paired_difference_two_level(scores[a["method"]][k], scores[b["method"]][k], idx,
                                                             seed_idx[a["method"]], seed_idx[b["method"]])
                    for k in KEYS}
    for k in KEYS:  # Holm-Bonferroni over all pairs of one metric
        adjusted = bootstrap.holm([d[k]["p"] for d in pairs.values()])
        for d, p in zip(pairs.values(), adjusted):
            d[k]["p_holm"] = p
            d[k]["significant"] = p < ALPHA
    seeds = sorted({len(r.get("seeds", [r])) for r in runs})
    return runs, {"n": len(ids), "resamples": resamples, "pairs": pairs, "seeds": seeds}
