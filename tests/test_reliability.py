"""Crashes, safe loading, determinism, bad input at the edges, and data parallelism on CPU."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from peftsum.cli import main
from peftsum.experiment import run_experiment
from peftsum.utils import read_jsonl
from tests.conftest import tiny_overrides

FAST = {"method.prompt_tuning.lr": 0.3, "method.lora.lr": 1e-2}


def cli_args(model_dir, data_dir, method, out, **extra):
    ov = dict(tiny_overrides(model_dir, data_dir, **{"method.name": method, **FAST, **extra}))
    return ["train", "--method", method, "--preset", "demo", "--out", str(out),
            *[f"--set={k}={'null' if v is None else v}" for k, v in ov.items() if k != "method.name"]]


def strip(rows):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def test_same_seed_gives_bit_identical_metrics_and_results(tiny_cfg, tmp_path):
    cfg = tiny_cfg("prompt-tuning", **{**FAST, "train.max_steps": 5})
    a = run_experiment(cfg, tmp_path / "a")
    b = run_experiment(cfg, tmp_path / "b")
    assert strip(read_jsonl(tmp_path / "a" / "metrics.jsonl")) == strip(read_jsonl(tmp_path / "b" / "metrics.jsonl"))
    assert a["eval"] == b["eval"] and a["training"] == b["training"] and a["params"] == b["params"]
    assert (tmp_path / "a" / "predictions.jsonl").read_text() == (tmp_path / "b" / "predictions.jsonl").read_text()


def test_sigkill_then_resume_reaches_the_uninterrupted_result(tiny_model_dir, demo_dir, tmp_path):
    extra = {"train.max_steps": 14, "train.checkpoint_every_steps": 3}
    env = dict(os.environ)
    ref = subprocess.run([sys.executable, "-m", "peftsum.cli", *cli_args(tiny_model_dir, demo_dir, "lora",
                                                                          tmp_path / "ref", **extra)],
                         capture_output=True, text=True, env=env, timeout=600)
    assert ref.returncode == 0, ref.stderr[-2000:]
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "peftsum.cli", *cli_args(tiny_model_dir, demo_dir, "lora", out,
                                                                             **extra)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 300
    while time.time() < deadline:  # kill it once a checkpoint exists and training has gone past it
        rows = read_jsonl(out / "metrics.jsonl") if (out / "metrics.jsonl").is_file() else []
        if (out / "checkpoint.pt").is_file() and sum(r["type"] == "train" for r in rows) >= 7:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "results.json").exists()
    resumed = subprocess.run([sys.executable, "-m", "peftsum.cli", "train", "--out", str(out), "--resume"],
                             capture_output=True, text=True, env=env, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert strip(read_jsonl(out / "metrics.jsonl")) == strip(read_jsonl(tmp_path / "ref" / "metrics.jsonl"))
    a = json.loads((out / "results.json").read_text())
    b = json.loads((tmp_path / "ref" / "results.json").read_text())
    assert a["eval"] == b["eval"]


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
                          *cli_args(model, demo_dir, "lora", tmp_path / "one", **extra, **{"train.batch_size": 8})],
                         capture_output=True, text=True, env=env, timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "peftsum.cli",
                          *cli_args(model, demo_dir, "lora", tmp_path / "two", **extra, **{"train.batch_size": 4})],
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
        assert rb["eval"][k] == pytest.approx(ra["eval"][k], rel=1e-5), k
    strip_preds = lambda rows: [(r["id"], r["prediction"], r["generated_tokens"]) for r in rows]  # noqa: E731
    assert strip_preds(read_jsonl(tmp_path / "two" / "predictions.jsonl")) == strip_preds(
        read_jsonl(tmp_path / "one" / "predictions.jsonl"))
    # the whole job's figures, not one process's share
    for k in ("tokens", "examples", "target_tokens"):
        assert rb["training"][k] == ra["training"][k], k
    assert rb["cost"]["train_flops"] == pytest.approx(ra["cost"]["train_flops"], rel=1e-9)
    assert rb["cost"]["processes"] == 2 and ra["cost"]["processes"] == 1


def test_corrupted_and_pickled_checkpoints_are_refused(tiny_cfg, tmp_path, capsys):
    run = tmp_path / "r"
    cfg = tiny_cfg("lora", **{"train.max_steps": 2})
    run_experiment(cfg, run)
    ckpt = run / "checkpoint.pt"
    ckpt.write_bytes(b"PK\x03\x04 this is not a checkpoint")
    assert main(["train", "--method", "lora", "--out", str(run), "--resume"]) == 2
    assert "truncated or corrupted" in capsys.readouterr().err
    import datetime

    torch.save({"state": datetime.datetime.now()}, ckpt)  # an arbitrary pickled object
    assert main(["train", "--method", "lora", "--out", str(run), "--resume"]) == 2
    assert "arbitrary pickled objects; refusing" in capsys.readouterr().err


def test_truncated_safetensors_is_a_clear_error(tiny_cfg, tmp_path, capsys):
    run = tmp_path / "r"
    run_experiment(tiny_cfg("lora", **{"train.max_steps": 1}), run)
    f = run / "adapter_model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    (tmp_path / "a.txt").write_text("An article about a flood in a town.")
    assert main(["summarize", str(run), str(tmp_path / "a.txt")]) == 2
    assert "truncated or corrupted" in capsys.readouterr().err


def test_huge_article_is_truncated_without_blowing_up(tmp_path, tokenizer):
    import csv

    from peftsum.config import load_config
    from peftsum.data.demo import generate
    from peftsum.data.tokenize import load_tokenized

    rows = generate(12, seed=3)
    rows[0]["article"] = "The council met again today to discuss the bridge. " * 10_000  # about 100,000 tokens
    for name, part in (("train", rows[:8]), ("validation", rows[8:10]), ("test", rows[10:])):
        with open(tmp_path / f"{name}.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["id", "article", "highlights"])
            w.writeheader()
            w.writerows(part)
    cfg = load_config("demo", overrides=[("data.source", str(tmp_path)), ("data.max_source_tokens", 512)])
    dd, _, budget = load_tokenized(cfg.data, tokenizer, 1024, 20, 20)
    big = next(x for x in dd["train"] if x["article_tokens"] > 90_000)
    assert big["source_truncated"] and big["prompt_len"] <= 512 + budget.separator
    assert 20 + len(big["input_ids"]) <= 1024


def test_non_utf8_bytes_are_replaced_and_counted(tmp_path, capsys):
    for split in ("train", "validation", "test"):
        (tmp_path / f"{split}.csv").write_bytes(
            b"id,article,highlights\n" + f"{split}1,Caf\xe9 in {split} opened.,New caf\xe9.\n".encode("latin-1")
            + f"{split}2,A plain {split} article.,Plain.\n".encode())
    assert main(["data", "--preset", "demo", "--data", str(tmp_path)]) == 0
    cap = capsys.readouterr()
    assert "not UTF-8" in cap.err and "replaced by U+FFFD" in cap.err


def test_prompt_tokens_over_the_positions_are_a_usage_error(tiny_model_dir, demo_dir, tmp_path, capsys):
    args = cli_args(tiny_model_dir, demo_dir, "prompt-tuning", tmp_path / "r",
                    **{"method.prompt_tuning.num_prompts": 1000})
    assert main(args) == 2
    assert "token budget does not fit" in capsys.readouterr().err
    assert not (tmp_path / "r" / "results.json").exists()


def test_ctrl_c_checkpoints_says_how_to_resume_and_exits_130(tiny_model_dir, demo_dir, tmp_path):
    out = tmp_path / "r"
    args = cli_args(tiny_model_dir, demo_dir, "lora", out, **{"train.max_steps": 400, "train.epochs": 100,
                                                             "train.checkpoint_every_steps": 1000})
    proc = subprocess.Popen([sys.executable, "-m", "peftsum.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    deadline = time.time() + 300
    while time.time() < deadline:
        rows = read_jsonl(out / "metrics.jsonl") if (out / "metrics.jsonl").is_file() else []
        if sum(r["type"] == "train" for r in rows) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "--resume" in err and "Traceback" not in err
    assert (out / "checkpoint.pt").is_file() and not (out / "results.json").exists()
    state = torch.load(out / "checkpoint.pt", weights_only=True)["state"]
    assert state["step"] >= 2 and state["metrics_lines"] == len(read_jsonl(out / "metrics.jsonl"))
