"""fp16 with loss scaling (train/precision.py) run on the CPU as on a T4: float16 autocast and a CPU GradScaler.
A step the scaler skips is no update -- the step count, the schedule and what counts steps stay where they were,
with a fused optimizer too -- and FSDP + fp16 + LoRA steps (Accelerate's clipping unscaled twice there)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from peftsum.experiment import run_experiment
from peftsum.train.loss import SummaryLM
from peftsum.utils import read_jsonl
from tests.conftest import train_args
from tests.train.test_loop import SHORT, _trainer

# float16 matmuls are slow on a CPU: short articles keep these steps cheap (what they test is the scaler, not length)
FP16 = {**SHORT, "train.mixed_precision": "fp16", "data.max_source_tokens": 32, "data.max_target_tokens": 12}


def test_fp16_on_the_cpu_trains_and_evaluates_with_a_loss_scaler(tiny_cfg, tmp_path):
    """Before: 'mat1 and mat2 must have the same dtype' at the first validation (the frozen weights stored in
    float16, no float16 autocast on the CPU)."""
    r = run_experiment(tiny_cfg("lora", **{**FP16, "train.max_steps": 2}), tmp_path / "r")
    assert r.cost.mixed_precision == "fp16"
    assert r.training.steps == 2 and r.eval.val_loss == r.eval.val_loss  # finite, not NaN
    train = [m for m in read_jsonl(tmp_path / "r" / "metrics.jsonl") if m["type"] == "train"]
    assert [m["step"] for m in train] == [1, 2] and all(m["grad_norm"] > 0 for m in train)
    trainer = _trainer(tiny_cfg("lora", **FP16), tmp_path / "t")
    assert isinstance(trainer.accelerator.scaler, torch.amp.GradScaler)
    params = dict(trainer.model.named_parameters())
    assert params["transformer.h.0.mlp.c_fc.weight"].dtype == torch.float16  # frozen, stored in the compute dtype
    assert {p.dtype for _, p in trainer.method.trainable_parameters(trainer.model)} == {torch.float32}


def _overflow_on(monkeypatch) -> dict:
    """From now on, the training forwards whose numbers (counted from 1 when ``at`` is set) are in the returned
    dict's ``at`` return a loss 1e30 times larger: finite, but its scaled gradients overflow float16.  Installed
    before the trainer is built: Accelerate wraps the forward it finds when it prepares the model."""
    real, poison = SummaryLM.forward, {"at": set(), "calls": 0}

    def forward(self, *a, **k):
        nll, tokens = real(self, *a, **k)
        if self.training and poison["at"]:
            poison["calls"] += 1
            if poison["calls"] in poison["at"]:
                return nll * 1e30, tokens
        return nll, tokens

    monkeypatch.setattr(SummaryLM, "forward", forward)
    return poison


@pytest.mark.parametrize("fused", ["off", "on"])
def test_a_step_the_scaler_skips_is_no_update(fused, tiny_cfg, tmp_path, monkeypatch):
    """Before, with the fused AdamW (train.fused_optimizer auto turns it on under CUDA): the kernel skipped the
    update itself, Accelerate's step_was_skipped stayed False, the schedule advanced and grad_norm was logged as
    Infinity; and the step counter counted skipped steps while the schedule did not."""
    poison = _overflow_on(monkeypatch)
    trainer = _trainer(tiny_cfg("lora", **{**FP16, "train.warmup_ratio": 0.5, "train.fused_optimizer": fused}),
                       tmp_path / "r")
    group = trainer.epoch_groups(0)[0]
    row = trainer.train_step(group)
    assert trainer.scheduler.last_epoch == 1 and row["grad_norm"] is not None and "skipped" not in row
    weights = {k: v.clone() for k, v in trainer.method.state_dict(trainer.model).items()}
    lr, scale = trainer.scheduler.get_last_lr()[0], trainer.accelerator.scaler.get_scale()
    poison["at"] = {1}
    row = trainer.train_step(group)
    assert row["skipped"] is True and row["grad_norm"] is None and row["step"] == 1
    assert trainer.scheduler.last_epoch == 1 and trainer.scheduler.get_last_lr()[0] == lr
    assert trainer.state.step == 1 and trainer.state.skipped_steps == 1 and trainer.state.group == 2
    assert trainer.accelerator.scaler.get_scale() == scale / 2
    for k, v in trainer.method.state_dict(trainer.model).items():
        assert torch.equal(v, weights[k]), k  # the scaler kept the weights
    row = trainer.train_step(group)
    assert "skipped" not in row and row["step"] == 2 and trainer.scheduler.last_epoch == 2


def test_max_steps_and_eval_every_count_updates(tiny_cfg, tmp_path, monkeypatch):
    """A run with its second step skipped: max_steps 3 makes 3 updates from 4 batches; validations every 2
    updates; the schedule ends where max_steps ends (its last learning rate that of step 3 of 3)."""
    _overflow_on(monkeypatch)["at"] = {2}  # micro-batches are whole batches here: the 2nd forward is the 2nd step's
    cfg = tiny_cfg("lora", **{**FP16, "train.max_steps": 3, "train.eval_every_steps": 2, "train.epochs": 2,
                              "train.micro_batch_size": 8, "train.warmup_ratio": 0.0})
    r = run_experiment(cfg, tmp_path / "r")
    rows = read_jsonl(tmp_path / "r" / "metrics.jsonl")
    train = [(m["step"], bool(m.get("skipped"))) for m in rows if m["type"] == "train"]
    assert train == [(1, False), (1, True), (2, False), (3, False)]
    assert [m["step"] for m in rows if m["type"] == "eval"] == [0, 2, 3]
    assert r.training.steps == 3 and r.training.stopped_reason == "max_steps"
    # linear decay over 3 planned updates: after update k the rate is lr * (3 - k) / 3; after the last, 0
    assert [m["lr"] for m in rows if m["type"] == "train" and not m.get("skipped")][-1] == 0.0


# 9 examples, 3 a process: global batches of 6 and 3 an epoch, the 3 shared 2 / 1 -- with micro-batches of one
# sequence, 2 passes against 1
FSDP_FP16 = {"train.fsdp": True, "train.mixed_precision": "fp16", "train.max_steps": 3, "train.epochs": 2,
             "train.batch_size": 3, "data.train_size": 9, "train.micro_batch_size": 1,
             "train.process_group_timeout_minutes": 2, "train.eval_every_steps": 2, "method.lora.dropout": 0.0,
             "model.dropout": 0.0}  # a stand-in pass draws dropout masks data parallel does not


@pytest.mark.slow
def test_fsdp_with_fp16_and_uneven_micro_batches_trains_lora_on_two_processes(tiny_model_dir, demo_dir, tmp_path):
    """Before: the first step raised 'unscale_() has already been called' (Accelerate's clip_grad_norm_ unscales in
    its FSDP branch, then again for a subset of the model's parameters, LoRA's); and the ranks whose shares of the
    uneven batch differ made different numbers of forwards, each a collective under FSDP: they waited on each other
    until the process group's timeout (measured: gloo's 2-minute timeout here, with every rank one pass apart).
    Now the same losses and gradient norms as 2 data-parallel processes on the same batches."""
    two = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "peftsum.cli"]
    for name, extra in (("fsdp", FSDP_FP16), ("ddp", {**FSDP_FP16, "train.fsdp": False})):
        done = subprocess.run([*two, *train_args(tiny_model_dir, demo_dir, "lora", tmp_path / name, **extra)],
                              capture_output=True, text=True, env=dict(os.environ), timeout=400)
        assert done.returncode == 0, done.stderr[-3000:]
    sharded, ddp = ([m for m in read_jsonl(tmp_path / name / "metrics.jsonl") if m["type"] == "train"]
                    for name in ("fsdp", "ddp"))
    assert [m["step"] for m in sharded if not m.get("skipped")] == [1, 2, 3]
    # the stand-in passes count nothing, and the shards were unscaled as data parallel's whole gradients were
    assert [m["target_tokens"] for m in sharded] == [m["target_tokens"] for m in ddp]
    for a, b in zip(sharded, ddp):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5) and a.get("skipped") == b.get("skipped")
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    result = json.loads((tmp_path / "fsdp" / "results.json").read_text())
    assert result["cost"]["mixed_precision"] == "fp16" and result["training"]["steps"] == 3
