"""The training loop and evaluation on a tiny GPT-2 with the demo preset's protocol."""

import contextlib
import json
import os
import signal
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from peftsum.cli import main
from peftsum.config import TRAINED_METHODS
from peftsum.experiment import load_components, run_experiment
from peftsum.utils import read_jsonl

RESULT_KEYS = {
    "params": {"total", "trainable", "added", "adapter_bytes"},
    "eval": {"val_loss", "test_loss", "test_perplexity", "rouge1", "rouge2", "rougeL", "rougeLsum", "rouge_n"},
    "cost": {"train_seconds", "eval_seconds", "examples_per_second", "tokens_per_second", "peak_memory_bytes",
             "train_flops", "device"},
    "training": {"epochs_run", "best_epoch", "steps", "early_stopped", "stopped_reason"},
}
FAST = {"train.max_steps": 6, "method.prompt_tuning.lr": 0.3, "method.lora.lr": 1e-2,
        "method.last_layer.lr": 1e-2, "method.full.lr": 3e-3}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir, demo_dir):
    from peftsum.config import load_config
    from tests.conftest import tiny_overrides

    out = tmp_path_factory.mktemp("runs")
    res = {}
    for m in ("zero-shot", "lead-3", *TRAINED_METHODS):
        cfg = load_config("demo", None, tiny_overrides(tiny_model_dir, demo_dir, **{"method.name": m, **FAST}))
        res[m] = run_experiment(cfg, out / m)
    return out, res


def test_every_method_learns(runs):
    """Validation loss after 6 steps is below its value before training (the full demo's slow test
    checks that every method also beats zero-shot)."""
    _, res = runs
    zs = res["zero-shot"]["eval"]["val_loss"]
    for m in TRAINED_METHODS:
        t = res[m]["training"]
        assert res[m]["eval"]["val_loss"] < t["initial_val_loss"], m
    for m in ("lora", "last-layer", "full"):  # the soft prompt starts from "[SUMMARIZE]", not from zero-shot
        assert res[m]["training"]["initial_val_loss"] == pytest.approx(zs, abs=1e-5)
        assert res[m]["eval"]["val_loss"] < zs, m


def test_results_json_has_every_key_with_sane_values(runs):
    out, res = runs
    for m in res:
        on_disk = json.loads((out / m / "results.json").read_text())
        assert on_disk["method"] == m and on_disk["preset"] == "demo" and "config" in on_disk
        for section, keys in RESULT_KEYS.items():
            assert keys <= set(on_disk[section]), (m, section)
        ev = on_disk["eval"]
        assert ev["rouge_n"] == 16 and all(0 <= ev[k] <= 100 for k in ("rouge1", "rouge2", "rougeL", "rougeLsum"))
        assert on_disk["cost"]["peak_memory_bytes"] > 0
        for f in ("metrics.jsonl", "predictions.jsonl", "config.yaml", "peftsum_method.json"):
            assert (out / m / f).is_file(), (m, f)
        base = json.loads((out / m / "peftsum_method.json").read_text())["base_model"]
        assert (Path(base) / "config.json").is_file()  # the run restores alone
        assert not (out / m / "checkpoint.pt").exists()
        if m in TRAINED_METHODS:
            assert on_disk["training"]["steps"] == 6 and on_disk["training"]["stopped_reason"] == "max_steps"
            assert on_disk["cost"]["train_seconds"] > 0 and on_disk["cost"]["train_flops"] > 0
            assert on_disk["params"]["adapter_bytes"] > 0
            assert ev["test_perplexity"] == pytest.approx(2.718281828 ** ev["test_loss"], rel=1e-6)
    assert res["lead-3"]["eval"]["val_loss"] is None
    preds = read_jsonl(out / "lora" / "predictions.jsonl")
    assert set(preds[0]) >= {"id", "reference", "prediction"}
    saved = {"prompt-tuning": "adapter_model.safetensors", "lora": "adapter_model.safetensors",
             "last-layer": "last_layer.safetensors", "full": "model.safetensors"}
    for m, f in saved.items():
        assert (out / m / f).is_file()


def test_evaluation_loss_equals_a_hand_computation(tiny_cfg):
    cfg = tiny_cfg("zero-shot")
    parts = load_components(cfg)
    model, tok, lm = parts.model, parts.tokenizer, parts.summary_lm
    data, _ = parts.load_data()
    from peftsum.evaluate.metrics import evaluate_loss

    ds = data["validation"].select(range(5))
    ours = evaluate_loss(lm, ds, 2, torch.device("cpu"), tok.pad_token_id)
    total, n = 0.0, 0
    model.eval()
    with torch.no_grad():
        for ex in ds:  # one example at a time, no padding, the model's own logits
            ids = torch.tensor([ex["input_ids"]])
            logp = F.log_softmax(model(ids).logits[0].double(), -1)
            for t in range(ex["prompt_len"], len(ex["input_ids"])):
                total -= logp[t - 1, ex["input_ids"][t]].item()
                n += 1
    assert ours["tokens"] == n
    assert ours["loss"] == pytest.approx(total / n, abs=1e-5)


def test_cached_trunk_features_give_the_uncached_loss(tiny_cfg):
    from peftsum.train.features import FeatureCache

    cfg = tiny_cfg("last-layer")
    parts = load_components(cfg)
    model, tok, method, lm = parts.model, parts.tokenizer, parts.method, parts.summary_lm
    data, _ = parts.load_data()
    assert method.cache_features and not method.trunk_backward
    from peftsum.data.collate import collate

    ds = data["train"].select(range(6))
    cache = FeatureCache(lm, ds, 4, torch.device("cpu"), tok.pad_token_id, torch.float32, contextlib.nullcontext)
    idx = [0, 3, 5]
    b = collate([ds[i] for i in idx], tok.pad_token_id)
    method.train_mode(model)
    direct, n1 = lm(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"])
    cached, n2 = lm(**cache.batch(idx, torch.device("cpu")))
    assert n1 == n2 and torch.allclose(direct, cached, rtol=1e-5)


def test_test_split_never_touches_training(tmp_path, tiny_model_dir):
    """Two data directories that differ only in test.csv give identical training trajectories."""
    from peftsum.config import load_config
    from peftsum.data.demo import write_demo_corpus
    from tests.conftest import tiny_overrides

    metrics, best = [], []
    for seed in (1, 2):
        d = write_demo_corpus(tmp_path / f"d{seed}", {"train": 60, "validation": 16, "test": 16}, seed=77)
        other = write_demo_corpus(tmp_path / f"t{seed}", {"test": 16}, seed=500 + seed)
        (d / "test.csv").write_bytes((other / "test.csv").read_bytes())
        cfg = load_config("demo", None, tiny_overrides(tiny_model_dir, d, **{"method.name": "lora", **FAST,
                                                                             "train.eval_every_steps": 2}))
        r = run_experiment(cfg, tmp_path / f"run{seed}")
        rows = read_jsonl(tmp_path / f"run{seed}" / "metrics.jsonl")
        metrics.append([{k: v for k, v in row.items() if k != "seconds"} for row in rows])
        best.append((r["training"]["best_step"], r["eval"]["val_loss"]))
        assert all(row.get("split", "validation") == "validation" for row in rows if row["type"] == "eval")
    assert metrics[0] == metrics[1] and best[0] == best[1]


def test_interrupt_then_resume_reproduces_the_uninterrupted_run(tmp_path, tiny_cfg, monkeypatch):
    from peftsum.train import metrics_file as loop

    extra = {**FAST, "train.max_steps": 6, "train.checkpoint_every_steps": 100}
    full = run_experiment(tiny_cfg("prompt-tuning", **extra), tmp_path / "a")
    # a real SIGINT (Ctrl-C) arrives during step 4: the loop finishes the step, checkpoints, stops
    real = loop.MetricsFile.write

    def boom(self, row):
        if row.get("type") == "train" and row["step"] == 4:
            os.kill(os.getpid(), signal.SIGINT)
        real(self, row)

    monkeypatch.setattr(loop.MetricsFile, "write", boom)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(tiny_cfg("prompt-tuning", **extra), tmp_path / "b")
    assert (tmp_path / "b" / "checkpoint.pt").is_file() and not (tmp_path / "b" / "results.json").exists()
    monkeypatch.setattr(loop.MetricsFile, "write", real)
    resumed = run_experiment(tiny_cfg("prompt-tuning", **extra), tmp_path / "b", resume=True)

    def strip(rows):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]

    assert strip(read_jsonl(tmp_path / "a" / "metrics.jsonl")) == strip(read_jsonl(tmp_path / "b" / "metrics.jsonl"))
    assert resumed["eval"] == full["eval"]
    assert resumed["training"]["steps"] == 6


def test_summarize_and_eval_on_saved_runs(runs, tmp_path, capsys):
    out, _ = runs
    article = tmp_path / "a.txt"
    article.write_text("REDFIELD -- About 300 workers at Harbor Logistics in Redfield went on strike on Monday over "
                       "pay. The union is asking for a rise of 5 percent. Officials said talks would resume soon.")
    for m in ("zero-shot", "lead-3", *TRAINED_METHODS):
        assert main(["summarize", str(out / m), str(article)]) == 0
        printed = capsys.readouterr().out.strip()
        assert printed, m
    assert main(["summarize", "lead-3", str(article)]) == 0
    assert capsys.readouterr().out.strip().startswith("REDFIELD -- About 300 workers")
    assert main(["eval", str(out / "lora"), "--split", "validation", "--limit", "4"]) == 0
    assert "rougeL" in capsys.readouterr().out
    assert json.loads((out / "lora" / "eval_validation.json").read_text())["examples"] == 4


def test_resuming_a_finished_early_stopped_run_does_not_train_on(tiny_cfg, tmp_path, monkeypatch):
    """An interruption after training ended (say during the final evaluation) resumes to evaluation only."""
    from peftsum.experiment import run as experiment

    cfg = tiny_cfg("lora", **{**FAST, "train.max_steps": None, "train.epochs": 5, "train.patience": 1,
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
    assert res["training"]["stopped_reason"] == "early_stopping" and res["training"]["early_stopped"]
    assert res["training"]["steps"] == steps_before == 16  # 8 steps an epoch; epoch 2 fails to improve: stop


def test_micro_batches_give_the_whole_batch_trajectory(tiny_cfg, tmp_path):
    """train.micro_batch_size cuts each batch into forward passes; without dropout the training and
    validation losses, and the test loss of the trained weights, are those of whole-batch passes (float
    sums aside). 3 does not divide the batch of 8."""
    from types import SimpleNamespace

    from peftsum.train.loop import _passes, micro_batch_size

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
    assert rb["eval"]["test_loss"] == pytest.approx(ra["eval"]["test_loss"], rel=1e-5)
