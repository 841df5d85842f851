"""``peftsum sweep``: each method tuned on the validation split, one Optuna study per method.

A trial is a short run of the shared training loop (``sweep.steps`` optimizer steps) whose objective is
the validation loss at its end; it validates ``sweep.reports`` times on the way, and Optuna's pruner
stops trials that trail the others.  The search space per method: the learning rate, log-uniform in
[default / f, default * f] around the method's own default (prompt tuning's range sits orders of
magnitude above full fine-tuning's), and optionally LoRA's rank, the number of soft tokens, or
last-layer's blocks (``sweep.*`` lists).  The test split is never loaded.

Storage: Optuna's journal file ``DIR/optuna.journal`` by default (several processes on one machine can
work one study, and a sweep killed at any point continues when run again), or any database URL Optuna
accepts (``--storage postgresql://...``): workers on many machines then share the studies, which is
Optuna's own distributed mode.  A study stops at ``sweep.trials`` finished trials, whoever ran them.

Trials in one process share the loaded base model (each trial adapts a copy, so the base stays as
loaded) and the tokenized data.
"""

from __future__ import annotations

import copy
import math
import os
import socket
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna
import torch
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import TrialState

from ..config import Config, section_key
from ..data.tokenize import load_tokenized
from ..errors import UserError
from ..methods import build_method, entry, trained_methods
from ..model.loading import (
    load_model,
    load_tokenizer,
    n_positions,
    resolve_model_name,
    set_dropout,
)
from ..train.loop import Trainer, steps_per_epoch
from ..train.loss import SummaryLM
from ..train.metrics_file import MetricsFile
from ..train.tracking import Tracking
from ..utils import is_main_process, release_memory
from .compare import method_config
from .run import accelerator_for, adapt, base_for, run_dtype

JOURNAL = "optuna.journal"
optuna.logging.set_verbosity(optuna.logging.WARNING)  # peftsum prints one line per trial itself
DONE = (TrialState.COMPLETE, TrialState.PRUNED)


def open_storage(out: Path, url: str | None):
    """Optuna's journal file in ``out`` by default, or the database at ``url`` (with heartbeats, so a
    trial whose worker died is failed and its place taken by a new one)."""
    if url:
        try:
            return optuna.storages.RDBStorage(url, heartbeat_interval=60, grace_period=180)
        except Exception as e:  # a bad URL, an unreachable server, a missing driver: one clear line
            raise UserError(f"could not open the Optuna storage {url!r}: {str(e).splitlines()[0]}") from None
    out.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(out / JOURNAL)))


def objective(cfg: Config) -> str:
    """What a trial maximises or minimises: ``loss`` or ``rougeLsum`` (``train.select_by``)."""
    return cfg.train.select_by


def study_name(method: str, cfg: Config | None = None) -> str:
    """One Optuna study per method and objective (a loss study is minimised, a ROUGE one maximised)."""
    return f"peftsum-{method}" + ("" if cfg is None or objective(cfg) == "loss" else f"-{objective(cfg)}")


def _worker() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_dead_trials(study: optuna.Study) -> None:
    """A trial left RUNNING by a worker of this machine that no longer exists (killed) is marked failed,
    so the study runs another in its place.  Workers elsewhere are covered by the storage's heartbeat."""
    host = socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker", "")
        name, _, pid = worker.rpartition(":")
        if name == host and pid.isdigit() and not _alive(int(pid)):
            study.tell(t.number, state=TrialState.FAIL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


@dataclass
class SweepResources:
    """What every trial of one process shares: the base model as loaded, its tokenizer, and the tokenized
    train and validation splits (by number of soft tokens, which changes the article budget)."""

    cfg: Config
    base: torch.nn.Module
    tokenizer: object
    positions: int
    _data: dict
    out: Path = Path(".")  # the sweep's folder (trackers log under out/tracking)

    @classmethod
    def load(cls, cfg: Config, out: Path = Path(".")) -> SweepResources:
        name = resolve_model_name(cfg.model.name)
        base = load_model(name, cfg.model.trust_remote_code, attn_implementation=cfg.model.attn_implementation)
        set_dropout(base, cfg.model.dropout)
        tokenizer = load_tokenizer(cfg.model.tokenizer or name, cfg.model.trust_remote_code)
        return cls(cfg, base, tokenizer, n_positions(base), {}, out)

    def splits(self, num_virtual: int) -> dict:
        """train and validation only: a sweep never reads the test split."""
        if num_virtual not in self._data:
            data, _, _ = load_tokenized(self.cfg.data, self.tokenizer, self.positions, num_virtual,
                                        self.cfg.virtual_token_reserve(), self.cfg.generation_tokens())
            self._data[num_virtual] = {"train": data["train"], "validation": data["validation"]}
        return self._data[num_virtual]


def default_lr(cfg: Config, method: str) -> float:
    return getattr(cfg.method, section_key(method)).lr


def suggest(trial: optuna.Trial, cfg: Config, method: str) -> dict[str, object]:
    """The trial's settings, as config keys (``method.lora.lr`` ...)."""
    section = section_key(method)
    lr0, f = default_lr(cfg, method), cfg.sweep.lr_factor
    params: dict[str, object] = {f"method.{section}.lr": trial.suggest_float("lr", lr0 / f, lr0 * f, log=True)}
    for key, values in entry(method).search_space(cfg.sweep):
        if values:
            params[f"method.{section}.{key}"] = trial.suggest_categorical(key, list(values))
    return params


def apply(cfg: Config, params: dict[str, object]) -> Config:
    out = copy.deepcopy(cfg)
    for key, value in params.items():
        section, name, field = key.split(".")
        setattr(getattr(getattr(out, section), name), field, value)
    return out


def trial_config(cfg: Config, method: str, params: dict[str, object], steps_per_epoch: int) -> Config:
    """The short run of a trial: ``sweep.steps`` steps, validations for the pruner, no early stopping."""
    tcfg = apply(cfg, params)
    tcfg.method.name = method
    sweep = cfg.sweep
    tcfg.train.lr = None  # each method's own (suggested) rate
    tcfg.train.max_steps = sweep.steps
    tcfg.train.epochs = max(1, math.ceil(sweep.steps / steps_per_epoch))
    tcfg.train.eval_every_steps = max(1, sweep.steps // sweep.reports)
    tcfg.train.patience = None
    tcfg.train.val_limit = sweep.val_limit
    tcfg.train.progress = False
    tcfg.train.checkpoint_every_steps = 10**9
    return tcfg


def run_trial(res: SweepResources, trial: optuna.Trial, method: str) -> float:
    """One trial: adapt a copy of the base model, train ``sweep.steps`` steps, return the validation loss."""
    params = suggest(trial, res.cfg, method)
    trial.set_user_attr("params", params)
    probe = apply(res.cfg, params)
    probe.method.name = method
    mth = build_method(probe)
    data = res.splits(mth.num_virtual_tokens)
    world = accelerator_for(res.cfg).num_processes
    per_epoch = steps_per_epoch(len(data["train"]), res.cfg.train.batch_size, world, res.cfg.train.grad_accum)
    tcfg = trial_config(res.cfg, method, params, per_epoch)
    accelerator = accelerator_for(tcfg)
    method_obj = build_method(tcfg, res.tokenizer, run_dtype(tcfg, accelerator.device))
    # the shared base stays as loaded (a copy is adapted); QLoRA's is quantized as it loads, for each trial
    model = adapt(base_for(tcfg, accelerator.device, None if tcfg.quantization() != "none" else res.base), method_obj,
                  accelerator.device)
    t0 = time.perf_counter()
    tracking = Tracking(accelerator, tcfg, res.out, f"{method}/trial-{trial.number}")
    last: dict[str, float] = {}

    def report(step: int, value: float) -> None:  # the pruner reads every validation
        last["value"] = value
        trial.report(value, step)
        if step < tcfg.train.max_steps and trial.should_prune():
            raise optuna.TrialPruned(f"validation {objective(tcfg)} {value:.4f} at step {step}")

    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(tcfg, Path(tmp), summary_lm=SummaryLM(model, method_obj), method=method_obj,
                          train_ds=data["train"], val_ds=data["validation"], accelerator=accelerator,
                          tokenizer=res.tokenizer,
                          metrics_file=MetricsFile(Path(tmp) / "metrics.jsonl", enabled=False,
                                                   sinks=[tracking.log_row]),
                          validation_hooks=(report,), validate_at_start=False)
        try:
            trainer.run()
        finally:
            tracking.finish({f"final/val_{objective(tcfg)}": last["value"]} if "value" in last else None)
            trial.set_user_attr("seconds", time.perf_counter() - t0)
            trial.set_user_attr("steps", trainer.state.step)
            accelerator.free_memory()
            del trainer, model
            release_memory()
    return last["value"]  # the validation loss (or ROUGE-Lsum) after the last step


def sweep_method(res: SweepResources, storage, method: str, say=print) -> optuna.Study:
    """Work the method's study until it has ``sweep.trials`` finished trials (this worker's and others')."""
    study = optuna.create_study(storage=storage, study_name=study_name(method, res.cfg),
                                direction="minimize" if res.cfg.train.select_by == "loss" else "maximize",
                                load_if_exists=True, sampler=optuna.samplers.TPESampler(seed=res.cfg.sweep.seed),
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0))
    target = res.cfg.sweep.trials
    fail_dead_trials(study)
    while True:
        taken = study.get_trials(deepcopy=False, states=(*DONE, TrialState.RUNNING))
        if len(taken) >= target:
            break
        trial = study.ask()
        trial.set_user_attr("worker", _worker())
        # another worker may have asked at the same moment: the first `target` trials by number run
        ahead = [t for t in study.get_trials(deepcopy=False, states=(*DONE, TrialState.RUNNING))
                 if t.number < trial.number]
        if len(ahead) >= target:
            study.tell(trial, state=TrialState.FAIL)  # never run: the study is full
            break
        try:
            value = run_trial(res, trial, method)
        except optuna.TrialPruned:
            study.tell(trial, state=TrialState.PRUNED)
            say(f"[{method}] trial {trial.number}: pruned (lr {trial.params['lr']:.3g})")
            continue
        except BaseException:
            study.tell(trial, state=TrialState.FAIL)
            raise
        study.tell(trial, value)
        say(f"[{method}] trial {trial.number}: validation {objective(res.cfg)} {value:.4f} (lr {trial.params['lr']:.3g})")
    return study


def sweep(cfg: Config, methods: list[str], out: Path, storage_url: str | None = None) -> dict[str, optuna.Study]:
    bad = [m for m in methods if m not in trained_methods()]
    if bad:
        raise UserError(f"sweep tunes trained methods only ({', '.join(trained_methods())}), not {', '.join(bad)}")
    for m in methods:  # each method's settings valid for it (model.quantize with full: refused before any trial)
        method_config(cfg, m)
    storage = open_storage(out, storage_url)
    res = SweepResources.load(cfg, out)

    def say(text: str) -> None:
        if is_main_process():
            print(text, flush=True)

    return {m: sweep_method(res, storage, m, say) for m in methods}


def best_params(study: optuna.Study) -> dict[str, object]:
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if not done:
        raise UserError(f"study {study.study_name} has no complete trial yet")
    return dict(study.best_trial.user_attrs["params"])  # the lowest loss, or the highest ROUGE
