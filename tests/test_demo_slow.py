"""The README's main job, end to end through the real CLI: `peftsum compare --preset demo`."""

import json
import os
import subprocess
import sys

import pytest

METHODS = ["zero-shot", "lead-3", "prompt-tuning", "lora", "last-layer", "full"]


@pytest.mark.slow
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
        assert res[m]["eval"]["rougeLsum"] > res["zero-shot"]["eval"]["rougeLsum"], m
    for f in ("report.md", "report.html", "report.pdf", "results.csv"):
        assert (out / f).is_file()
    assert "not CNN/DailyMail results" in (out / "report.md").read_text()
    print(p.stdout)
