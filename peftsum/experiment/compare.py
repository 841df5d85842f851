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

from ..config import METHODS, Config
from ..errors import UserError
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
    mcfg = copy.deepcopy(cfg)
    mcfg.method.name = method
    return mcfg


def compare_methods(cfg: Config, methods: list[str], out: Path, rerun: list[str] | None = None) -> float:
    """Run ``methods`` (in the canonical order) into ``out``; returns the seconds it took."""
    rerun = set(rerun or [])
    unknown = sorted(rerun - set(methods))
    if unknown:
        raise UserError(f"--rerun names {', '.join(unknown)}, which --methods does not include")
    order = [m for m in METHODS if m in methods]
    # every run kept must have been made with these settings: check them all before anything runs
    conflicts = []
    for m in order:
        run = out / m
        if m not in rerun and has_run(run):
            diff = config_differences(load_run_config(run), method_config(cfg, m))
            if diff:
                conflicts.append(f"{m} ({describe_differences(diff)})")
    if conflicts:
        raise UserError(f"{out} holds runs made with other settings: {'; '.join(conflicts)}. Use a new --out, or "
                        f"--rerun {','.join(c.split(' ', 1)[0] for c in conflicts)} to redo those methods")
    t0 = time.perf_counter()
    with RunLock(out, enabled=is_main_process()):
        for m in order:
            run = out / m
            if m in rerun:
                if is_main_process():
                    clear_run(run)
                distributed_state().wait_for_everyone()
            if is_finished(run):
                _say(f"[{m}] finished earlier: {run / 'results.json'} (skipped)")
                continue
            resume = (run / "checkpoint.pt").is_file()
            _say(f"[{m}] {'resuming' if resume else 'running'} -> {run}")
            r = run_experiment(method_config(cfg, m), run, resume=resume)
            scores = r["eval"]
            loss = f"val_loss {scores['val_loss']:.4f}, " if scores["val_loss"] is not None else ""
            _say(f"[{m}] {loss}ROUGE-L {scores['rougeL']:.2f}, train {r['cost']['train_seconds']:.1f}s")
    return time.perf_counter() - t0
