"""One experiment (experiment/run.py) on a tiny GPT-2 with the demo preset's protocol: every method learns, the
results record and run directory, the test split kept out of training, determinism, saved runs evaluated again."""

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from peftsum.cli import main
from peftsum.experiment import load_trained, run_experiment
from peftsum.experiment.results import read_results
from peftsum.methods import trained_methods
from peftsum.utils import read_jsonl
from tests.conftest import tiny_overrides, without_seconds

TRAINED_METHODS = trained_methods()

RESULT_KEYS = {
    "params": {"total", "trainable", "added", "adapter_bytes"},
    "eval": {"val_loss", "test_loss", "test_perplexity", "metrics", "examples"},
    "cost": {"train_seconds", "eval_seconds", "examples_per_second", "tokens_per_second", "peak_memory_bytes",
             "train_flops", "device"},
    "training": {"epochs_run", "best_epoch", "steps", "early_stopped", "stopped_reason"},
}
FAST = {"train.max_steps": 6, "method.prompt_tuning.lr": 0.3, "method.lora.lr": 1e-2,
        "method.last_layer.lr": 1e-2, "method.full.lr": 3e-3}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, compared):
    """The session's shared compare of every method (3 steps each), copied: these tests write into the runs."""
    out = tmp_path_factory.mktemp("runs")
    res = {}
    for m in ("zero-shot", "lead-3", *TRAINED_METHODS):
        shutil.copytree(compared / m, out / m)
        res[m] = read_results(out / m)
    return out, res


def test_every_method_learns(runs):
    """Validation loss after 3 steps is below its value before training (the full demo's slow test
    checks that every method also beats zero-shot)."""
    _, res = runs
    zs = res["zero-shot"].eval.val_loss
    for m in TRAINED_METHODS:
        t = res[m].training
        assert res[m].eval.val_loss < t.initial_val_loss, m
    # QLoRA is LoRA on the 4-bit base: the same counts, a loss within 0.5 % of LoRA's before and after 3 steps
    assert res["qlora"].params == dataclasses.replace(res["lora"].params, adapter_bytes=res["qlora"].params.adapter_bytes)
    for key in ("initial_val_loss",):
        assert getattr(res["qlora"].training, key) == pytest.approx(getattr(res["lora"].training, key), rel=5e-3)
    assert res["qlora"].eval.val_loss == pytest.approx(res["lora"].eval.val_loss, rel=5e-3)
    assert res["qlora"].eval.val_loss != res["lora"].eval.val_loss  # the base did change
    for m in ("lora", "last-layer", "full"):  # the soft prompt starts from "[SUMMARIZE]", not from zero-shot
        assert res[m].training.initial_val_loss == pytest.approx(zs, abs=1e-5)
        assert res[m].eval.val_loss < zs, m


def test_results_json_has_every_key_with_sane_values(runs):
    out, res = runs
    for m in res:
        on_disk = json.loads((out / m / "results.json").read_text())
        assert on_disk["method"] == m and on_disk["preset"] == "demo" and "config" in on_disk
        for section, keys in RESULT_KEYS.items():
            assert keys <= set(on_disk[section]), (m, section)
        ev = on_disk["eval"]
        assert ev["examples"] == 16 and all(0 <= ev["metrics"][k] <= 100 for k in ("rouge1", "rouge2", "rougeL",
                                                                                 "rougeLsum", "novel_2gram"))
        assert {"coverage", "density", "compression", "repeated_3gram", "words", "length_ratio"} <= set(ev["metrics"])
        assert on_disk["cost"]["peak_memory_bytes"] > 0
        for f in ("metrics.jsonl", "predictions.jsonl", "config.yaml", "peftsum_method.json"):
            assert (out / m / f).is_file(), (m, f)
        base = json.loads((out / m / "peftsum_method.json").read_text())["base_model"]
        assert (Path(base) / "config.json").is_file()  # the run restores alone
        assert not (out / m / "checkpoint.pt").exists()
        if m in TRAINED_METHODS:
            assert on_disk["training"]["steps"] == 3 and on_disk["training"]["stopped_reason"] == "max_steps"
            assert on_disk["cost"]["train_seconds"] > 0 and on_disk["cost"]["train_flops"] > 0
            assert on_disk["params"]["adapter_bytes"] > 0
            assert ev["test_perplexity"] == pytest.approx(2.718281828 ** ev["test_loss"], rel=1e-6)
    assert res["lead-3"].eval.val_loss is None
    preds = read_jsonl(out / "lora" / "predictions.jsonl")
    assert set(preds[0]) >= {"id", "reference", "prediction"}
    saved = {"prompt-tuning": "adapter_model.safetensors", "lora": "adapter_model.safetensors",
             "last-layer": "last_layer.safetensors", "full": "model.safetensors"}
    for m, f in saved.items():
        assert (out / m / f).is_file()



def test_test_split_never_touches_training(tmp_path, tiny_model_dir):
    """Two data directories that differ only in test.csv give identical training trajectories."""
    from peftsum.config import load_config
    from peftsum.data.demo import write_demo_corpus

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
        best.append((r.training.best_step, r.eval.val_loss))
        assert all(row.get("split", "validation") == "validation" for row in rows if row["type"] == "eval")
    assert metrics[0] == metrics[1] and best[0] == best[1]


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


def test_same_seed_gives_bit_identical_metrics_and_results(tiny_cfg, tmp_path):
    cfg = tiny_cfg("prompt-tuning", **{**FAST, "train.max_steps": 5})
    a = run_experiment(cfg, tmp_path / "a")
    b = run_experiment(cfg, tmp_path / "b")
    assert without_seconds(read_jsonl(tmp_path / "a" / "metrics.jsonl")) == without_seconds(read_jsonl(tmp_path / "b" / "metrics.jsonl"))
    assert a.eval == b.eval and a.training == b.training and a.params == b.params
    assert (tmp_path / "a" / "predictions.jsonl").read_text() == (tmp_path / "b" / "predictions.jsonl").read_text()


def nf4_bytes(n: int) -> int:
    """A 4-bit NF4 matrix of n numbers with double quantization: two per byte, a uint8 absmax per block of 64, the 16
    float32 NF4 values, a float32 absmax per 256 blocks, their 256-value float32 code and a float32 offset."""
    return n // 2 + n // 64 + 16 * 4 + 4 * -(-n // (64 * 256)) + 256 * 4 + 4


def test_the_training_state_by_its_parts_follows_the_formula(runs):
    """Exact bytes: fp32 gradients of the trained tensors, AdamW's two fp32 moments and a 4-byte step per trained
    tensor, every weight once (the tied head too); full fine-tuning's state exceeds LoRA's by exactly that.  QLoRA's
    weights: the blocks' four matrices per layer (3d², d², 4d², 4d²) in NF4, the rest as LoRA's."""
    out, res = runs
    state = {}
    for m in TRAINED_METHODS:
        parts = load_trained(out / m)
        trained = [p for _, p in parts.method.trainable_parameters(parts.model)]
        n, tensors = sum(p.numel() for p in trained), len(trained)
        c = res[m].cost
        assert n == res[m].params.trainable
        assert c.gradient_bytes == 4 * n and c.optimizer_bytes == 8 * n + 4 * tensors, m
        if m == "qlora":
            d, layers = parts.model.config.n_embd, parts.model.config.n_layer
            matrices = [k * d * d for k in (3, 1, 4, 4)] * layers
            assert c.weights_bytes == 4 * (res[m].params.total - sum(matrices)) + sum(map(nf4_bytes, matrices))
            continue
        assert c.weights_bytes == 4 * res[m].params.total, m
        assert c.train_peak_bytes > 0 and c.eval_peak_bytes > 0 and c.reserved_peak_bytes is None  # no CUDA here
        assert c.peak_memory_bytes >= max(c.train_peak_bytes, c.eval_peak_bytes)
        state[m] = (c.weights_bytes + c.gradient_bytes + c.optimizer_bytes, n, tensors, res[m].params.added)
    (full, n_full, t_full, _), (lora, n_lora, t_lora, added) = state["full"], state["lora"]
    assert full - lora == 12 * (n_full - n_lora) + 4 * (t_full - t_lora) - 4 * added
    for m in ("zero-shot", "lead-3"):
        c = res[m].cost
        assert c.gradient_bytes == c.optimizer_bytes == 0 and c.train_peak_bytes is None and c.eval_peak_bytes > 0
