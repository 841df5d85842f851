"""``--report-to``: what the trackers hold, read back with their own clients (TensorBoard's event reader,
MLflow's tracking client), against ``metrics.jsonl`` and ``results.json``."""

from __future__ import annotations

import importlib.util
import json
import os

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from peftsum.cli import main
from peftsum.config import flatten_dict
from tests.conftest import set_args, sweep_args, sweep_study


def _scalars(folder) -> dict[str, dict[int, float]]:
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def _rows(run, kind):
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["type"] == kind]


def test_tensorboard_holds_the_metrics_file(tiny_model_dir, demo_dir, tmp_path):
    run = tmp_path / "lora"
    assert main(["train", "--preset", "demo", "--method", "lora", "--out", str(run), "--report-to", "tensorboard",
                 "--max-steps", "4", *set_args(tiny_model_dir, demo_dir, **{"train.eval_every_steps": 2})]) == 0
    logged = _scalars(run / "tracking" / "lora" / "peftsum")
    train, evals = _rows(run, "train"), _rows(run, "eval")
    assert len(train) == 4 and len(evals) >= 3
    for key, tag in (("loss", "train/loss"), ("lr", "train/lr"), ("grad_norm", "train/grad_norm")):
        assert logged[tag] == {r["step"]: pytest.approx(r[key], rel=1e-6, abs=1e-12) for r in train}
    assert logged["train/tokens_per_second"] == {r["step"]: pytest.approx(r["tokens"] / r["seconds"], rel=1e-6)
                                                 for r in train}
    assert logged["validation/loss"] == {r["step"]: pytest.approx(r["val_loss"], rel=1e-6) for r in evals}
    results = json.loads((run / "results.json").read_text())
    assert logged["final/test_loss"] == {4: pytest.approx(results["eval"]["test_loss"], rel=1e-6)}
    for k, v in results["eval"]["metrics"].items():  # every metric the run computed, ROUGE and the statistics
        assert logged[f"final/{k}"] == {4: pytest.approx(v, rel=1e-6)}, k
    assert {"final/rougeL", "final/novel_2gram", "final/density"} <= set(logged)
    # the hyperparameters: the whole config
    import yaml

    (hparams,) = (run / "tracking" / "lora" / "peftsum").glob("*/hparams.yml")
    stored = yaml.safe_load(hparams.read_text())
    assert stored["train.lr"] is None and stored["method.lora.lr"] == results["config"]["method"]["lora"]["lr"]
    assert set(stored) == set(flatten_dict(results["config"]))


@pytest.mark.slow
def test_mlflow_holds_params_and_final_metrics_of_each_method(tiny_model_dir, demo_dir, tmp_path, monkeypatch):
    try:
        import mlflow
    except ImportError:
        if os.environ.get("CI"):  # the test extra installs it: in CI a missing MLflow is a failure, not a skip
            raise
        pytest.skip("mlflow is not installed (pip install -e '.[test]')")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")  # a local store
    out = tmp_path / "cmp"
    assert main(["compare", "--preset", "demo", "--methods", "lora,prompt-tuning", "--out", str(out),
                 "--report-to", "mlflow", "--max-steps", "2", *set_args(tiny_model_dir, demo_dir)]) == 0
    client = mlflow.tracking.MlflowClient()
    exp = client.get_experiment_by_name("peftsum")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    assert set(runs) == {"lora", "prompt-tuning"}
    for method, r in runs.items():
        results = json.loads((out / method / "results.json").read_text())
        assert r.data.params["method.name"] == method
        assert float(r.data.params["train.batch_size"]) == results["config"]["train"]["batch_size"]
        assert r.data.metrics["final/test_loss"] == pytest.approx(results["eval"]["test_loss"], rel=1e-6)
        assert r.data.metrics["final/rouge1"] == pytest.approx(results["eval"]["metrics"]["rouge1"], rel=1e-6)
        history = client.get_metric_history(r.info.run_id, "train/loss")
        assert [(m.step, m.value) for m in history] == [(t["step"], pytest.approx(t["loss"], rel=1e-6))
                                                        for t in _rows(out / method, "train")]


def test_sweep_trials_are_tracker_runs(tiny_model_dir, demo_dir, tmp_path):
    out = tmp_path / "sweep"
    assert main([*sweep_args(tiny_model_dir, demo_dir, out, trials=2), "--report-to", "tensorboard"]) == 0
    study = sweep_study(out)
    for t in study.trials:
        logged = _scalars(out / "tracking" / "lora" / f"trial-{t.number}" / "peftsum")
        assert logged["validation/loss"] == {s: pytest.approx(v, rel=1e-6) for s, v in t.intermediate_values.items()}


@pytest.mark.parametrize("name, message", [
    ("wandb", "pip install 'peftsum[wandb]'"),
    ("nosuchtracker", "unknown tracker; valid: "),
])
def test_a_tracker_that_cannot_run_is_one_clear_error(tiny_model_dir, demo_dir, tmp_path, capsys, name, message):
    if name == "wandb" and importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here: the missing-package message cannot be shown")
    out = tmp_path / "run"
    assert main(["train", "--preset", "demo", "--method", "lora", "--out", str(out), "--report-to", name,
                 *set_args(tiny_model_dir, demo_dir)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
