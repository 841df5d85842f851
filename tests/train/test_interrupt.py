"""Ctrl-C (train/interrupt.py): a checkpoint, a message that says how to resume, exit code 130."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from peftsum.utils import read_jsonl
from tests.conftest import train_args


def wait_for_steps(metrics: Path, n: int, seconds: float = 300) -> None:
    """Until ``metrics.jsonl`` holds ``n`` training steps (a run in another process)."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        rows = read_jsonl(metrics) if metrics.is_file() else []
        if sum(r["type"] == "train" for r in rows) >= n:
            return
        time.sleep(0.05)


@pytest.mark.slow
def test_ctrl_c_checkpoints_says_how_to_resume_and_exits_130(tiny_model_dir, demo_dir, tmp_path):
    out = tmp_path / "r"
    args = train_args(tiny_model_dir, demo_dir, "lora", out, **{"train.max_steps": 400, "train.epochs": 100,
                                                             "train.checkpoint_every_steps": 1000})
    proc = subprocess.Popen([sys.executable, "-m", "peftsum.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    wait_for_steps(out / "metrics.jsonl", 2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "--resume" in err and "Traceback" not in err
    assert (out / "checkpoint.pt").is_file() and not (out / "results.json").exists()
    state = torch.load(out / "checkpoint.pt", weights_only=True)["state"]
    assert state["step"] >= 2 and state["metrics_lines"] == len(read_jsonl(out / "metrics.jsonl"))


ONE_RANK_CTRL_C = '''
import os
import signal

import peftsum.train.loop as loop

_step = loop.Trainer.train_step


def train_step(self, group):  # Ctrl-C reaches rank 1 alone, during its second step
    row = _step(self, group)
    if self.accelerator.process_index == 1 and self.state.step == 2:
        os.kill(os.getpid(), signal.SIGINT)
    return row


loop.Trainer.train_step = train_step
'''


@pytest.mark.slow
def test_ctrl_c_on_one_rank_stops_every_rank_after_the_same_step(tiny_model_dir, demo_dir, tmp_path):
    """Under torchrun a Ctrl-C may reach one process before (or without) the others: every rank stops after the
    same step, rank 0 checkpoints it, and the job exits instead of hanging in the next step's all-reduce."""
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(ONE_RANK_CTRL_C)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")])}
    out = tmp_path / "two"
    extra = {"train.max_steps": 8, "train.batch_size": 4, "train.checkpoint_every_steps": 100}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "peftsum.cli",
                           *train_args(tiny_model_dir, demo_dir, "lora", out, **extra)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode != 0 and "--resume" in done.stderr, done.stderr[-2000:]
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["state"]["step"] == 2  # both ranks stopped after step 2; rank 0 saved it
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl") if r["type"] == "train"] == [1, 2]


def test_sigterm_is_deferred_like_ctrl_c_and_ends_as_a_preemption(monkeypatch):
    """The first SIGTERM only asks (2: the step finishes and checkpoints); a second stops at once; what ends the run
    is Preempted (exit 143), Ctrl-C's is KeyboardInterrupt (130); SIGTERM outranks Ctrl-C when both came."""
    from peftsum.errors import Preempted
    from peftsum.train.interrupt import DeferredInterrupt, stop

    interrupt = DeferredInterrupt()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        assert interrupt.requested == 2
        with pytest.raises(Preempted):
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        interrupt.restore()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    assert isinstance(stop(1), KeyboardInterrupt) and isinstance(stop(2), Preempted) and Preempted.exit_code == 143
    assert not issubclass(Preempted, Exception)  # no `except Exception` on the way up swallows it


@pytest.mark.slow
def test_sigterm_mid_compare_exits_143_and_the_same_command_gives_the_uninterrupted_figures(tiny_model_dir,
                                                                                           demo_dir, tmp_path):
    """A scheduler's SIGTERM during LoRA's training in `compare`: the step finishes, a checkpoint is written, exit
    143 with one line; the same command again (a requeued job) resumes and ends with the figures of a comparison
    never interrupted: every metrics line, every score, the same predictions."""
    from peftsum.cli import main
    from peftsum.experiment.results import read_results
    from tests.conftest import compare_args, without_seconds

    extra = {"train.max_steps": 8, "train.checkpoint_every_steps": 100, "train.batch_size": 4}
    assert main(compare_args(tiny_model_dir, demo_dir, tmp_path / "a", "lead-3,lora", **extra)) == 0
    cmd = [sys.executable, "-m", "peftsum.cli", *compare_args(tiny_model_dir, demo_dir, tmp_path / "b", "lead-3,lora",
                                                              **extra)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    metrics = tmp_path / "b" / "lora" / "metrics.jsonl"
    wait_for_steps(metrics, 2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "stopped by SIGTERM after a checkpoint" in err and "the same command continues" in err
    assert "Traceback" not in err
    state = torch.load(tmp_path / "b" / "lora" / "checkpoint.pt", weights_only=True)["state"]
    assert 2 <= state["step"] < 8 and not (tmp_path / "b" / "lora" / "results.json").exists()
    again = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ), timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "[lead-3] finished earlier" in again.stdout and "[lora] resuming" in again.stdout
    for m in ("lead-3", "lora"):
        a, b = read_results(tmp_path / "a" / m), read_results(tmp_path / "b" / m)
        assert b.eval == a.eval and b.training.steps == a.training.steps
        assert read_jsonl(tmp_path / "b" / m / "predictions.jsonl") == read_jsonl(tmp_path / "a" / m / "predictions.jsonl")
    assert without_seconds(read_jsonl(metrics)) == without_seconds(read_jsonl(tmp_path / "a" / "lora" / "metrics.jsonl"))


def test_sigterm_in_the_last_step_still_stops_after_its_checkpoint(tiny_cfg, tmp_path, monkeypatch):
    """The last step breaks out of the epoch before the per-step check: the signal is read again after the epoch's
    validation and checkpoint, so the run stops there (exit 143) instead of going on into the final evaluation,
    where the scheduler's SIGKILL would find it; the same run resumed only evaluates."""
    from peftsum.errors import Preempted
    from peftsum.experiment import run_experiment
    from tests.conftest import signal_at_step

    signal_at_step(monkeypatch, signal.SIGTERM, 3)
    cfg = tiny_cfg("lora", **{"train.max_steps": 3, "train.checkpoint_every_steps": 100})
    with pytest.raises(Preempted):
        run_experiment(cfg, tmp_path / "r")
    state = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)["state"]
    assert state["step"] == 3 and state["stopped_reason"] == "max_steps" and not (tmp_path / "r" / "results.json").exists()
    monkeypatch.undo()
    assert run_experiment(cfg, tmp_path / "r", resume=True).training.steps == 3
