"""The training loop (train/loop.py): validation and stopping rules, NaN, resume reproducing the uninterrupted
run, micro-batches, ROUGE-based selection, and two processes against one."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from peftsum.cli import main
from peftsum.errors import TrainingDiverged
from peftsum.evaluate.evaluation import prompts_of
from peftsum.evaluate.generate import generate_summaries
from peftsum.evaluate.metrics import rouge_per_example
from peftsum.experiment import run_experiment
from peftsum.experiment.run import accelerator_for, load_components, load_trained
from peftsum.train.loop import compile_blocks, eager, validation_subset
from peftsum.utils import read_jsonl
from tests.conftest import eval_figure, set_args, signal_at_step, train_args, without_seconds

SHORT = {"train.max_steps": 4, "data.train_size": 32}  # 4 steps an epoch
# learning rates that move the tiny model in 6 steps
TUNED = {"train.max_steps": 6, "method.prompt_tuning.lr": 0.3, "method.lora.lr": 1e-2, "method.last_layer.lr": 1e-2,
         "method.full.lr": 3e-3}


def test_validation_at_an_epoch_end_is_not_counted_twice(tiny_cfg, tmp_path):
    # 32 examples / batch 8 = 4 steps an epoch; eval_every_steps 4 lands on each epoch's end
    cfg = tiny_cfg("lora", **{**SHORT, "train.max_steps": None, "train.epochs": 3, "train.eval_every_steps": 4})
    r = run_experiment(cfg, tmp_path / "r")
    evals = [m["step"] for m in read_jsonl(tmp_path / "r" / "metrics.jsonl") if m["type"] == "eval"]
    assert evals == [0, 4, 8, 12] and len(r.training.validation_history) == 3
    assert r.training.stopped_reason == "epochs"


def test_epoch_limit_is_not_called_max_steps(tiny_cfg, tmp_path):
    r = run_experiment(tiny_cfg("lora", **{**SHORT, "train.max_steps": 1000, "train.epochs": 1}), tmp_path / "r")
    assert r.training.steps == 4 and r.training.stopped_reason == "epochs"
    r = run_experiment(tiny_cfg("lora", **{**SHORT, "train.max_steps": 3, "train.epochs": 1}), tmp_path / "s")
    assert r.training.steps == 3 and r.training.stopped_reason == "max_steps"


def test_val_limit_is_a_fixed_seeded_subset(tiny_cfg, tmp_path):
    from peftsum.train.loop import validation_subset

    a = run_experiment(tiny_cfg("lora", **{**SHORT, "train.val_limit": 5}), tmp_path / "a")
    b = run_experiment(tiny_cfg("lora", **SHORT), tmp_path / "b")
    assert a.training.initial_val_loss != pytest.approx(b.training.initial_val_loss, abs=1e-9)
    assert a.eval.val_loss == pytest.approx(b.eval.val_loss, rel=0.2)  # the final one: whole split

    class Split(list):
        def select(self, idx):
            return [self[i] for i in idx]

    first = validation_subset(Split(range(16)), 5, 42)
    assert first == validation_subset(Split(range(16)), 5, 42) and len(set(first)) == 5


def test_nan_loss_stops_with_a_clear_error_and_no_best(tiny_cfg, tmp_path, monkeypatch, capsys):
    from peftsum.train.loss import SummaryLM

    real = SummaryLM.forward
    calls = {"n": 0}

    def poisoned(self, *a, **k):
        nll, n = real(self, *a, **k)
        if self.training:
            calls["n"] += 1
            if calls["n"] >= 3:
                return nll * float("nan"), n
        return nll, n

    monkeypatch.setattr(SummaryLM, "forward", poisoned)
    with pytest.raises(TrainingDiverged, match="training loss is nan at step"):
        run_experiment(tiny_cfg("lora", **SHORT), tmp_path / "r")
    assert not (tmp_path / "r" / "results.json").exists() and not (tmp_path / "r" / "best.safetensors").exists()
    assert TrainingDiverged.exit_code != 0
    assert math.isnan(float("nan"))


def test_early_stop_in_the_middle_of_an_epoch_checkpoints(tiny_cfg, tmp_path, monkeypatch):
    from peftsum.experiment import run as experiment
    from peftsum.train.checkpoint import load_checkpoint

    def stop_before_evaluation(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(experiment, "evaluate_run", stop_before_evaluation)
    cfg = tiny_cfg("lora", **{**SHORT, "train.max_steps": None, "train.epochs": 3, "train.eval_every_steps": 1,
                              "train.patience": 1, "train.min_delta": 100.0, "train.checkpoint_every_steps": 1000})
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, tmp_path / "r")
    state = load_checkpoint(tmp_path / "r")["state"]
    assert state["stopped_reason"] == "early_stopping" and state["step"] == 2  # mid-epoch 1 of 4 steps
    assert torch.is_tensor(load_checkpoint(tmp_path / "r")["rng"]["torch"])


def test_interrupt_then_resume_reproduces_the_uninterrupted_run(tmp_path, tiny_cfg, monkeypatch):
    extra = {**TUNED, "train.max_steps": 6, "train.checkpoint_every_steps": 100}
    full = run_experiment(tiny_cfg("prompt-tuning", **extra), tmp_path / "a")
    # a real SIGINT (Ctrl-C) arrives during step 4: the loop finishes the step, checkpoints, stops
    signal_at_step(monkeypatch, signal.SIGINT, 4)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(tiny_cfg("prompt-tuning", **extra), tmp_path / "b")
    assert (tmp_path / "b" / "checkpoint.pt").is_file() and not (tmp_path / "b" / "results.json").exists()
    monkeypatch.undo()
    resumed = run_experiment(tiny_cfg("prompt-tuning", **extra), tmp_path / "b", resume=True)

    assert without_seconds(read_jsonl(tmp_path / "a" / "metrics.jsonl")) == without_seconds(read_jsonl(tmp_path / "b" / "metrics.jsonl"))
    assert resumed.eval == full.eval
    assert resumed.training.steps == 6


def test_resuming_a_finished_early_stopped_run_does_not_train_on(tiny_cfg, tmp_path, monkeypatch):
    """An interruption after training ended (say during the final evaluation) resumes to evaluation only."""
    from peftsum.experiment import run as experiment

    cfg = tiny_cfg("lora", **{**TUNED, "train.max_steps": None, "train.epochs": 5, "train.patience": 1,
                              "train.min_delta": 100.0})  # no epoch can improve by 100: stops after epoch 2
    calls = {"n": 0}
    real = experiment.evaluate_run

    def crash_once(*a, **k):
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(experiment, "evaluate_run", crash_once)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, tmp_path / "r")
    steps_before = len([r for r in read_jsonl(tmp_path / "r" / "metrics.jsonl") if r["type"] == "train"])
    res = run_experiment(cfg, tmp_path / "r", resume=True)
    assert res.training.stopped_reason == "early_stopping" and res.training.early_stopped
    assert res.training.steps == steps_before == 16  # 8 steps an epoch; epoch 2 fails to improve: stop


def test_micro_batches_give_the_whole_batch_trajectory(tiny_cfg, tmp_path):
    """train.micro_batch_size cuts each batch into forward passes; without dropout the training and
    validation losses, and the test loss of the trained weights, are those of whole-batch passes (float
    sums aside). 3 does not divide the batch of 8."""
    from types import SimpleNamespace

    from peftsum.train.strategies import _passes, micro_batch_size

    assert _passes([1, 2, 3, 4, 5, 6, 7, 8], 3) == [[1, 2, 3], [4, 5, 6], [7, 8]]
    assert _passes([1, 2], None) == [[1, 2]]
    auto, cpu, gpu = SimpleNamespace(micro_batch_size=None), torch.device("cpu"), torch.device("cuda")
    heads = SimpleNamespace(n_head=12)
    assert micro_batch_size(auto, cpu, heads, 600) == 1  # GPT-2 small at CNN/DailyMail lengths: 17 MiB of scores
    assert micro_batch_size(auto, cpu, heads, 200) == 17  # 32 MiB / (4 bytes x 12 heads x 200^2)
    assert micro_batch_size(auto, cpu, SimpleNamespace(num_attention_heads=12), 200) == 17  # non-GPT-2 configs
    assert micro_batch_size(auto, gpu, heads, 600) is None
    assert micro_batch_size(SimpleNamespace(micro_batch_size=3), gpu, heads, 600) == 3
    runs = {}
    for mbs in (8, 3):
        cfg = tiny_cfg("lora", **{"train.max_steps": 4, "train.micro_batch_size": mbs, "model.dropout": 0.0,
                                  "method.lora.dropout": 0.0, "method.lora.lr": 1e-2})
        res = run_experiment(cfg, tmp_path / str(mbs))
        runs[mbs] = (read_jsonl(tmp_path / str(mbs) / "metrics.jsonl"), res)
    (a, ra), (b, rb) = runs[8], runs[3]
    assert [r["type"] for r in a] == [r["type"] for r in b] and sum(r["type"] == "train" for r in a) == 4
    for x, y in zip(a, b):
        key = "loss" if x["type"] == "train" else "val_loss"
        assert y[key] == pytest.approx(x[key], rel=1e-5)
    assert a[-1]["val_loss"] < a[0]["val_loss"]  # it trained
    assert rb.eval.test_loss == pytest.approx(ra.eval.test_loss, rel=1e-5)


@pytest.mark.slow
def test_two_processes_match_one_with_the_same_global_batch(demo_dir, tmp_path):
    """Data parallel on CPU through Accelerate (gloo): 2 x batch 4 against 1 x batch 8, decoding with beam search
    and choosing the best weights by validation ROUGE-Lsum (each rank generates its share, all score alike)."""
    from peftsum.model.demo_base import ensure_demo_base
    from tests.conftest import TINY_CONFIG, TINY_RECIPE

    no_dropout = {**TINY_CONFIG, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
    model = ensure_demo_base(no_dropout, TINY_RECIPE, root=tmp_path / "m")
    extra = {"train.max_steps": 6, "method.lora.dropout": 0.0, "eval.decoding.num_beams": 3,
             "train.select_by": "rougeLsum", "train.rouge_examples": 6, "train.eval_every_steps": 3}
    env = dict(os.environ)
    one = subprocess.run([sys.executable, "-m", "peftsum.cli",
                          *train_args(model, demo_dir, "lora", tmp_path / "one", **extra, **{"train.batch_size": 8})],
                         capture_output=True, text=True, env=env, timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "peftsum.cli",
                          *train_args(model, demo_dir, "lora", tmp_path / "two", **extra, **{"train.batch_size": 4})],
                         capture_output=True, text=True, env=env, timeout=600)
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = read_jsonl(tmp_path / "one" / "metrics.jsonl"), read_jsonl(tmp_path / "two" / "metrics.jsonl")
    assert len(a) == len(b)  # only rank 0 wrote
    for x, y in zip(a, b):
        for key in ("loss", "val_loss", "val_rougeLsum"):
            if key in x:
                assert y[key] == pytest.approx(x[key], rel=1e-5)  # float reductions differ, nothing else
    assert two.stdout.count("results:") == 1  # only rank 0 printed
    # the final evaluation is shared between the processes and gathered: the same results and predictions
    ra = json.loads((tmp_path / "one" / "results.json").read_text())
    rb = json.loads((tmp_path / "two" / "results.json").read_text())
    assert [r for r in a if "val_rougeLsum" in r] and rb["training"]["best_step"] == ra["training"]["best_step"]
    for k in ("val_loss", "test_loss", "rouge1", "rouge2", "rougeL", "rougeLsum", "mean_generated_tokens"):
        assert eval_figure(rb, k) == pytest.approx(eval_figure(ra, k), rel=1e-5), k
    strip_preds = lambda rows: [(r["id"], r["prediction"], r["generated_tokens"]) for r in rows]  # noqa: E731
    assert strip_preds(read_jsonl(tmp_path / "two" / "predictions.jsonl")) == strip_preds(
        read_jsonl(tmp_path / "one" / "predictions.jsonl"))
    # the whole job's figures, not one process's share
    for k in ("tokens", "examples", "target_tokens"):
        assert rb["training"][k] == ra["training"][k], k
    assert rb["cost"]["train_flops"] == pytest.approx(ra["cost"]["train_flops"], rel=1e-9)
    assert rb["cost"]["processes"] == 2 and ra["cost"]["processes"] == 1


@pytest.mark.slow
def test_two_processes_cache_half_the_features_each_and_match_one(tiny_model_dir, demo_dir, tmp_path):
    """Last-layer on its frozen trunk's cached features: under 2 processes each builds and holds only its shard,
    and the training and validation losses are those of one process with the same global batch."""
    extra = {"train.max_steps": 4, "train.eval_every_steps": 2, "method.last_layer.lr": 1e-2}
    one = subprocess.run([sys.executable, "-m", "peftsum.cli",
                          *train_args(tiny_model_dir, demo_dir, "last-layer", tmp_path / "one", **extra,
                                      **{"train.batch_size": 8})], capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "peftsum.cli", *train_args(tiny_model_dir, demo_dir, "last-layer", tmp_path / "two",
                                                           **extra, **{"train.batch_size": 4})],
                         capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = read_jsonl(tmp_path / "one" / "metrics.jsonl"), read_jsonl(tmp_path / "two" / "metrics.jsonl")
    assert len(a) == len(b) and [r for r in a if "val_loss" in r]
    for x, y in zip(a, b):
        for key in ("loss", "val_loss"):
            if key in x:
                assert y[key] == pytest.approx(x[key], rel=1e-5), (key, x["step"])
    ra = json.loads((tmp_path / "one" / "results.json").read_text())
    rb = json.loads((tmp_path / "two" / "results.json").read_text())
    for k in ("val_loss", "test_loss"):
        assert eval_figure(rb, k) == pytest.approx(eval_figure(ra, k), rel=1e-5), k
    whole, mine = ra["training"]["feature_cache_bytes"], rb["training"]["feature_cache_bytes"]
    assert 0 < mine < 0.7 * whole  # rank 0's shard (half the examples), not the whole split


def test_select_by_rouge_keeps_the_weights_with_the_best_validation_rouge(tiny_model_dir, demo_dir, tmp_path):
    """Validations record ROUGE-Lsum of the decoding on a fixed subset; the kept weights are those of the highest
    one, and regenerating that subset with the saved run gives that very score; the generation is counted in
    the training time."""
    run = tmp_path / "run"
    args = ["train", "--preset", "demo", "--method", "lora", "--out", str(run),
            *set_args(tiny_model_dir, demo_dir, **{"train.select_by": "rougeLsum", "train.rouge_examples": 6,
                                                "train.eval_every_steps": 2, "train.max_steps": 6, "train.epochs": 2,
                                                "train.patience": None, "method.lora.lr": 3e-2})]
    assert main(args) == 0
    r = json.loads((run / "results.json").read_text())
    t = r["training"]
    rows = [x for x in read_jsonl(run / "metrics.jsonl") if x["type"] == "eval" and x["step"] > 0]
    assert [x["val_rougeLsum"] for x in rows] == t["validation_scores"] and len(rows) >= 3
    best = max(rows, key=lambda x: x["val_rougeLsum"])  # the first of equal highs
    assert t["best_step"] == best["step"] and t["best_value"] == pytest.approx(best["val_rougeLsum"])
    assert t["select_by"] == "rougeLsum" and r["protocol"]["select_by"] == "rougeLsum"
    assert t["selection_seconds"] == pytest.approx(sum(x["selection_seconds"] for x in rows))
    assert 0 < t["selection_seconds"] < r["cost"]["train_seconds"]
    # the saved (best) weights regenerate the selection subset with exactly the recorded score
    parts = load_trained(run)
    data, _ = parts.load_data()
    subset = validation_subset(data["validation"], 6, parts.cfg.data.seed + 1)
    acc = accelerator_for(parts.cfg)
    gen = generate_summaries(parts.model, parts.method, parts.tokenizer, prompts_of(subset), parts.method.decoding(),
                             parts.cfg.eval.batch_size, acc.device)
    scores = rouge_per_example([g.text for g in gen], list(subset["highlights"]))["rougeLsum"]
    assert sum(scores) / len(scores) == pytest.approx(t["best_value"], rel=1e-6)


def _trainer(cfg, run_dir):
    """A Trainer on the tiny model, as run_experiment builds it."""
    from peftsum.train.loop import MetricsFile, Trainer

    accelerator = accelerator_for(cfg)
    parts = load_components(cfg, accelerator.device)
    data, _ = parts.load_data()
    run_dir.mkdir(parents=True, exist_ok=True)
    return Trainer(cfg, run_dir, summary_lm=parts.summary_lm, method=parts.method, train_ds=data["train"],
                   val_ds=data["validation"], accelerator=accelerator, tokenizer=parts.tokenizer,
                   metrics_file=MetricsFile(run_dir / "metrics.jsonl"))


def test_the_step_clock_reads_after_the_device_work(tiny_cfg, tmp_path, monkeypatch):
    """CUDA queues work: the step's time is read after a synchronisation, not when the optimizer step is queued
    (a spy on synchronize and on the clock, in the order they ran)."""
    import peftsum.train.loop as loop

    trainer = _trainer(tiny_cfg("lora", **SHORT), tmp_path / "r")
    events = []

    class Clock:
        @staticmethod
        def perf_counter():
            events.append("clock")
            return time.perf_counter()

    monkeypatch.setattr(loop, "synchronize", lambda device: events.append("sync"))
    monkeypatch.setattr(loop, "time", Clock)
    group = trainer.epoch_groups(0)[0]
    trainer.train_step(group)
    assert events == ["clock", "sync", "clock"]  # start; the step's work done; end


def test_a_step_reads_the_device_once_however_many_passes_and_cuda_batches_come_pinned(tiny_cfg, tmp_path,
                                                                                         monkeypatch):
    """No host synchronisation per forward/backward pass: a step of 8 passes (micro-batches of 1) reads a value
    from the device as often as a step of 1 pass (the loss once, for the log), and logs the same loss as the sum
    of the passes' values would be.  On CUDA a batch is copied from pinned memory without blocking."""
    from peftsum.data.collate import to_device

    reads = []
    item = torch.Tensor.item
    monkeypatch.setattr(torch.Tensor, "item", lambda t: reads.append(1) or item(t))
    counts, losses = {}, {}
    for mbs in (8, 1):
        trainer = _trainer(tiny_cfg("lora", **{**SHORT, "train.micro_batch_size": mbs, "model.dropout": 0.0,
                                               "method.lora.dropout": 0.0}), tmp_path / str(mbs))
        group = trainer.epoch_groups(0)[0]
        reads.clear()
        losses[mbs] = trainer.train_step(group)["loss"]
        counts[mbs] = len(reads)
    # the same reads for 8 passes as for 1 (the loss for the log; AdamW's per-tensor step counts live on the host)
    assert len(trainer.forward_passes(group[0])) == 8 and counts[1] == counts[8]
    assert losses[1] == pytest.approx(losses[8], rel=1e-6)
    copies = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda t: copies.append("pin") or t)
    monkeypatch.setattr(torch.Tensor, "to", lambda t, *a, **k: copies.append((str(a[0]), k)) or t)
    to_device(torch.zeros(2), torch.device("cuda"))
    to_device(torch.zeros(2), "cpu")
    assert copies == ["pin", ("cuda", {"non_blocking": True}), ("cpu", {})]


@pytest.mark.slow
def test_compiled_blocks_train_as_eager_ones_and_leave_the_evaluation_eager(tiny_cfg, tmp_path):
    """train.compile: the same losses (float kernels aside) and test loss as eager, the same weight names saved;
    the blocks run eager again after training (generation is not compiled)."""
    runs = {}
    for compiled in (False, True):
        cfg = tiny_cfg("lora", **{**SHORT, "train.compile": compiled, "model.dropout": 0.0, "method.lora.dropout": 0.0})
        runs[compiled] = (run_experiment(cfg, tmp_path / str(compiled)), read_jsonl(tmp_path / str(compiled) / "metrics.jsonl"))
    (ra, a), (rb, b) = runs[False], runs[True]
    assert [r["type"] for r in a] == [r["type"] for r in b]
    for x, y in zip(a, b):
        key = "loss" if x["type"] == "train" else "val_loss"
        assert y[key] == pytest.approx(x[key], rel=1e-4)
    assert rb.eval.test_loss == pytest.approx(ra.eval.test_loss, rel=1e-4)
    assert load_file(tmp_path / "True" / "adapter_model.safetensors").keys() == \
        load_file(tmp_path / "False" / "adapter_model.safetensors").keys()
    blocks = compile_blocks(load_components(tiny_cfg("lora")).model)
    assert all(blk._compiled_call_impl is not None for blk in blocks)
    with eager(blocks):
        assert all(blk._compiled_call_impl is None for blk in blocks)
    assert all(blk._compiled_call_impl is not None for blk in blocks)


def test_the_schedule_ends_where_the_steps_end_when_processes_drop_a_last_batch(tiny_cfg, tmp_path, monkeypatch):
    """9 examples in global batches of 8 over 2 processes: the last batch (1 example, fewer than the processes) is
    dropped, so an epoch is 1 step.  Before, the plan counted 2 a epoch: the schedule never reached its end and the
    progress bar never completed.  (Rank 0 of 2, its share of each batch; the count is every rank's.)"""
    from accelerate import Accelerator

    monkeypatch.setattr(Accelerator, "num_processes", property(lambda self: 2))
    cfg = tiny_cfg("lora", **{"data.train_size": 9, "train.batch_size": 4, "train.epochs": 3, "train.max_steps": None,
                              "train.warmup_ratio": 0.0})
    trainer = _trainer(cfg, tmp_path / "r")
    assert [len(g) for g in trainer.epoch_groups(0)] == [1] and trainer.total_steps == 3
    from peftsum.train.loop import steps_per_epoch  # the count sweep and plan project with, by hand

    assert steps_per_epoch(9, 4, 2, 1) == 1 and steps_per_epoch(9, 4, 1, 1) == 3 and steps_per_epoch(10, 4, 2, 1) == 2
    assert steps_per_epoch(100, 8, 1, 4) == 4 and steps_per_epoch(96, 8, 1, 4) == 3
    trainer.run()
    rows = [m for m in read_jsonl(tmp_path / "r" / "metrics.jsonl") if m["type"] == "train"]
    assert [m["step"] for m in rows] == [1, 2, 3] and rows[-1]["lr"] == 0.0  # the linear schedule's end


def test_the_loss_scalers_state_is_checkpointed_and_restored(tiny_cfg, tmp_path, monkeypatch):
    """fp16's loss scale (and its growth tracker) survives a resume, as the weights and the optimizer do."""
    cfg = tiny_cfg("lora", **SHORT)
    first = _trainer(cfg, tmp_path / "r")
    monkeypatch.setattr(first.accelerator, "scaler", torch.amp.GradScaler("cpu", init_scale=2.0**7, growth_interval=9))
    first.checkpoint()
    second = _trainer(cfg, tmp_path / "r")
    monkeypatch.setattr(second.accelerator, "scaler", torch.amp.GradScaler("cpu", init_scale=1.0))
    assert second.resume()
    assert second.accelerator.scaler.get_scale() == 2.0**7
    assert second.accelerator.scaler.get_growth_interval() == 9


SPY = '''
import hashlib
import os
import time

import peftsum.experiment.run as run
import peftsum.train.loop as loop

_save, _evaluate = loop.save_file_atomic, run.evaluate_run


def slow_save(tensors, path, *args, **kwargs):  # rank 0's best weights take 2 s to write
    if str(path).endswith("best.safetensors"):
        time.sleep(2.0)
    return _save(tensors, path, *args, **kwargs)


def spying_evaluate(cfg, run_dir, parts, data, accelerator, *args, **kwargs):  # the weights each rank evaluates
    state = parts.method.state_dict(parts.model)
    digest = hashlib.sha256(b"".join(state[k].detach().cpu().numpy().tobytes() for k in sorted(state))).hexdigest()
    with open(os.path.join(os.environ["PEFTSUM_SPY"], f"rank{accelerator.process_index}"), "w") as f:
        f.write(digest)
    return _evaluate(cfg, run_dir, parts, data, accelerator, *args, **kwargs)


loop.save_file_atomic, run.evaluate_run = slow_save, spying_evaluate
'''


@pytest.mark.slow
def test_every_rank_evaluates_the_best_weights_rank_0_wrote(tiny_model_dir, demo_dir, tmp_path):
    """2 gloo processes; every validation improves, the last one's weights take rank 0 two seconds to write: each
    rank still evaluates exactly those weights (a hash of the method's state, taken as the evaluation starts)."""


    (tmp_path / "spy").mkdir()
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(SPY)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")]),
           "PEFTSUM_SPY": str(tmp_path / "spy")}
    out = tmp_path / "two"
    extra = {"train.max_steps": 4, "train.eval_every_steps": 2, "train.batch_size": 4, "data.test_size": 8,
             "eval.decoding.max_new_tokens": 4}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "peftsum.cli",
                           *train_args(tiny_model_dir, demo_dir, "lora", out, **extra)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    losses = [r["val_loss"] for r in read_jsonl(out / "metrics.jsonl") if r["type"] == "eval"]
    assert len(losses) >= 3 and all(b < a for a, b in zip(losses, losses[1:]))  # the last validation improved too
    digests = {p.name: p.read_text() for p in (tmp_path / "spy").iterdir()}
    assert sorted(digests) == ["rank0", "rank1"] and len(set(digests.values())) == 1, digests
    assert json.loads((out / "results.json").read_text())["training"]["best_step"] == 4


def test_fused_adamw_takes_the_same_step(tiny_cfg, tmp_path):
    """train.fused_optimizer on: AdamW's fused kernel (auto: only on CUDA, so CPU runs stay bit-identical) moves
    the weights as the per-tensor loop does."""
    weights = {}
    for fused in ("off", "on", "auto"):
        cfg = tiny_cfg("lora", **{**SHORT, "train.fused_optimizer": fused, "model.dropout": 0.0,
                                  "method.lora.dropout": 0.0})
        trainer = _trainer(cfg, tmp_path / fused)
        assert bool(trainer.optimizer.param_groups[0].get("fused")) == (fused == "on")
        trainer.train_step(trainer.epoch_groups(0)[0])
        weights[fused] = torch.cat([p.detach().flatten() for p in trainer.params])
    assert torch.allclose(weights["on"], weights["off"], rtol=0, atol=1e-6)
    assert torch.equal(weights["auto"], weights["off"])


@pytest.mark.parametrize("dora", [False, True])
def test_loraplus_groups_take_peft_s_step(tiny_model_dir, tokenizer, dora):
    """method.lora.lr_ratio (LoRA+): B's learning rate is lr x ratio. Two AdamW steps with our parameter groups
    leave every parameter where PEFT's create_loraplus_optimizer leaves it (DoRA's magnitudes go with B, as PEFT
    puts them); ratio 1 is one group, as before."""
    import copy

    from peft.optimizers import create_loraplus_optimizer

    from peftsum.methods import build_method
    from peftsum.model.loading import load_model
    from peftsum.train.loop import param_groups
    from tests.conftest import method_cfg, summary_logits, text_batch

    ids, mask = text_batch(tokenizer, ["Floods hit homes.\nTL;DR: Floods.", "A rail line opens.\nTL;DR: Rail."])
    model = load_model(str(tiny_model_dir)).eval()
    m = build_method(method_cfg("lora", str(tiny_model_dir), **{"method.lora.lr_ratio": 16.0,
                                                                 "method.lora.dora": dora}), tokenizer)
    m.prepare_model(model)
    model.eval()  # the LoRA layers' dropout too: both copies see the same forward
    with torch.no_grad():
        for _, p in m.trainable_parameters(model):
            p.add_(torch.randn_like(p) * 0.02)  # B off zero, so A has a gradient too
    ours, theirs = model, copy.deepcopy(model)
    groups = param_groups(m, ours, 1e-3)
    assert [g["lr"] for g in groups] == [1e-3, 1.6e-2]
    opt_ours = torch.optim.AdamW(groups, weight_decay=0.01)
    opt_theirs = create_loraplus_optimizer(theirs, torch.optim.AdamW, lr=1e-3, loraplus_lr_ratio=16.0,
                                           loraplus_weight_decay=0.01)
    for _ in range(2):
        for net, opt in ((ours, opt_ours), (theirs, opt_theirs)):
            summary_logits(net, m, ids, mask).float().pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
    for (name, a), (_, b) in zip(m.trainable_parameters(ours), m.trainable_parameters(theirs)):
        assert torch.allclose(a, b, atol=1e-7), name
    plain = build_method(method_cfg("lora", str(tiny_model_dir)), tokenizer)
    assert len(param_groups(plain, ours, 1e-3)) == 1
