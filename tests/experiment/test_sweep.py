"""peftsum sweep (Optuna) and compare --seeds, through the CLI and Optuna's own storage."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
import torch
import yaml
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import TrialState

from peftsum.cli import main
from tests.conftest import SWEEP_SIZES, set_args, sweep_args, sweep_study, tiny_overrides


@pytest.mark.slow
def test_two_workers_share_one_study(tiny_model_dir, demo_dir, tmp_path):
    out = tmp_path / "sw"
    cmd = [sys.executable, "-m", "peftsum.cli", *sweep_args(tiny_model_dir, demo_dir, out, trials=5)]
    workers = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [w.communicate(timeout=900) for w in workers]
    assert all(w.returncode == 0 for w in workers), [o[1][-2000:] for o in outputs]
    study = sweep_study(out)
    done = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(done) == 5  # exactly N finished between them, none beyond
    assert len({t.number for t in done}) == 5
    for t in study.get_trials(states=(TrialState.FAIL,)):  # a trial asked when the study was full never ran
        assert not t.intermediate_values
    assert len({t.user_attrs["worker"] for t in done}) == 2  # both processes worked the study
    best = study.best_trial
    assert best.value == min(t.value for t in done if t.state == TrialState.COMPLETE)
    printed = "".join(o[0] for o in outputs)
    assert printed.count("[lora] trial") == 5


@pytest.mark.slow
def test_killed_sweep_continues_with_the_trials_it_had(tiny_model_dir, demo_dir, tmp_path):
    out = tmp_path / "sw"
    cmd = [sys.executable, "-m", "peftsum.cli", *sweep_args(tiny_model_dir, demo_dir, out, trials=4)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    first = []
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
        if not (out / "optuna.journal").is_file():
            continue
        try:
            first = sweep_study(out).get_trials(states=(TrialState.COMPLETE,))
        except KeyError:  # the journal exists, the study not yet
            continue
        if first:
            break
    assert first, "no trial completed before the deadline"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    kept = {t.number: t.value for t in sweep_study(out).get_trials(states=(TrialState.COMPLETE,))}
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    study = sweep_study(out)
    done = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(done) == 4
    assert {t.number: t.value for t in done if t.number in kept} == kept  # the finished trials stay as they were
    assert all(t.state != TrialState.RUNNING for t in study.get_trials())  # the killed one was failed


def test_sweep_never_reads_the_test_split_and_keeps_the_base(tiny_model_dir, demo_dir, tmp_path, monkeypatch):
    from peftsum.config import load_config
    from peftsum.experiment import sweep as sweep_module
    from peftsum.model.loading import load_model

    real = sweep_module.load_tokenized

    class NoTest(dict):
        def __getitem__(self, key):
            if key == "test":
                raise AssertionError("the sweep read the test split")
            return super().__getitem__(key)

    def guarded(*a, **k):
        data, report, budget = real(*a, **k)
        return NoTest(train=data["train"], validation=data["validation"], test=data["test"]), report, budget

    monkeypatch.setattr(sweep_module, "load_tokenized", guarded)
    cfg = load_config("demo", None, tiny_overrides(tiny_model_dir, demo_dir, **{**SWEEP_SIZES, "sweep.trials": 3,
                                                                                 "sweep.steps": 4}))
    res = sweep_module.SweepResources.load(cfg)
    before = {k: v.clone() for k, v in res.base.state_dict().items()}
    storage = sweep_module.open_storage(tmp_path / "sw", None)
    for m in ("lora", "last-layer"):
        study = sweep_module.sweep_method(res, storage, m, say=lambda _: None)
        assert len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))) == 3
        for t in study.get_trials(states=(TrialState.COMPLETE,)):
            assert t.user_attrs["steps"] == 4 and t.user_attrs["seconds"] > 0
    after = res.base.state_dict()
    assert set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)
    fresh = load_model(str(tiny_model_dir)).state_dict()
    assert all(torch.equal(fresh[k], before[k]) for k in fresh if k in before)


@pytest.mark.slow
def test_best_settings_round_trip_into_compare(tiny_model_dir, demo_dir, tmp_path, capsys):
    out = tmp_path / "sw"
    assert main(sweep_args(tiny_model_dir, demo_dir, out, trials=3, methods="lora,prompt-tuning")) == 0
    for f in ("best.yaml", "sweep.json", "sweep_lr.png", "sweep.md"):
        assert (out / f).is_file(), f
    best = json.loads((out / "sweep.json").read_text())["best"]
    cfg = yaml.safe_load((out / "best.yaml").read_text())
    assert cfg["method"]["lora"]["lr"] == best["lora"]["method.lora.lr"]
    assert cfg["method"]["prompt_tuning"]["lr"] == best["prompt-tuning"]["method.prompt_tuning.lr"]
    assert cfg["train"]["lr"] is None and cfg["train"]["max_steps"] != 4  # the protocol, not a trial's budget
    capsys.readouterr()
    assert main(["compare", "--config", str(out / "best.yaml"), "--methods", "lora", "--out", str(tmp_path / "c"),
                 "--max-steps", "2"]) == 0
    ran = json.loads((tmp_path / "c" / "lora" / "results.json").read_text())
    assert ran["training"]["learning_rate"] == pytest.approx(best["lora"]["method.lora.lr"])
    md = (tmp_path / "c" / "report.md").read_text()  # the comparison's report shows the tuning it came from
    assert "## Tuning" in md and "sweep_lr.png" in md
    assert (tmp_path / "c" / "report.html").read_text().count("data:image/png;base64,") == 8


@pytest.mark.slow
def test_two_seeds_show_their_spread(tiny_model_dir, demo_dir, tmp_path):
    args = ["compare", "--preset", "demo", "--methods", "lora,lead-3",
            *set_args(tiny_model_dir, demo_dir, **{"train.max_steps": 6, "method.lora.lr": 0.05})]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    assert main([*args, "--out", str(tmp_path / "two"), "--seeds", "2"]) == 0
    assert (tmp_path / "two" / "lora" / "seed-42" / "results.json").is_file()
    assert (tmp_path / "two" / "lora" / "seed-43" / "results.json").is_file()
    assert (tmp_path / "two" / "lead-3" / "results.json").is_file()  # a baseline runs once
    one = {r["method"]: r for r in csv.DictReader(open(tmp_path / "one" / "results.csv"))}
    two = {r["method"]: r for r in csv.DictReader(open(tmp_path / "two" / "results.csv"))}
    assert two["lora"]["seeds"] == "2" and float(two["lora"]["val_loss_std"]) > 0
    seed42 = json.loads((tmp_path / "two" / "lora" / "seed-42" / "results.json").read_text())
    seed43 = json.loads((tmp_path / "two" / "lora" / "seed-43" / "results.json").read_text())
    assert float(two["lora"]["rougeL"]) == pytest.approx((seed42["eval"]["metrics"]["rougeL"] + seed43["eval"]["metrics"]["rougeL"]) / 2)
    width = {k: float(r["lora"]["rougeL_hi"]) - float(r["lora"]["rougeL_lo"]) for k, r in (("one", one), ("two", two))}
    assert width["two"] > width["one"]  # the interval holds the seeds' variance too
    md = (tmp_path / "two" / "report.md").read_text()
    assert "two-level" in md and " ± " in md


def test_sweep_maximises_validation_rouge_when_asked(tiny_model_dir, demo_dir, tmp_path):
    out = tmp_path / "sw"
    assert main(sweep_args(tiny_model_dir, demo_dir, out, trials=2, steps=2,
                            **{"train.select_by": "rougeLsum", "train.rouge_examples": 4})) == 0
    storage = JournalStorage(JournalFileBackend(str(out / "optuna.journal")))
    study = optuna.load_study(study_name="peftsum-lora-rougeLsum", storage=storage)
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    done = [tr for tr in study.trials if tr.state == optuna.trial.TrialState.COMPLETE]
    assert study.best_value == max(tr.value for tr in done)
    sweep = json.loads((out / "sweep.json").read_text())
    assert sweep["objective"] == "rougeLsum" and sweep["studies"]["lora"] == "peftsum-lora-rougeLsum"
    assert "best validation ROUGE-Lsum" in (out / "sweep.md").read_text()


def test_a_sweep_can_search_lora_rank_rslora_loraplus_and_dora():
    """sweep.lora_ranks, lora_rslora, lora_lr_ratios and lora_dora become the trial's LoRA settings (Optuna's
    FixedTrial), for QLoRA too (whose settings are LoRA's)."""
    import optuna

    from peftsum.errors import UserError
    from peftsum.experiment.sweep import suggest
    from tests.conftest import method_cfg

    cfg = method_cfg("lora", **{"sweep.lora_ranks": "4,8", "sweep.lora_rslora": "false,true",
                                "sweep.lora_lr_ratios": "1,16", "sweep.lora_dora": "false,true"})
    for method in ("lora", "qlora"):
        trial = optuna.trial.FixedTrial({"lr": 3e-4, "rank": 8, "rslora": True, "lr_ratio": 16.0, "dora": True})
        assert suggest(trial, cfg, method) == {"method.lora.lr": 3e-4, "method.lora.rank": 8,
                                               "method.lora.rslora": True, "method.lora.lr_ratio": 16.0,
                                               "method.lora.dora": True}
    with pytest.raises(UserError, match="sweep.lora_lr_ratios"):
        method_cfg("lora", **{"sweep.lora_lr_ratios": "0,16"})
    assert suggest(optuna.trial.FixedTrial({"lr": 3e-4}), method_cfg("lora"), "lora") == {"method.lora.lr": 3e-4}


def test_a_qlora_trial_trains_on_the_quantized_base(tiny_model_dir, demo_dir, tmp_path, monkeypatch):
    """Each trial adapts a copy of the shared base; QLoRA's trial loads its own, quantized (the shared base is not)."""
    from peftsum.config import load_config
    from peftsum.experiment import sweep as sweep_module
    from peftsum.model.loading import is_quantized

    seen = []
    real_init = sweep_module.Trainer.__init__

    def spy(self, cfg, run_dir, **kw):
        seen.append((cfg.method.name, is_quantized(kw["summary_lm"].model)))
        real_init(self, cfg, run_dir, **kw)

    monkeypatch.setattr(sweep_module.Trainer, "__init__", spy)
    cfg = load_config("demo", None, tiny_overrides(tiny_model_dir, demo_dir, **{**SWEEP_SIZES, "sweep.trials": 1,
                                                                                 "sweep.steps": 2}))
    res = sweep_module.SweepResources.load(cfg)
    storage = sweep_module.open_storage(tmp_path / "sw", None)
    for m in ("lora", "qlora"):
        sweep_module.sweep_method(res, storage, m, say=lambda _: None)
    assert seen == [("lora", False), ("qlora", True)] and not is_quantized(res.base)
