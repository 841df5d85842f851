"""A grid of comparisons: every method on every model and training-set size (``compare --models --train-sizes``).

Each cell (a model and a training-set size) is an ordinary comparison in its own folder, ``OUT/<model>-n<size>``,
with the same data split, protocol and seeds: a smaller training set is the first ``size`` examples of the same
seeded shuffle of the training split (so each is inside the larger ones), and validation and test are the same
articles in every cell.  Cells resume and refuse changed settings as ``compare`` does; ``OUT/grid.json`` records
the grid the report covers.

Several workers fill one grid: started with the same command and ``--out`` (one per GPU, or one per task of a
Slurm job array on a shared filesystem), each takes a cell whose lock no other holds and skips the rest; a worker
with nothing left to take stops, and the worker that sees every cell finished writes the grid's report.  Under
``torchrun`` / ``accelerate launch`` one cell runs on all the job's processes (rank 0 takes the locks).
"""

from __future__ import annotations

import copy
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch.distributed import broadcast_object_list

from ..config import Config, GridConfig
from ..errors import UserError
from ..utils import distributed_state, is_main_process, write_json
from .compare import _say, checked_runs, run_comparison
from .rundir import RunLock, is_finished

GRID = "grid.json"


@dataclass
class Cell:
    model: str
    train_size: int
    dir: Path
    cfg: Config

    @property
    def name(self) -> str:
        return self.dir.name


def model_slug(model: str) -> str:
    """A model's folder name: the last part of its hub id or path (``openai-community/gpt2-medium`` ->
    ``gpt2-medium``), characters other than letters, digits, ``.``, ``_`` and ``-`` replaced."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", Path(model.rstrip("/")).name) or "model"


def grid_cells(cfg: Config, models: list[str], sizes: list[int], out: Path) -> list[Cell]:
    """Every (model, training-set size) in the order given: models outer, sizes inner."""
    if not models or not sizes:
        raise UserError("a grid needs at least one model (--models) and one training-set size (--train-sizes)")
    slugs = [model_slug(m) for m in models]
    if len(set(slugs)) < len(slugs) or len(set(sizes)) < len(sizes):
        raise UserError(f"--models and --train-sizes must name each model and size once ({', '.join(models)}; "
                        f"{', '.join(map(str, sizes))})")
    cells = []
    for model, slug in zip(models, slugs):
        for n in sizes:
            c = copy.deepcopy(cfg)
            c.model.name, c.data.train_size = model, n
            c.grid = GridConfig()  # a cell is a plain comparison: its config names no grid (a grown grid is no change)
            cells.append(Cell(model, n, Path(out) / f"{slug}-n{n}", c))
    return cells


def _agreed(value):
    """Rank 0's ``value`` on every process (the cell it took, or None)."""
    state = distributed_state()
    if state.num_processes == 1:
        return value
    box = [value]
    broadcast_object_list(box, src=0)
    return box[0]


def compare_grid(cfg: Config, methods: list[str], models: list[str], sizes: list[int], out: Path,
                 rerun: list[str] | None = None, seeds: int = 1, on_cell: Callable[[Path], object] | None = None,
                 on_grid: Callable[[Path], object] | None = None) -> tuple[float, bool]:
    """Fill the grid's cells this worker can take; ``on_cell(cell_dir)`` after each cell it finished (its report),
    ``on_grid(out)`` once every cell has finished (the grid's report, written by one worker).  Returns the seconds
    and whether the grid is complete."""
    distributed_state(cfg.train.process_group_timeout_minutes)
    cells = grid_cells(cfg, models, sizes, out)
    # every cell's rules (settings it was made with, seeds, --rerun) hold before anything runs
    planned = {c.name: checked_runs(c.cfg, methods, c.dir, rerun, seeds) for c in cells}
    if is_main_process():
        write_json(Path(out) / GRID, {"models": models, "train_sizes": sizes, "methods": methods, "seeds": seeds,
                                      "cells": [{"name": c.name, "model": c.model, "train_size": c.train_size}
                                                for c in cells]})
    t0 = time.perf_counter()

    def done(cell: Cell) -> bool:
        return all(is_finished(run) for _, run, _ in planned[cell.name])

    busy = []
    for c in cells:
        if done(c) and not rerun:
            continue
        lock = RunLock(c.dir, enabled=is_main_process())
        holder = _agreed(lock.acquire())
        if holder is not None:  # another worker fills it
            busy.append(f"{c.name} (pid {holder})")
            continue
        try:
            if done(c) and not rerun:
                continue  # finished by another worker since the first look
            _say(f"[{c.name}] model {c.model}, {c.train_size} training examples -> {c.dir}")
            run_comparison(planned[c.name], c.dir, rerun, tag=f"{c.name} ")
            if on_cell is not None and is_main_process():
                on_cell(c.dir)
        finally:
            lock.release()
    complete = all(done(c) for c in cells)
    if not complete:
        _say(f"the grid is not complete: other workers hold {', '.join(busy) or 'none'}; the last one to finish "
             "writes the report (or run the same command again)")
    elif on_grid is not None and is_main_process():
        lock = RunLock(Path(out))  # two workers finishing at once: one writes
        if lock.acquire() is None:
            try:
                on_grid(Path(out))
            finally:
                lock.release()
    return time.perf_counter() - t0, complete


def read_grid(out: Path) -> dict:
    path = Path(out) / GRID
    if not path.is_file():
        raise UserError(f"{out} holds no grid ({GRID} missing): run compare --models / --train-sizes into it")
    return json.loads(path.read_text())
