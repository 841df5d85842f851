"""peftsum compare (experiment/compare.py): finished methods are skipped and interrupted ones resumed, each
method's memory peak is its own, and (slow) the demo end to end."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from peftsum.cli import main
from tests.conftest import compare_args


@pytest.mark.slow
def test_peak_memory_is_the_methods_own(tiny_model_dir, demo_dir, tmp_path):
    """full alone and full after lora in one compare process: the same peak within 10 %."""
    def peak(methods, out):
        done = subprocess.run([sys.executable, "-m", "peftsum.cli",
                               *compare_args(tiny_model_dir, demo_dir, out, methods=methods)],
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads((out / "full" / "results.json").read_text())["cost"]["peak_memory_bytes"]

    alone, after = peak("full", tmp_path / "a"), peak("lora,full", tmp_path / "b")
    assert after == pytest.approx(alone, rel=0.10)


def test_compare_skips_finished_and_resumes(compared, tiny_model_dir, demo_dir, tmp_path, capsys):
    out = tmp_path / "c"
    shutil.copytree(compared, out)
    shutil.rmtree(out / "full")
    mtime = (out / "lora" / "results.json").stat().st_mtime_ns
    assert main(compare_args(tiny_model_dir, demo_dir, out)) == 0
    printed = capsys.readouterr().out
    assert "[lora] finished earlier" in printed and "[full] running" in printed
    assert (out / "lora" / "results.json").stat().st_mtime_ns == mtime
    assert (out / "full" / "results.json").is_file()


METHODS = ["zero-shot", "lead-3", "prompt-tuning", "lora", "last-layer", "full"]


@pytest.mark.slow
@pytest.mark.first
def test_compare_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    p = subprocess.run([sys.executable, "-m", "peftsum.cli", "compare", "--preset", "demo", "--out", str(out),
                        "--set", "train.progress=false"], capture_output=True, text=True, env=dict(os.environ),
                       timeout=1500)
    assert p.returncode == 0, p.stderr[-3000:]
    res = {m: json.loads((out / m / "results.json").read_text()) for m in METHODS}
    zero = res["zero-shot"]["eval"]["val_loss"]
    for m in ("prompt-tuning", "lora", "last-layer", "full"):
        assert res[m]["eval"]["val_loss"] < zero, m  # every trained method beats zero-shot
        assert res[m]["eval"]["metrics"]["rougeLsum"] > res["zero-shot"]["eval"]["metrics"]["rougeLsum"], m
    for f in ("report.md", "report.html", "report.pdf", "results.csv"):
        assert (out / f).is_file()
    assert "not CNN/DailyMail results" in (out / "report.md").read_text()
    print(p.stdout)
