"""Errors a user can cause: one clear line on stderr, exit status 2, no traceback, no results written."""

import os
import subprocess
import sys

import pytest

from peftsum.cli import main


def run_cli(*args, cwd=None):
    env = dict(os.environ)
    return subprocess.run([sys.executable, "-m", "peftsum.cli", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)


@pytest.fixture
def bad_csv_dir(tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    for split in ("train", "validation", "test"):
        (d / f"{split}.csv").write_text("id,text,summary\n1,An article.,A summary.\n")
    return d


def _no_traceback(p):
    assert "Traceback" not in p.stderr, p.stderr
    lines = [x for x in p.stderr.strip().splitlines() if x.startswith("peftsum: error:")]
    assert len(lines) == 1, p.stderr
    return lines[0]


@pytest.mark.slow
def test_missing_column_via_the_real_cli(bad_csv_dir, tmp_path):
    out = tmp_path / "run"
    p = run_cli("train", "--method", "lead-3", "--preset", "demo", "--data", str(bad_csv_dir), "--out", str(out))
    assert p.returncode == 2
    line = _no_traceback(p)
    assert "no column 'article'" in line and "id, text, summary" in line and "--data.text_column" in line
    assert not (out / "results.json").exists()


@pytest.mark.parametrize("args, needle", [
    (["data", "--preset", "demo", "--data", "/nonexistent/dir"], "data source not found"),
    (["train", "--method", "lora", "--preset", "demo", "--train.lr", "-1"], "'train.lr' must be > 0"),
    (["train", "--method", "lora", "--preset", "demo", "--train.epochs", "0"], "'train.epochs' must be > 0"),
    (["train", "--method", "lora", "--preset", "demo", "--train.lrr", "1"], "unknown config key 'train.lrr'"),
    (["train", "--method", "lora", "--preset", "demo", "--model", "/no/such/model"], "model directory not found"),
    (["eval", "/no/such/run"], "not a peftsum run directory"),
    (["train", "--resume", "--preset", "demo"], "train --resume needs the run: --out RUN_DIR"),
    (["train", "--preset", "demo"], "train needs --method"),
])
def test_usage_and_input_errors(args, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # train's default run directory is runs/<method> here
    assert main(args) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1
    assert not (tmp_path / "runs").exists()  # nothing written for a run that never started


def test_empty_csv_and_all_empty_rows(tmp_path, capsys):
    d = tmp_path / "e"
    d.mkdir()
    for split in ("train", "validation", "test"):
        (d / f"{split}.csv").write_text("")
    assert main(["data", "--preset", "demo", "--data", str(d)]) == 2
    assert "is empty" in capsys.readouterr().err
    for split in ("train", "validation", "test"):
        (d / f"{split}.csv").write_text('id,article,highlights\n1,"   ",x\n2,y," "\n')
    assert main(["data", "--preset", "demo", "--data", str(d)]) == 2
    err = capsys.readouterr().err
    assert "no usable rows" in err and "1 with an empty article, 1 with an empty summary" in err


def test_not_a_causal_lm(tmp_path, capsys):
    from transformers import ViTConfig, ViTModel

    ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
                       image_size=32, patch_size=16)).save_pretrained(tmp_path / "vit")
    assert main(["train", "--method", "lora", "--preset", "demo", "--model", str(tmp_path / "vit"),
                 "--out", str(tmp_path / "r")]) == 2
    assert "not a causal language model" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_summarize_on_a_directory_without_weights(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text("preset: demo\nmethod:\n  name: lora\n")
    (tmp_path / "a.txt").write_text("Some article.")
    assert main(["summarize", str(tmp_path), str(tmp_path / "a.txt")]) == 2
    assert "holds no saved method weights" in capsys.readouterr().err


def test_a_model_folder_without_a_tokenizer(tmp_path, demo_dir, capsys):
    """transformers 5 builds an empty tokenizer from a folder without tokenizer files: refused in one line,
    and --set model.tokenizer beside --model is kept (it used to be reset to the model's own)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2)).save_pretrained(tmp_path / "bare")
    args = ["data", "--preset", "demo", "--data", str(demo_dir), "--model", str(tmp_path / "bare")]
    assert main(args) == 2
    assert "holds no tokenizer files" in capsys.readouterr().err
    assert main([*args, "--set", "model.tokenizer=gpt2-bpe"]) == 0
    assert "train" in capsys.readouterr().out


def test_plan_refuses_zero_steps(capsys):
    assert main(["plan", "--preset", "demo", "--steps", "0"]) == 2
    assert "--steps must be at least 1" in capsys.readouterr().err


def test_each_command_function_takes_its_declared_arguments_typed():
    """A command's function names exactly what it reads: its arguments' destinations (``settings`` for the config's
    flags and overrides), each annotated; the parser declares no argument the function leaves unread."""
    import argparse
    import inspect

    from peftsum.cli import COMMANDS, SETTINGS, build_parser

    subparsers = next(a for a in build_parser()._actions if a.dest == "command").choices
    setting_dests = {add(argparse.ArgumentParser()).dest for add in SETTINGS}
    setting_dests |= {"report_to"}
    for name, c in COMMANDS.items():
        dests = {a.dest for a in subparsers[name]._actions if a.dest != "help"}
        params = inspect.signature(c.run).parameters
        assert all(p.annotation is not inspect.Parameter.empty for p in params.values()), name
        takes = set(params) - {"settings"}
        if "settings" in params:
            dests -= setting_dests
        assert takes == dests, (name, takes ^ dests)


def test_dotted_settings_go_to_the_config_and_a_command_without_one_refuses_them(capsys, tmp_path):
    """``--section.key value`` reaches the config of a command that builds one (here `data`, after the shortcuts'
    and --set's checks); a command that reads a finished run takes none: one clear line, exit 2."""
    from peftsum.cli import Settings

    s = Settings(preset="demo", data="demo", overrides=[("train.lr", 0.5), ("data.source", "x"),
                                                         ("sweep.trials", 3)], sets=[("train.epochs", 2)])
    cfg = s.load([("sweep.trials", 5), ("train.epochs", 9)], method="lora", max_steps=7)
    assert (cfg.train.lr, cfg.method.name, cfg.train.max_steps, cfg.data.source) == (0.5, "lora", 7, "demo")
    # later wins: --section.key, then a command's own flag (sweep --trials), then --set, then the shortcuts
    assert (cfg.sweep.trials, cfg.train.epochs) == (5, 2)
    assert s.given() and not Settings().given() and Settings(sets=[("method.name", "lora")]).names("method.name")
    assert main(["eval", str(tmp_path), "--train.lr", "3e-4"]) == 2
    assert "eval takes no --section.key settings (got --train.lr)" in capsys.readouterr().err
