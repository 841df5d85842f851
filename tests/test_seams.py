"""What a user sees, checked against itself: summarize against the evaluation's predictions, a rerun
against the config it was given, a method alone against the same method inside compare, the report's
statistics against hand computations, and the early-stopping rules."""

import csv
import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from peftsum.cli import main
from peftsum.errors import TrainingDiverged
from peftsum.experiment import RunLock, run_experiment
from peftsum.report import bootstrap
from peftsum.train.early_stopping import EarlyStopping
from peftsum.utils import read_jsonl
from tests.conftest import tiny_overrides

ALL = "zero-shot,lead-3,prompt-tuning,lora,last-layer,full"
FAST = {"train.max_steps": 4, "data.train_size": 32}


def _compare_args(tiny_model_dir, demo_dir, out, methods=ALL, **extra):
    ov = dict(tiny_overrides(tiny_model_dir, demo_dir, **{"train.max_steps": 3, **extra}))
    return ["compare", "--preset", "demo", "--methods", methods, "--out", str(out),
            *[f"--set={k}={'null' if v is None else v}" for k, v in ov.items()]]


@pytest.fixture(scope="module")
def compared(tmp_path_factory, tiny_model_dir, demo_dir):
    out = tmp_path_factory.mktemp("seams")
    assert main(_compare_args(tiny_model_dir, demo_dir, out)) == 0
    return out


def _test_articles(demo_dir, ids):
    """The raw test articles (as in the CSV a user has) of the given ids, in that order."""
    with open(demo_dir / "test.csv", newline="", encoding="utf-8") as f:
        by_id = {r["id"]: r["article"] for r in csv.DictReader(f)}
    return [by_id[i] for i in ids]


@pytest.mark.parametrize("method", ALL.split(","))
def test_summarize_prints_what_the_evaluation_stored(compared, demo_dir, tmp_path, capsys, method):
    preds = read_jsonl(compared / method / "predictions.jsonl")
    ids = [p["id"] for p in preds]
    articles = _test_articles(demo_dir, ids)
    # one article at a time, as a user pastes it
    for k in (0, len(preds) - 1):
        (tmp_path / "a.txt").write_text(articles[k], encoding="utf-8")
        assert main(["summarize", str(compared / method), str(tmp_path / "a.txt")]) == 0
        assert capsys.readouterr().out.strip() == preds[k]["prediction"].strip(), (method, k)
    # the whole test set in batch mode, from a JSONL file with the same column names as --data
    src = tmp_path / "articles.jsonl"
    src.write_text("".join(json.dumps({"id": i, "article": a}) + "\n" for i, a in zip(ids, articles)))
    assert main(["summarize", str(compared / method), "--input", str(src), "--output", str(tmp_path / "o.jsonl")]) == 0
    got = read_jsonl(tmp_path / "o.jsonl")
    assert [g["id"] for g in got] == ids
    assert [g["prediction"] for g in got] == [p["prediction"] for p in preds]
    assert [g["generated_tokens"] for g in got] == [p["generated_tokens"] if method != "lead-3" else None
                                                    for p in preds]


def test_summarize_needs_no_training_data(compared, tmp_path, capsys):
    """The run's data source gone (CNN/DailyMail not cached, say): summarize still works."""
    run = tmp_path / "lora"
    shutil.copytree(compared / "lora", run)
    text = (run / "config.yaml").read_text()
    data_line = next(line for line in text.splitlines() if line.strip().startswith("source:"))
    (run / "config.yaml").write_text(text.replace(data_line, "  source: /nonexistent/data"))
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "x.txt").write_text("REDFIELD -- The council approved a new rail line on Monday.")
    assert main(["summarize", str(run), "--input", str(tmp_path / "folder")]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["id"] == "x" and isinstance(row["prediction"], str) and row["generated_tokens"] >= 0


def test_a_rerun_with_other_settings_is_refused_and_rerun_redoes(compared, tiny_model_dir, demo_dir, tmp_path, capsys):
    out = tmp_path / "c"
    shutil.copytree(compared, out)
    before = (out / "lora" / "results.json").read_text()
    args = _compare_args(tiny_model_dir, demo_dir, out, **{"eval.decoding.max_new_tokens": 5})
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "eval.decoding.max_new_tokens: 12 in the run, 5 now" in err and "--rerun" in err and "new --out" in err
    assert (out / "lora" / "results.json").read_text() == before  # nothing ran, nothing was overwritten
    quick = _compare_args(tiny_model_dir, demo_dir, out, methods="zero-shot,lead-3", **{"eval.decoding.max_new_tokens": 5})
    assert main([*quick, "--rerun", "zero-shot,lead-3"]) == 0
    assert json.loads((out / "zero-shot" / "results.json").read_text())["config"]["eval"]["decoding"]["max_new_tokens"] == 5
    # train --resume follows the same rule
    assert main(["train", "--out", str(out / "lora"), "--resume", "--train.lr", "0.5"]) == 2
    assert "train.lr" in capsys.readouterr().err


def test_a_second_process_on_the_same_directory_is_refused(tiny_model_dir, demo_dir, tmp_path, capsys):
    import os

    out = tmp_path / "busy"
    with RunLock(out):
        assert main(_compare_args(tiny_model_dir, demo_dir, out, methods="lead-3")) == 2
    assert f"pid {os.getpid()}" in capsys.readouterr().err
    assert not (out / "lead-3").exists()
    assert main(_compare_args(tiny_model_dir, demo_dir, out, methods="lead-3")) == 0  # released


def test_runs_on_different_test_sets_are_not_compared(compared, tmp_path, capsys):
    out = tmp_path / "d"
    shutil.copytree(compared, out)
    rows = (out / "lora" / "predictions.jsonl").read_text().splitlines()
    (out / "lora" / "predictions.jsonl").write_text("\n".join(rows[:-3]) + "\n")  # as with another eval.limit
    assert main(["report", str(out)]) == 2
    assert "different test articles" in capsys.readouterr().err


@pytest.mark.slow
def test_peak_memory_is_the_methods_own(tiny_model_dir, demo_dir, tmp_path):
    """full alone and full after lora in one compare process: the same peak within 10 %."""
    def peak(methods, out):
        done = subprocess.run([sys.executable, "-m", "peftsum.cli",
                               *_compare_args(tiny_model_dir, demo_dir, out, methods=methods)],
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads((out / "full" / "results.json").read_text())["cost"]["peak_memory_bytes"]

    alone, after = peak("full", tmp_path / "a"), peak("lora,full", tmp_path / "b")
    assert after == pytest.approx(alone, rel=0.10)


def test_report_length_columns_and_holm(compared):
    rows = {r["method"]: r for r in csv.DictReader(open(compared / "results.csv"))}
    for m in ("lora", "lead-3"):
        preds = read_jsonl(compared / m / "predictions.jsonl")
        mean = np.mean([p["generated_tokens"] for p in preds])
        assert float(rows[m]["mean_generated_tokens"]) == pytest.approx(mean)
    preds = read_jsonl(compared / "lora" / "predictions.jsonl")
    share = np.mean([p["generated_tokens"] >= 12 for p in preds])  # eval.max_new_tokens of the tiny runs
    assert float(rows["lora"]["hit_max_new_tokens"]) == pytest.approx(share)
    assert rows["lead-3"]["hit_max_new_tokens"] == ""
    md = (compared / "report.md").read_text()
    assert "Holm" in md and "gen. tokens" in md


def test_holm_bonferroni_by_hand():
    # p = 0.01, 0.04, 0.03, 0.005 -> sorted 0.005*4, 0.01*3, 0.03*2, 0.04*1 -> 0.02, 0.03, 0.06, 0.06 (monotone)
    assert bootstrap.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert bootstrap.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_bootstrap_p_value_by_hand():
    idx = np.array([[0, 0], [1, 1], [0, 1], [1, 0]])  # four resamples of two articles
    d = bootstrap.paired_difference([1.0, 3.0], [2.0, 2.0], idx)  # differences -1, +1: resampled means -1, 1, 0, 0
    assert d["diff"] == 0.0
    assert d["p"] == pytest.approx(min(1.0, 2 * (3 + 1) / 5))  # 3 means <= 0, 3 >= 0


def test_early_stopping_rules():
    s = EarlyStopping(patience=2, min_delta=0.1)
    assert s.update(5.0, 1, 1) and not s.should_stop
    assert not s.update(4.95, 2, 1) and not s.should_stop  # not better by more than min_delta
    assert s.update(4.5, 3, 2)  # resets the count
    assert not s.update(4.6, 4, 2) and not s.should_stop
    assert not s.update(4.7, 5, 3) and s.should_stop  # patience consecutive non-improvements
    assert s.best == 4.5 and s.best_step == 3 and s.best_epoch == 2
    assert s.seen(5) and not s.seen(6)
    never = EarlyStopping(patience=None)
    for step in range(10):
        never.update(1.0, step, 1)
    assert not never.should_stop


def test_validation_at_an_epoch_end_is_not_counted_twice(tiny_cfg, tmp_path):
    # 32 examples / batch 8 = 4 steps an epoch; eval_every_steps 4 lands on each epoch's end
    cfg = tiny_cfg("lora", **{**FAST, "train.max_steps": None, "train.epochs": 3, "train.eval_every_steps": 4})
    r = run_experiment(cfg, tmp_path / "r")
    evals = [m["step"] for m in read_jsonl(tmp_path / "r" / "metrics.jsonl") if m["type"] == "eval"]
    assert evals == [0, 4, 8, 12] and len(r["training"]["validation_history"]) == 3
    assert r["training"]["stopped_reason"] == "epochs"


def test_epoch_limit_is_not_called_max_steps(tiny_cfg, tmp_path):
    r = run_experiment(tiny_cfg("lora", **{**FAST, "train.max_steps": 1000, "train.epochs": 1}), tmp_path / "r")
    assert r["training"]["steps"] == 4 and r["training"]["stopped_reason"] == "epochs"
    r = run_experiment(tiny_cfg("lora", **{**FAST, "train.max_steps": 3, "train.epochs": 1}), tmp_path / "s")
    assert r["training"]["steps"] == 3 and r["training"]["stopped_reason"] == "max_steps"


def test_val_limit_is_a_fixed_seeded_subset(tiny_cfg, tmp_path):
    from peftsum.train.loop import validation_subset

    a = run_experiment(tiny_cfg("lora", **{**FAST, "train.val_limit": 5}), tmp_path / "a")
    b = run_experiment(tiny_cfg("lora", **FAST), tmp_path / "b")
    assert a["training"]["initial_val_loss"] != pytest.approx(b["training"]["initial_val_loss"], abs=1e-9)
    assert a["eval"]["val_loss"] == pytest.approx(b["eval"]["val_loss"], rel=0.2)  # the final one: whole split

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
        run_experiment(tiny_cfg("lora", **FAST), tmp_path / "r")
    assert not (tmp_path / "r" / "results.json").exists() and not (tmp_path / "r" / "best.safetensors").exists()
    assert TrainingDiverged.exit_code != 0
    assert math.isnan(float("nan"))


def test_early_stop_in_the_middle_of_an_epoch_checkpoints(tiny_cfg, tmp_path, monkeypatch):
    from peftsum.experiment import run as experiment
    from peftsum.train.checkpoint import load_checkpoint

    def stop_before_evaluation(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(experiment, "evaluate_run", stop_before_evaluation)
    cfg = tiny_cfg("lora", **{**FAST, "train.max_steps": None, "train.epochs": 3, "train.eval_every_steps": 1,
                              "train.patience": 1, "train.min_delta": 100.0, "train.checkpoint_every_steps": 1000})
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, tmp_path / "r")
    state = load_checkpoint(tmp_path / "r")["state"]
    assert state["stopped_reason"] == "early_stopping" and state["step"] == 2  # mid-epoch 1 of 4 steps
    assert torch.is_tensor(load_checkpoint(tmp_path / "r")["rng"]["torch"])
