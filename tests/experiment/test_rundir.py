"""The run directory's rules (experiment/rundir.py): a rerun with other settings is refused (and --rerun
redoes), a second process on the same directory is refused."""

import json
import shutil

from peftsum.cli import main
from peftsum.experiment import RunLock
from tests.conftest import compare_args


def test_a_rerun_with_other_settings_is_refused_and_rerun_redoes(compared, tiny_model_dir, demo_dir, tmp_path, capsys):
    out = tmp_path / "c"
    shutil.copytree(compared, out)
    before = (out / "lora" / "results.json").read_text()
    args = compare_args(tiny_model_dir, demo_dir, out, **{"eval.decoding.max_new_tokens": 5})
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "eval.decoding.max_new_tokens: 12 in the run, 5 now" in err and "--rerun" in err and "new --out" in err
    assert (out / "lora" / "results.json").read_text() == before  # nothing ran, nothing was overwritten
    quick = compare_args(tiny_model_dir, demo_dir, out, methods="zero-shot,lead-3", **{"eval.decoding.max_new_tokens": 5})
    assert main([*quick, "--rerun", "zero-shot,lead-3"]) == 0
    assert json.loads((out / "zero-shot" / "results.json").read_text())["config"]["eval"]["decoding"]["max_new_tokens"] == 5
    # train --resume follows the same rule
    assert main(["train", "--out", str(out / "lora"), "--resume", "--train.lr", "0.5"]) == 2
    assert "train.lr" in capsys.readouterr().err


def test_a_second_process_on_the_same_directory_is_refused(tiny_model_dir, demo_dir, tmp_path, capsys):
    import os

    out = tmp_path / "busy"
    with RunLock(out):
        assert main(compare_args(tiny_model_dir, demo_dir, out, methods="lead-3")) == 2
    assert f"pid {os.getpid()}" in capsys.readouterr().err
    assert not (out / "lead-3").exists()
    assert main(compare_args(tiny_model_dir, demo_dir, out, methods="lead-3")) == 0  # released
