"""Collecting runs for the report (report/collect.py): runs on different test sets are not compared."""

import shutil

from peftsum.cli import main


def test_runs_on_different_test_sets_are_not_compared(compared, tmp_path, capsys):
    out = tmp_path / "d"
    shutil.copytree(compared, out)
    rows = (out / "lora" / "predictions.jsonl").read_text().splitlines()
    (out / "lora" / "predictions.jsonl").write_text("\n".join(rows[:-3]) + "\n")  # as with another eval.limit
    assert main(["report", str(out)]) == 2
    assert "different test articles" in capsys.readouterr().err
