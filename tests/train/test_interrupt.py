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
