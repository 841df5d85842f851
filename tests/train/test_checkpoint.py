"""Checkpoints (train/checkpoint.py): SIGKILL then resume reaches the uninterrupted result; corrupted and
pickled checkpoints are refused."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from peftsum.cli import main
from peftsum.experiment import run_experiment
from peftsum.utils import read_jsonl
from tests.conftest import train_args, without_seconds


@pytest.mark.slow
def test_sigkill_then_resume_reaches_the_uninterrupted_result(tiny_model_dir, demo_dir, tmp_path):
    extra = {"train.max_steps": 14, "train.checkpoint_every_steps": 3}
    env = dict(os.environ)
    ref = subprocess.run([sys.executable, "-m", "peftsum.cli", *train_args(tiny_model_dir, demo_dir, "lora",
                                                                          tmp_path / "ref", **extra)],
                         capture_output=True, text=True, env=env, timeout=600)
    assert ref.returncode == 0, ref.stderr[-2000:]
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "peftsum.cli", *train_args(tiny_model_dir, demo_dir, "lora", out,
                                                                             **extra)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 300
    while time.time() < deadline:  # kill it once a checkpoint exists and training has gone past it
        rows = read_jsonl(out / "metrics.jsonl") if (out / "metrics.jsonl").is_file() else []
        if (out / "checkpoint.pt").is_file() and sum(r["type"] == "train" for r in rows) >= 7:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "results.json").exists()
    resumed = subprocess.run([sys.executable, "-m", "peftsum.cli", "train", "--out", str(out), "--resume"],
                             capture_output=True, text=True, env=env, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert without_seconds(read_jsonl(out / "metrics.jsonl")) == without_seconds(read_jsonl(tmp_path / "ref" / "metrics.jsonl"))
    a = json.loads((out / "results.json").read_text())
    b = json.loads((tmp_path / "ref" / "results.json").read_text())
    assert a["eval"] == b["eval"]


def test_corrupted_and_pickled_checkpoints_are_refused(tiny_cfg, tmp_path, capsys):
    run = tmp_path / "r"
    cfg = tiny_cfg("lora", **{"train.max_steps": 2})
    run_experiment(cfg, run)
    ckpt = run / "checkpoint.pt"
    ckpt.write_bytes(b"PK\x03\x04 this is not a checkpoint")
    assert main(["train", "--method", "lora", "--out", str(run), "--resume"]) == 2
    assert "truncated or corrupted" in capsys.readouterr().err
    import datetime

    torch.save({"state": datetime.datetime.now()}, ckpt)  # an arbitrary pickled object
    assert main(["train", "--method", "lora", "--out", str(run), "--resume"]) == 2
    assert "arbitrary pickled objects; refusing" in capsys.readouterr().err
