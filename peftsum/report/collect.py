"""Collect the finished runs of a comparison and attach the statistics the report shows."""

from __future__ import annotations

import json
from pathlib import Path

from ..config import METHODS
from ..errors import UserError
from ..experiment import read_metrics
from ..utils import read_jsonl
from . import bootstrap

KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")
ALPHA = 0.05


def collect(out: Path) -> list[dict]:
    """The finished runs under ``out``, with their predictions and metrics; all must share one test set."""
    runs = []
    for m in METHODS:
        p = out / m / "results.json"
        if p.is_file():
            try:
                r = json.loads(p.read_text())
            except ValueError:
                raise UserError(f"{p} is not valid JSON; delete that run directory and run compare again") from None
            pred = out / m / "predictions.jsonl"
            r["_predictions"] = read_jsonl(pred) if pred.is_file() else []
            r["_metrics"] = read_metrics(out / m)
            runs.append(r)
    if not runs:
        raise UserError(f"no finished runs (results.json) under {out}")
    check_same_test_set(runs)
    return runs


def check_same_test_set(runs: list[dict]) -> None:
    """Every figure compares methods on the same articles: runs evaluated on different test sets (another
    --eval.limit, another data subset) are not compared."""
    sets = {r["method"]: frozenset(p["id"] for p in r["_predictions"]) for r in runs}
    first = runs[0]["method"]
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
    """Attach bootstrap CIs to each run; pairwise paired differences on the shared test articles."""
    ids = None
    for r in runs:
        s = [p["id"] for p in r["_predictions"]]
        present = set(s)
        ids = s if ids is None else [i for i in ids if i in present]
    ids = ids or []
    idx = bootstrap.resample_indices(len(ids), resamples) if ids else None
    scores = {}
    for r in runs:
        by_id = {p["id"]: p for p in r["_predictions"]}
        scores[r["method"]] = {k: [by_id[i][k] for i in ids] for k in KEYS}
        r["ci"] = {k: bootstrap.interval(scores[r["method"]][k], idx) if ids else (r["eval"][k], None, None)
                   for k in KEYS}
    pairs = {}
    for i, a in enumerate(runs):
        for b in runs[i + 1:]:
            if ids:
                pairs[(a["method"], b["method"])] = {
                    k: bootstrap.paired_difference(scores[a["method"]][k], scores[b["method"]][k], idx) for k in KEYS}
    for k in KEYS:  # Holm-Bonferroni over all pairs of one metric
        adjusted = bootstrap.holm([d[k]["p"] for d in pairs.values()])
        for d, p in zip(pairs.values(), adjusted):
            d[k]["p_holm"] = p
            d[k]["significant"] = p < ALPHA
    return runs, {"n": len(ids), "resamples": resamples, "pairs": pairs}
