"""Ctrl-C (train/interrupt.py): a checkpoint, a message that says how to resume, exit code 130."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from peftsum.utils import read_jsonl
from tests.conftest import train_args


@pytest.mark.slow
def test_ctrl_c_checkpoints_says_how_to_resume_and_exits_130(tiny_model_dir, demo_dir, tmp_path):
    out = tmp_path / "r"
    args = train_args(tiny_model_dir, demo_dir, "lora", out, **{"train.max_steps": 400, "train.epochs": 100,
                                                             "train.checkpoint_every_steps": 1000})
    proc = subprocess.Popen([sys.executable, "-m", "peftsum.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    deadline = time.time() + 300
    while time.time() < deadline:
        rows = read_jsonl(out / "metrics.jsonl") if (out / "metrics.jsonl").is_file() else []
        if sum(r["type"] == "train" for r in rows) >= 2:
            break
        time.sleep(0.05)
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
    if self.rank == 1 and self.state.step == 2:
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
