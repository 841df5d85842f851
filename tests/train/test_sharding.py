"""train.fsdp (train/sharding.py): FSDP2 on 2 gloo processes trains, checkpoints, resumes, keeps the best weights and
evaluates as data parallel does on the same global batch, while each process holds half the training state."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from peftsum.config import load_config
from peftsum.errors import UserError
from peftsum.utils import read_jsonl
from tests.conftest import eval_figure, train_args
from tests.train.test_interrupt import ONE_RANK_CTRL_C

TWO = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "peftsum.cli"]
SAVED = {"lora": "adapter_model.safetensors", "full": "model.safetensors"}


def _two_processes(args, env=None):
    return subprocess.run([*TWO, *args], capture_output=True, text=True, env=env or dict(os.environ), timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "full"])
def test_fsdp_trains_resumes_and_evaluates_as_data_parallel(method, tiny_model_dir, demo_dir, tmp_path):
    # 24 validation examples in batches of 8: 3 batches over 2 processes, so one runs a forward only to keep in
    # step; validations at steps 2, 4, 6 pick the best weights; the sharded run is stopped by Ctrl-C on one rank
    # after step 2 and resumed from its checkpoint (whole weights and optimizer state, gathered)
    extra = {"train.max_steps": 6, "train.eval_every_steps": 2, "train.batch_size": 4, "data.val_size": 24,
             "train.checkpoint_every_steps": 100, "method.lora.dropout": 0.0, "method.full.lr": 1e-3}
    ddp = _two_processes(train_args(tiny_model_dir, demo_dir, method, tmp_path / "ddp", **extra))
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(ONE_RANK_CTRL_C)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")])}
    sharded = train_args(tiny_model_dir, demo_dir, method, tmp_path / "fsdp", **extra, **{"train.fsdp": True})
    stopped = _two_processes(sharded, env)
    assert stopped.returncode != 0 and "--resume" in stopped.stderr, stopped.stderr[-3000:]
    ckpt = torch.load(tmp_path / "fsdp" / "checkpoint.pt", weights_only=True)
    assert ckpt["state"]["step"] == 2
    resumed = _two_processes([*sharded, "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    a, b = read_jsonl(tmp_path / "ddp" / "metrics.jsonl"), read_jsonl(tmp_path / "fsdp" / "metrics.jsonl")
    assert [(r["type"], r["step"]) for r in a] == [(r["type"], r["step"]) for r in b]
    for x, y in zip(a, b):
        for key, rel in (("loss", 1e-5), ("val_loss", 1e-5), ("grad_norm", 1e-4)):  # a norm summed over shards
            if key in x:
                assert y[key] == pytest.approx(x[key], rel=rel), (key, x["step"])
    assert a[-1]["val_loss"] < a[0]["val_loss"]  # it trained
    ra = json.loads((tmp_path / "ddp" / "results.json").read_text())
    rb = json.loads((tmp_path / "fsdp" / "results.json").read_text())
    assert rb["training"]["best_step"] == ra["training"]["best_step"]
    for k in ("val_loss", "test_loss", "rouge1", "rougeLsum"):
        assert eval_figure(rb, k) == pytest.approx(eval_figure(ra, k), rel=1e-5), k
    # the saved weights: the same files, the same values (whole tensors, not one process's shards); measured: at
    # most 5e-6 apart after 6 AdamW steps of 1e-3 (Adam divides float noise in a tiny gradient by its tiny norm)
    wa, wb = load_file(tmp_path / "ddp" / SAVED[method]), load_file(tmp_path / "fsdp" / SAVED[method])
    assert wa.keys() == wb.keys()
    for k in wa:
        assert wb[k].shape == wa[k].shape and torch.allclose(wb[k], wa[k], atol=2e-5, rtol=0), k
    # each process holds half of the trained tensors' gradients and optimizer state (dim 0 split in two)
    for k in ("gradient_bytes", "optimizer_bytes"):
        assert rb["cost"][k] == pytest.approx(ra["cost"][k] / 2, rel=0.01), k
    assert rb["cost"]["weights_bytes"] == pytest.approx(ra["cost"]["weights_bytes"] / 2, rel=0.01)
    assert rb["cost"]["train_flops"] == pytest.approx(ra["cost"]["train_flops"], rel=1e-9)


def test_fsdp_is_refused_where_it_is_not_offered():
    fsdp = ("train.fsdp", True)
    for overrides, said in (([("method.name", "prompt-tuning")], "shards full fine-tuning and lora"),
                            ([("method.name", "qlora")], "shards full fine-tuning and lora"),
                            ([("method.name", "lora"), ("train.select_by", "rougeLsum")], "select by loss")):
        with pytest.raises(UserError, match=said):
            load_config("demo", overrides=[*overrides, fsdp])
    for method in ("lora", "full", "zero-shot", "lead-3"):  # the baselines train nothing: nothing to shard
        assert load_config("demo", overrides=[("method.name", method), fsdp]).train.fsdp
