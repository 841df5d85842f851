"""A sweep's results on their own: each method's trials (table, JSON), validation loss against learning
rate (pruned trials marked), and the best settings as a YAML that ``compare --config`` takes as is."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import optuna
import yaml
from optuna.trial import TrialState

from ..config import Config
from ..experiment.sweep import apply, best_params
from ..utils import atomic_path, write_json, write_text
from . import plots
from .tables import md_table

BEST = "best.yaml"


def trial_rows(study: optuna.Study) -> list[dict]:
    rows = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        values = t.intermediate_values
        rows.append({"number": t.number, "state": t.state.name.lower(), "params": t.params,
                     "value": t.value if t.state == TrialState.COMPLETE else (values[max(values)] if values else None),
                     "last_step": max(values) if values else None, "seconds": t.user_attrs.get("seconds"),
                     "steps": t.user_attrs.get("steps"), "worker": t.user_attrs.get("worker")})
    return rows


def write_sweep_report(cfg: Config, studies: dict[str, optuna.Study], out: Path) -> list[Path]:
    """``best.yaml``, ``sweep.json``, ``sweep_lr.png`` and ``sweep.md`` in ``out``."""
    best = {m: best_params(s) for m, s in studies.items()}
    tuned = cfg
    for params in best.values():
        tuned = apply(tuned, params)
    tuned.train.lr = None  # each method's own tuned rate
    header = ("# peftsum sweep: each method's best settings on the validation split "
              f"({cfg.sweep.trials} trials of {cfg.sweep.steps} steps).\n# Use as is: peftsum compare --config "
              f"{out / BEST} --out DIR\n")
    write_text(out / BEST, header + yaml.safe_dump(tuned.to_dict(), sort_keys=False, allow_unicode=True))
    trials = {m: trial_rows(s) for m, s in studies.items()}
    objective = cfg.train.select_by
    write_json(out / "sweep.json", {"studies": {m: s.study_name for m, s in studies.items()}, "best": best,
                                    "trials": trials, "objective": objective})
    figure = plots.sweep_lr(trials, out / "sweep_lr.png", objective_label(objective))
    rows = sweep_table(trials, best, objective)
    what = ("validation loss" if objective == "loss" else
            f"validation ROUGE-Lsum (train.rouge_examples = {cfg.train.rouge_examples} articles, eval.decoding)")
    md = ["# peftsum sweep", "", f"Objective: {what} after {cfg.sweep.steps} optimizer steps "
          f"({cfg.sweep.reports} validations on the way, read by Optuna's median pruner); learning rate searched "
          f"log-uniformly within a factor {cfg.sweep.lr_factor:g} of each method's default. The test split was not "
          "read.", "", md_table(rows), "", f"![{objective_label(objective)} against learning rate]({figure.name})", "",
          f"Best settings: `{BEST}` (`peftsum compare --config {BEST}`).", ""]
    write_text(out / "sweep.md", "\n".join(md))
    return [out / BEST, out / "sweep.json", figure, out / "sweep.md"]


def objective_label(objective: str) -> str:
    return "validation loss" if objective == "loss" else "validation ROUGE-Lsum"


def sweep_table(trials: dict[str, list[dict]], best: dict[str, dict], objective: str = "loss") -> list[list[str]]:
    rows = [["method", "trials (pruned)", f"best {objective_label(objective)}", "best settings", "mean s / trial"]]
    pick = min if objective == "loss" else max
    for m, ts in trials.items():
        done = [t for t in ts if t["state"] == "complete"]
        secs = [t["seconds"] for t in ts if t["seconds"] is not None]
        rows.append([m, f"{len(ts)} ({len(ts) - len(done)})", f"{pick(t['value'] for t in done):.4f}",
                     ", ".join(f"{k.rsplit('.', 1)[-1]}={v:.3g}" if isinstance(v, float) else f"{k.rsplit('.', 1)[-1]}={v}"
                               for k, v in best[m].items()),
                     f"{sum(secs) / len(secs):.1f}" if secs else "–"])
    return rows


def tuning_section(out: Path) -> list[str]:
    """Markdown lines for a comparison configured from a sweep (its ``sweep.json`` copied beside the runs)."""
    path = out / "sweep.json"
    if not path.is_file():
        return []
    sweep = json.loads(path.read_text())
    lines = ["## Tuning", "", "The settings compared here were tuned per method on the validation split by "
             "`peftsum sweep` (the test split was not read). Its trials:", "",
             md_table(sweep_table(sweep["trials"], sweep["best"], sweep.get("objective", "loss"))), "",
             f"Its plot of {objective_label(sweep.get('objective', 'loss'))} against learning rate is among the "
             "figures below.", ""]
    return lines


def adopt_sweep(config_file: str | None, out: Path) -> None:
    """``compare --config DIR/best.yaml``: copy the sweep's record beside the runs, for the report."""
    if not config_file:
        return
    source = Path(config_file).parent
    if (source / "sweep.json").is_file() and Path(config_file).name == BEST:
        out.mkdir(parents=True, exist_ok=True)
        for name in ("sweep.json", "sweep_lr.png"):
            if (source / name).is_file():
                with atomic_path(out / name) as tmp:
                    shutil.copyfile(source / name, tmp)
