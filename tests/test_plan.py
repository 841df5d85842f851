"""`peftsum plan` projects from a few timed steps; the projection of a short run must be within a
factor of 2 of the same run measured (a loose bound: the machines are noisy)."""

from peftsum.experiment import run_experiment
from peftsum.report.plan import measure, render


def test_plan_projection_within_factor_two(tiny_cfg, tmp_path):
    cfg = tiny_cfg("lora", **{"train.max_steps": 16, "data.train_size": 160, "train.batch_size": 8})
    projected = measure(cfg, ["lora", "zero-shot"], "cpu", steps=4)
    assert [r["method"] for r in projected["rows"]] == ["lora"]  # zero-shot trains nothing
    row = projected["rows"][0]
    assert row["steps"] == 16 and row["trainable"] > 0 and row["train_flops"] > 0
    text = render(projected)
    assert "whole protocol" in text and "assumptions:" in text
    measured = run_experiment(cfg, tmp_path / "lora")["cost"]["train_seconds"]
    ratio = row["train_seconds"] / measured
    assert 0.5 <= ratio <= 2.0, (row["train_seconds"], measured)
