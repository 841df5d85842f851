"""A run directory holds what its config says, and one process writes it at a time.

* ``config.yaml`` records the settings that produced the weights and results beside it.  Continuing a
  run (``compare`` on the same ``--out``, ``train --resume``) with other settings is refused with the
  list of differing keys, unless the user asks to redo those methods (``--rerun``).
* A lock file (``.peftsum.lock``, ``flock``) keeps a second process from writing the same directory;
  it names the holder's pid.  The kernel drops the lock when the holder exits, even on SIGKILL.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
from pathlib import Path

import yaml

from ..config import Config, config_from_dict, flatten_dict
from ..errors import UserError
from ..utils import read_jsonl
from .results import RESULTS, read_results

CONFIG = "config.yaml"
LOCK = ".peftsum.lock"

# keys that change how a run is shown or saved, not what it computes (and the sweep's own section)
NEUTRAL_KEYS = frozenset({"train.progress", "train.checkpoint_every_steps", "data.cache", "train.report_to",
                          "train.process_group_timeout_minutes"})
NEUTRAL_SECTIONS = ("sweep.",)


def load_run_config(run_dir: Path) -> Config:
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise UserError(f"{run_dir} is not a peftsum run directory (no {CONFIG})")
    return config_from_dict(yaml.safe_load(path.read_text(encoding="utf-8")))


def config_differences(stored: Config, requested: Config) -> dict[str, tuple]:
    """``{key: (stored, requested)}`` for every key that changes results and differs."""
    a, b = flatten_dict(stored.to_dict()), flatten_dict(requested.to_dict())
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
            if k not in NEUTRAL_KEYS and not k.startswith(NEUTRAL_SECTIONS) and a.get(k) != b.get(k)}


def describe_differences(diff: dict[str, tuple]) -> str:
    return "; ".join(f"{k}: {old!r} in the run, {new!r} now" for k, (old, new) in diff.items())


def has_run(run_dir: Path) -> bool:
    """Does ``run_dir`` hold a run (started or finished) whose config it records?"""
    return (Path(run_dir) / CONFIG).is_file()


def check_same_config(run_dir: Path, requested: Config, ways_forward: str) -> None:
    """Refuse to continue ``run_dir`` under settings other than the ones that produced it."""
    if not has_run(run_dir):
        return
    diff = config_differences(load_run_config(run_dir), requested)
    if diff:
        raise UserError(f"{run_dir} was produced with other settings ({describe_differences(diff)}); "
                        f"{ways_forward}")


def resume_config(run_dir: Path, method: str | None, asked=None, max_steps: int | None = None,
                  report_to: list[str] | None = None) -> Config:
    """The config ``train --resume`` continues ``run_dir`` with: the run's own ``config.yaml``.  Settings given
    with --resume (``asked(method)`` builds them) must be the run's own; ``--max-steps`` alone may extend it only
    where that changes nothing else; trackers change no result, so any may follow a resumed run."""
    cfg = load_run_config(run_dir)
    if method and method != cfg.method.name:
        raise UserError(f"{run_dir} is a {cfg.method.name} run; it cannot resume as {method}")
    if asked is not None:
        check_same_config(run_dir, asked(cfg.method.name),
                          "resume only with the settings it was started with, or train into a new --out")
    elif max_steps is not None:
        cfg.train.max_steps = max_steps
        check_same_config(run_dir, cfg, "resume without --max-steps, or train into a new --out")
    if report_to is not None:
        cfg.train.report_to = report_to
    return cfg


def clear_run(run_dir: Path) -> None:
    """Remove a run's files (for ``--rerun``): its weights, checkpoint, metrics and results."""
    run_dir = Path(run_dir)
    if run_dir.is_dir():
        for p in run_dir.iterdir():
            if p.name == LOCK:
                continue
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink()


def is_finished(run_dir: Path) -> bool:
    """The run wrote a results record this peftsum reads (a damaged one, or another schema's, is run again)."""
    if not (Path(run_dir) / RESULTS).is_file():
        return False
    try:
        read_results(run_dir)
    except UserError:
        return False
    return True


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    try:
        return read_jsonl(path)
    except ValueError:
        return []


class RunLock:
    """Hold ``DIR/.peftsum.lock`` while writing DIR; a second holder gets a UserError naming the first's pid."""

    def __init__(self, directory: Path, enabled: bool = True):
        self.path = Path(directory) / LOCK
        self.enabled = enabled
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        holder = self.acquire()
        if holder is not None:
            raise UserError(f"{self.path.parent} is being written by another peftsum process (pid {holder}); "
                            "wait for it to finish, or use another --out")
        return self

    def acquire(self) -> str | None:
        """Take the lock if no other process holds it: None when taken (or disabled), else the holder's pid.
        ``flock`` on the lock file: released by the kernel when the holder dies, and shared between the machines
        of a cluster's shared filesystem where it supports ``flock`` (NFSv4, Lustre mounted with ``flock``)."""
        if not self.enabled:
            return None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            return holder
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}@{socket.gethostname()}".encode())
        os.fsync(fd)
        self._fd = fd
        return None

    def release(self) -> None:
        self.__exit__()

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
