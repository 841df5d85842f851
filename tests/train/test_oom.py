"""Out of device memory (train/loop.py back-off, utils.in_halves in the evaluation): injected on the CPU as CUDA
raises it, ``torch.OutOfMemoryError`` from a forward pass above a number of sequences, after the pass drew its
dropout (as an allocation late in the pass would)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys

import pytest
import torch

from peftsum.cli import main
from peftsum.evaluate.evaluation import evaluate_split
from peftsum.experiment import accelerator_for, load_components, run_experiment
from peftsum.train.loss import SummaryLM
from peftsum.utils import read_jsonl
from tests.conftest import train_args, without_seconds

OOM = "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 15.77 GiB total capacity)"


@contextlib.contextmanager
def out_of_memory_above(monkeypatch, limit: int, calls: list | None = None, training: bool = True):
    """Forward passes (training passes, or evaluation passes with ``training=False``) of more than ``limit``
    sequences raise CUDA's out-of-memory error; ``calls`` collects the sizes of those passes."""
    real = SummaryLM.forward

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kw):
        out = real(self, input_ids, attention_mask, labels, **kw)
        if self.training != training:
            return out
        rows = (input_ids if input_ids is not None else kw["features"]).shape[0]
        if calls is not None:
            calls.append(rows)
        if rows > limit:
            raise torch.OutOfMemoryError(OOM)
        return out

    monkeypatch.setattr(SummaryLM, "forward", forward)
    yield
    monkeypatch.setattr(SummaryLM, "forward", real)


def test_a_step_out_of_memory_at_8_is_the_step_run_at_4(tiny_cfg, tmp_path, monkeypatch, capsys):
    """Micro-batch 8 runs out of memory in every step: each step starts again at 4 and the run (losses, gradient
    norms, validations, the trained weights, the test loss) is the run configured at micro-batch 4, dropout on; the
    back-off is said once and recorded."""
    runs = {}
    for name, mbs, limit in (("oom", 8, 4), ("four", 4, None)):
        cfg = tiny_cfg("lora", **{"train.max_steps": 3, "train.micro_batch_size": mbs, "method.lora.lr": 1e-2})
        calls: list = []
        with out_of_memory_above(monkeypatch, limit or 99, calls):
            res = run_experiment(cfg, tmp_path / name)
        runs[name] = res, read_jsonl(tmp_path / name / "metrics.jsonl"), calls
    (oom, rows_oom, calls), (four, rows_four, _) = runs["oom"], runs["four"]
    assert without_seconds(rows_oom) == without_seconds(rows_four)  # every loss and gradient norm, exactly
    assert oom.eval.test_loss == four.eval.test_loss and oom.eval.metrics == four.eval.metrics
    assert calls[:3] == [8, 4, 4] and 8 not in calls[3:]  # the first step: 8 failed, then 4 + 4; later steps at 4
    assert oom.training.micro_batch_size == 4 and oom.training.oom_backoffs == 1
    assert four.training.micro_batch_size == 4 and four.training.oom_backoffs == 0
    err = capsys.readouterr().err
    assert err.count("out of device memory at 8 sequences per forward pass") == 1 and "going on with 4" in err


def test_one_sequence_that_does_not_fit_is_one_line_and_keeps_the_checkpoint(tiny_model_dir, demo_dir, tmp_path,
                                                                             monkeypatch, capsys):
    out = tmp_path / "r"
    args = train_args(tiny_model_dir, demo_dir, "lora", out, **{"train.max_steps": 4, "train.micro_batch_size": 2,
                                                                "train.checkpoint_every_steps": 1})
    real = SummaryLM.forward
    seen = {"steps": 0}

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kw):  # memory runs out after step 2
        if self.training and seen["steps"] >= 2:
            raise torch.OutOfMemoryError(OOM)
        return real(self, input_ids, attention_mask, labels, **kw)

    from peftsum.train.loop import Trainer

    step = Trainer.train_step

    def counted(self, group):
        row = step(self, group)
        seen["steps"] = self.state.step
        return row

    monkeypatch.setattr(SummaryLM, "forward", forward)
    monkeypatch.setattr(Trainer, "train_step", counted)
    assert main(args) == 4
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith("peftsum: error:")]
    assert len(lines) == 1 and "Traceback" not in err
    assert "out of device memory at 1 sequence(s) per forward pass (step 3)" in lines[0]
    for hint in ("train.gradient_checkpointing", "qlora", "peftsum plan --device-memory", "last checkpoint"):
        assert hint in lines[0], hint
    assert "going on with 1" in err  # 2 was tried first
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["state"]["step"] == 2 and not (out / "results.json").exists()


def test_the_evaluation_backs_off_its_batch_and_scores_the_same(tiny_cfg, tmp_path, monkeypatch, capsys):
    """Out of memory above 2 sequences in the loss and in generation (beam search): the batches of 8 are halved
    down to 2, the summaries are the same and the loss the same (float sums aside)."""
    cfg = tiny_cfg("lora", **{"eval.decoding.num_beams": 3})
    accelerator = accelerator_for(cfg)
    parts = load_components(cfg, accelerator.device)
    data, _ = parts.load_data()
    test = data["test"].select(range(8))

    def evaluate():
        return evaluate_split(parts.summary_lm, parts.model, parts.method, parts.tokenizer, test, cfg.eval,
                              accelerator.device)

    whole, rows = evaluate()
    from peftsum.evaluate import generate

    real_generate = generate.generate_ids

    def generate_ids(model, method, ids, *args, **kwargs):
        if ids.shape[0] > 2:
            raise torch.OutOfMemoryError(OOM)
        return real_generate(model, method, ids, *args, **kwargs)

    monkeypatch.setattr(generate, "generate_ids", generate_ids)
    calls: list = []
    with out_of_memory_above(monkeypatch, 2, calls, training=False):
        halved, rows_halved = evaluate()
    assert [r["prediction"] for r in rows_halved] == [r["prediction"] for r in rows]
    assert halved["loss"] == pytest.approx(whole["loss"], rel=1e-6) and halved["tokens"] == whole["tokens"]
    assert halved["metrics"] == whole["metrics"]
    assert 8 in calls and max(c for c in calls if c <= 2) == 2
    err = capsys.readouterr().err
    assert "out of device memory for generating summaries, 8 at once; going on with 4" in err


def test_an_article_that_does_not_fit_even_alone_is_one_line(tiny_cfg, monkeypatch):
    from peftsum.errors import OutOfMemory
    from peftsum.evaluate import generate

    cfg = tiny_cfg("lora")
    accelerator = accelerator_for(cfg)
    parts = load_components(cfg, accelerator.device)
    monkeypatch.setattr(generate, "generate_ids", lambda *a, **k: (_ for _ in ()).throw(torch.OutOfMemoryError(OOM)))
    with pytest.raises(OutOfMemory, match="generating summaries even one at a time; lower eval.batch_size"):
        generate.generate_summaries(parts.model, parts.method, parts.tokenizer, [[1, 2, 3], [4, 5]],
                                    cfg.eval.decoding, 2, accelerator.device)


RANK_1_OOM = '''
import torch

import peftsum.train.loss as loss

_forward = loss.SummaryLM.forward


def forward(self, input_ids=None, attention_mask=None, labels=None, **kw):  # only rank 1's device is small
    out = _forward(self, input_ids, attention_mask, labels, **kw)
    if self.training and torch.distributed.get_rank() == 1 and input_ids.shape[0] > 2:
        raise torch.OutOfMemoryError("CUDA out of memory (injected on rank 1)")
    return out


loss.SummaryLM.forward = forward
'''


@pytest.mark.slow
def test_two_processes_agree_on_the_smaller_micro_batch(tiny_model_dir, demo_dir, tmp_path):
    """Under torchrun one rank runs out of memory: every rank backs off to the same micro-batch (no rank waits in an
    all-reduce for another), and the run is the 2-process run configured at that micro-batch."""
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(RANK_1_OOM)
    env = dict(os.environ)
    extra = {"train.max_steps": 3, "train.batch_size": 4}
    runs = {}
    for name, mbs, site in (("oom", 4, True), ("two", 2, False)):
        run_env = {**env, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), env.get("PYTHONPATH", "")])} \
            if site else env
        done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                               "-m", "peftsum.cli", *train_args(tiny_model_dir, demo_dir, "lora", tmp_path / name,
                                                                **extra, **{"train.micro_batch_size": mbs})],
                              capture_output=True, text=True, env=run_env, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        runs[name] = read_jsonl(tmp_path / name / "metrics.jsonl"), done.stderr
    (oom, err), (two, _) = runs["oom"], runs["two"]
    assert without_seconds(oom) == without_seconds(two)
    assert "going on with 2" in err
