"""Experiment trackers (``--report-to``): TensorBoard, W&B, MLflow, Aim, ... through Accelerate's tracker
integration (``Accelerator(log_with=...)``, ``init_trackers``, ``log``), not writers of our own.

One tracker run per run directory (per method, per seed; per trial in a sweep), named by it, in the
project ``peftsum``; its hyperparameters are the whole config.  Every row the loop writes to
``metrics.jsonl`` is logged at its optimizer step: ``train/loss``, ``train/lr``, ``train/grad_norm``,
``train/tokens_per_second`` and ``validation/loss``; the final evaluation's figures at the last step.
Local trackers write under ``<out>/tracking/<run name>/`` (TensorBoard:
``tensorboard --logdir <out>/tracking``); MLflow follows ``MLFLOW_TRACKING_URI``, W&B its own settings.
The tracker packages are optional extras (``pip install 'peftsum[tensorboard]'``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from accelerate.tracking import get_available_trackers
from accelerate.utils import LoggerType

from ..config import flatten_dict
from ..errors import UserError

PROJECT = "peftsum"
# the package that provides each tracker (the extras of pyproject.toml where one exists)
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow-skinny", "aim": "aim",
            "comet_ml": "comet-ml", "clearml": "clearml", "dvclive": "dvclive", "swanlab": "swanlab",
            "trackio": "trackio"}
EXTRAS = {"tensorboard", "wandb", "mlflow", "aim"}


def resolve_trackers(names: list[str]) -> list[str]:
    """``--report-to`` as tracker names: ``none`` (or nothing) -> [], ``all`` -> every installed tracker; an
    unknown name or a tracker whose package is missing is a UserError that says what to install."""
    names = [n.strip().lower() for n in names if n.strip()]
    if not names or names == ["none"]:
        return []
    available = [str(t) for t in get_available_trackers()]
    if "all" in names:
        if not available:
            raise UserError("--report-to all: no experiment tracker is installed; e.g. pip install "
                            "'peftsum[tensorboard]'")
        return available
    known = [t for t in LoggerType.list() if t != "all"]
    for name in names:
        if name not in known:
            raise UserError(f"--report-to {name}: unknown tracker; valid: {', '.join(known)}, all, none")
        if name not in available:
            how = f"'peftsum[{name}]'" if name in EXTRAS else PACKAGES.get(name, name)
            raise UserError(f"--report-to {name}: the {PACKAGES.get(name, name)} package is not installed; "
                            f"pip install {how}")
    return list(dict.fromkeys(names))


def hyperparameters(cfg) -> dict:
    """The whole config, flat, as trackers take it (numbers, strings, booleans, None; lists as text)."""
    out = {}
    for k, v in flatten_dict(cfg.to_dict()).items():
        out[k] = v if v is None or isinstance(v, (bool, int, float, str)) else str(v)
    return out


def step_values(row: dict) -> tuple[dict, int] | None:
    """A ``metrics.jsonl`` row as tracker values and the optimizer step they belong to."""
    if row.get("type") == "train":
        values = {"train/loss": row["loss"], "train/lr": row["lr"], "train/grad_norm": row["grad_norm"],
                  "train/epoch": row["epoch"]}
        if row.get("tokens") and row.get("seconds"):
            values["train/tokens_per_second"] = row["tokens"] / row["seconds"]
        return values, row["step"]
    if row.get("type") == "eval":
        values = {"validation/loss": row["val_loss"]}
        if row.get("val_rougeLsum") is not None:  # train.select_by: rougeLsum
            values["validation/rougeLsum"] = row["val_rougeLsum"]
        return values, row["step"]
    return None


def final_values(results) -> dict:
    """The final evaluation of a run (its :class:`~peftsum.experiment.results.RunResult`) as tracker values."""
    scores, cost, params = results.eval, results.cost, results.params
    values = {"final/val_loss": scores.val_loss, "final/test_loss": scores.test_loss,
              "final/test_perplexity": scores.test_perplexity,
              **{f"final/{k}": v for k, v in scores.metrics.items()},
              "final/train_seconds": cost.train_seconds, "final/peak_memory_bytes": cost.peak_memory_bytes,
              "final/train_flops": cost.train_flops, "final/trainable_parameters": params.trainable}
    return {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class Tracking:
    """One tracker run on an Accelerator built with ``log_with`` (a no-op without trackers)."""

    def __init__(self, accelerator, cfg, root: Path, run_name: str, fresh: bool = True):
        """``fresh``: a run that starts over; what local trackers logged under its name before is removed, so
        its curves are not drawn twice (a resumed run keeps them and continues)."""
        self.accelerator, self.on = accelerator, bool(accelerator.log_with)
        self.last_step = 0
        if not self.on:
            return
        accelerator.trackers = []  # Accelerate keeps the trackers of the last init: one run at a time here
        folder = Path(root) / "tracking" / run_name
        if fresh and accelerator.is_main_process:
            shutil.rmtree(folder, ignore_errors=True)
        accelerator.project_configuration.logging_dir = str(folder)
        try:
            accelerator.init_trackers(PROJECT, config=hyperparameters(cfg),
                                      init_kwargs={"wandb": {"name": run_name}, "mlflow": {"run_name": run_name}})
        except Exception as e:  # a tracker's own refusal (a store it cannot open, a missing login): one line
            accelerator.trackers = []
            names = ", ".join(str(t) for t in accelerator.log_with)
            raise UserError(f"--report-to {names}: the tracker could not start: {str(e).splitlines()[0]}") from None

    def log_row(self, row: dict) -> None:
        """Sink of :class:`~peftsum.train.metrics_file.MetricsFile`: each row it writes, at its step."""
        got = step_values(row) if self.on else None
        if got is not None:
            values, step = got
            self.last_step = max(self.last_step, step)
            self.accelerator.log(values, step=step)

    def finish(self, values: dict | None = None) -> None:
        """Log ``values`` (the final figures) at the last step and close the tracker run."""
        if not self.on:
            return
        if values:
            self.accelerator.log(values, step=self.last_step)
        for tracker in self.accelerator.trackers:
            tracker.finish()
        self.accelerator.trackers = []
