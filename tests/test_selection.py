"""train.select_by: the best checkpoint, early stopping and the sweep's objective by the metric the report
ranks on (ROUGE-Lsum of generated validation summaries), not only by validation loss."""

from __future__ import annotations

import json

import optuna
import pytest
from optuna.storages.journal import JournalFileBackend, JournalStorage

from peftsum.cli import main
from peftsum.evaluate.evaluation import prompts_of
from peftsum.evaluate.generate import generate_summaries
from peftsum.evaluate.metrics import rouge_per_example
from peftsum.experiment.run import accelerator_for, load_trained
from peftsum.train.early_stopping import EarlyStopping
from peftsum.train.loop import validation_subset
from peftsum.utils import read_jsonl
from tests.test_sweep import _sets, _sweep_args


def test_early_stopping_on_a_score_keeps_the_highest():
    es = EarlyStopping(patience=2, maximize=True)
    assert es.update(10.0, 1, 1) and es.update(12.0, 2, 1)
    assert not es.update(11.0, 3, 1) and not es.should_stop
    assert not es.update(11.5, 4, 1) and es.should_stop
    assert (es.best_value, es.best_step) == (12.0, 2)
    loss = EarlyStopping(patience=None)
    loss.update(3.0, 1, 1)
    loss.update(2.5, 2, 1)
    assert (loss.best_value, loss.best_step) == (2.5, 2)


def test_select_by_rouge_keeps_the_weights_with_the_best_validation_rouge(tiny_model_dir, demo_dir, tmp_path):
    """Validations record ROUGE-Lsum of the decoding on a fixed subset; the kept weights are those of the highest
    one, and regenerating that subset with the saved run gives that very score; the generation is counted in
    the training time."""
    run = tmp_path / "run"
    args = ["train", "--preset", "demo", "--method", "lora", "--out", str(run),
            *_sets(tiny_model_dir, demo_dir, **{"train.select_by": "rougeLsum", "train.rouge_examples": 6,
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


def test_sweep_maximises_validation_rouge_when_asked(tiny_model_dir, demo_dir, tmp_path):
    out = tmp_path / "sw"
    assert main(_sweep_args(tiny_model_dir, demo_dir, out, trials=2, steps=2,
                            **{"train.select_by": "rougeLsum", "train.rouge_examples": 4})) == 0
    storage = JournalStorage(JournalFileBackend(str(out / "optuna.journal")))
    study = optuna.load_study(study_name="peftsum-lora-rougeLsum", storage=storage)
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    done = [tr for tr in study.trials if tr.state == optuna.trial.TrialState.COMPLETE]
    assert study.best_value == max(tr.value for tr in done)
    sweep = json.loads((out / "sweep.json").read_text())
    assert sweep["objective"] == "rougeLsum" and sweep["studies"]["lora"] == "peftsum-lora-rougeLsum"
    assert "best validation ROUGE-Lsum" in (out / "sweep.md").read_text()
