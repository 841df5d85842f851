"""Run several methods on the same data and protocol, one run directory each under OUT.

A method whose run finished under the same settings is skipped; one with a checkpoint resumes.  A run
made under other settings is never continued or reported as if it were this one: the comparison
stops before anything runs and lists the differing keys, unless ``rerun`` names the method, which
then starts over.  One process at a time writes OUT (a lock names the holder).
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

from ..config import METHODS, PEFT_METHOD, Config, peft_method_name, resolve
from ..errors import UserError
from ..methods import entry
from ..utils import distributed_state, is_main_process
from .run import run_experiment
from .rundir import (
    RunLock,
    clear_run,
    config_differences,
    describe_differences,
    has_run,
    is_finished,
    load_run_config,
)


def _say(text: str) -> None:
    if is_main_process():  # several processes: only rank 0 prints
        print(text, flush=True)


def method_config(cfg: Config, method: str) -> Config:
    """The config of one entry of ``--methods``: a built-in method, or ``peft:FILE`` (any PEFT tuner), validated as
    that method's (``model.quantize`` with full fine-tuning is refused before anything runs)."""
    mcfg = copy.deepcopy(cfg)
    if method.startswith(f"{PEFT_METHOD}:"):
        file = method.split(":", 1)[1]
        mcfg.method.name, mcfg.method.peft.config, mcfg.method.peft.name = PEFT_METHOD, file, peft_method_name(file)
    else:
        mcfg.method.name = method
    return resolve(mcfg)


def run_name(method: str) -> str:
    """The name of an entry of ``--methods`` in reports and run folders (``peft:cfg/ia3.json`` -> ``peft-ia3``)."""
    return peft_method_name(method.split(":", 1)[1]) if method.startswith(f"{PEFT_METHOD}:") else method


def planned_runs(cfg: Config, methods: list[str], out: Path, seeds: int = 1) -> list[tuple[str, Path, Config]]:
    """(method, run directory, config) of every run: ``out/<method>`` with one seed; with several,
    ``out/<method>/seed-<s>`` for s = train.seed, train.seed + 1, ... (the data split stays fixed).
    The baselines train nothing and generate greedily, so they run once whatever the seeds.  Built-in
    methods come in their canonical order, then PEFT tuners (``peft:FILE``) in the order given."""
    runs = []
    ordered = [m for m in METHODS if m in methods] + [m for m in methods if m.startswith(f"{PEFT_METHOD}:")]
    for given in ordered:
        m, mcfg = run_name(given), method_config(cfg, given)
        if seeds == 1 or not entry(mcfg.method.name).trained():
            runs.append((m, out / m, mcfg))
            continue
        for i in range(seeds):
            scfg = copy.deepcopy(mcfg)
            scfg.train.seed = cfg.train.seed + i
            runs.append((m, out / m / f"seed-{scfg.train.seed}", scfg))
    return runs


def compare_methods(cfg: Config, methods: list[str], out: Path, rerun: list[str] | None = None,
                    seeds: int = 1) -> float:
    """Run ``methods`` (in the canonical order, each over ``seeds`` seeds) into ``out``; returns the seconds."""
    distributed_state(cfg.train.process_group_timeout_minutes)  # before any barrier: the configured timeout
    runs = checked_runs(cfg, methods, out, rerun, seeds)
    t0 = time.perf_counter()
    with RunLock(out, enabled=is_main_process()):
        run_comparison(runs, out, rerun)
    return time.perf_counter() - t0


def checked_runs(cfg: Config, methods: list[str], out: Path, rerun: list[str] | None = None,
                 seeds: int = 1) -> list[tuple[str, Path, Config]]:
    """The runs of a comparison into ``out``, once every rule holds: no run folder twice, ``--rerun`` within
    ``--methods``, the seeds a folder was made with, and every kept run made with these settings."""
    rerun = set(rerun or [])
    names = [run_name(m) for m in methods]
    if len(set(names)) < len(names):
        raise UserError(f"--methods names one run folder twice ({', '.join(names)}); give PEFT config files "
                        "different names")
    unknown = sorted(rerun - set(names))
    if unknown:
        raise UserError(f"--rerun names {', '.join(unknown)}, which --methods does not include")
    if seeds < 1:
        raise UserError(f"--seeds must be at least 1, got {seeds}")
    runs = planned_runs(cfg, methods, out, seeds)
    for m in dict.fromkeys(m for m, _, _ in runs):
        if m in rerun:
            continue
        single, several = has_run(out / m), any(has_run(p) for p in (out / m).glob("seed-*"))
        wanted_several = any(run.parent != out for mm, run, _ in runs if mm == m)
        if (single and wanted_several) or (several and not wanted_several):
            raise UserError(f"{out / m} holds {'one run' if single else 'runs of several seeds'}; compare it with "
                            f"the --seeds it was made with, --rerun {m}, or a new --out")
    # every run kept must have been made with these settings: check them all before anything runs
    conflicts = []
    for m, run, rcfg in runs:
        if m not in rerun and has_run(run):
            diff = config_differences(load_run_config(run), rcfg)
            if diff:
                conflicts.append(f"{run.relative_to(out)} ({describe_differences(diff)})")
    if conflicts:
        names = sorted({c.split(" ", 1)[0].split("/", 1)[0] for c in conflicts})
        raise UserError(f"{out} holds runs made with other settings: {'; '.join(conflicts)}. Use a new --out, or "
                        f"--rerun {','.join(names)} to redo those methods")
    return runs


def run_comparison(runs: list[tuple[str, Path, Config]], out: Path, rerun: list[str] | None = None,
                   tag: str = "") -> None:
    """Run each of :func:`checked_runs`' runs that has not finished (resuming one with a checkpoint), ``--rerun``'s
    from the start; the caller holds ``out``'s lock.  ``tag`` names the grid's cell in the progress lines."""
    rerun, cleared = set(rerun or []), set()
    for m, run, rcfg in runs:
        if m in rerun and m not in cleared:
            if is_main_process():
                clear_run(out / m)
            distributed_state().wait_for_everyone()
            cleared.add(m)
        label = tag + (m if run.parent == out else f"{m} {run.name}")
        if is_finished(run):
            _say(f"[{label}] finished earlier: {run / 'results.json'} (skipped)")
            continue
        resume = (run / "checkpoint.pt").is_file()
        _say(f"[{label}] {'resuming' if resume else 'running'} -> {run}")
        r = run_experiment(rcfg, run, resume=resume, tracking_root=out, run_name=str(run.relative_to(out)))
        loss = f"val_loss {r.eval.val_loss:.4f}, " if r.eval.val_loss is not None else ""
        _say(f"[{label}] {loss}ROUGE-L {r.eval.value('rougeLsum'):.2f}, train {r.cost.train_seconds:.1f}s")
