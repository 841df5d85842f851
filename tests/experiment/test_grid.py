"""compare --models / --train-sizes (experiment/grid.py, report/scale.py): one comparison per cell with the same
split and protocol, a tidy results.csv whose every figure is the cell's own, the gap to full fine-tuning as the
cell's paired difference, and several workers filling one grid."""

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from peftsum.cli import main
from peftsum.config import load_config
from peftsum.errors import UserError
from peftsum.evaluate.registry import HEADLINE
from peftsum.experiment.grid import GRID, grid_cells, model_slug
from peftsum.report.collect import collect, with_intervals
from peftsum.report.scale import build_grid_report, gap
from peftsum.utils import read_jsonl
from tests.conftest import TINY_CONFIG, TINY_RECIPE, built_once, compare_args

TIMINGS = ("train_seconds", "peak_memory_bytes")  # what two runs of the same cell may not share


def test_cells_are_plain_comparisons_of_each_model_and_size(tmp_path):
    cfg = load_config("demo", overrides=[("grid.models", ["openai-community/gpt2-medium", "demo"]),
                                         ("grid.train_sizes", [100, 400])])
    cells = grid_cells(cfg, cfg.grid.models, cfg.grid.train_sizes, tmp_path)
    assert [c.name for c in cells] == ["gpt2-medium-n100", "gpt2-medium-n400", "demo-n100", "demo-n400"]
    assert [(c.cfg.model.name, c.cfg.data.train_size) for c in cells] == [
        ("openai-community/gpt2-medium", 100), ("openai-community/gpt2-medium", 400), ("demo", 100), ("demo", 400)]
    # a cell's config is the comparison's, without the grid: a grid grown by one model changes no cell's settings
    assert all(c.cfg.grid.models == [] and c.cfg.grid.train_sizes == [] for c in cells)
    assert cells[0].cfg.data.val_size == cfg.data.val_size and cells[0].cfg.train == cfg.train
    assert model_slug("/home/me/models/my model/") == "my_model"
    with pytest.raises(UserError, match="each model and size once"):
        grid_cells(cfg, ["a/gpt2", "b/gpt2"], [100], tmp_path)
    with pytest.raises(UserError, match="positive"):
        load_config("demo", overrides=[("grid.train_sizes", [0, 100])])


def test_a_smaller_training_set_is_inside_the_larger_and_validation_and_test_do_not_move(demo_dir):
    from peftsum.data.prepare import prepare_splits
    from peftsum.data.sources import load_raw

    def splits(n):
        cfg = load_config("demo", overrides=[("data.source", str(demo_dir)), ("data.train_size", n),
                                             ("data.val_size", 16), ("data.test_size", 16)])
        return prepare_splits(raw, cfg.data)[0]

    raw = load_raw(load_config("demo", overrides=[("data.source", str(demo_dir))]).data)
    small, large = splits(20), splits(60)
    assert small["train"]["id"] == large["train"]["id"][:20]
    for split in ("validation", "test"):
        assert small[split]["id"] == large[split]["id"]


def test_the_gap_to_full_is_the_cells_paired_difference_either_way_round():
    from peftsum.report.scale import GridCell

    d = {HEADLINE: {"diff": -3.0, "low": -5.0, "high": -1.0, "p_holm": 0.01}}
    cell = GridCell("m-n1", "m", 1, 10, [], {"pairs": {("lora", "full"): d, ("full", "prompt-tuning"): d}})
    assert gap(cell, "lora") == {"diff": -3.0, "low": -5.0, "high": -1.0, "p_holm": 0.01}
    assert gap(cell, "prompt-tuning") == {"diff": 3.0, "low": 1.0, "high": 5.0, "p_holm": 0.01}
    assert gap(cell, "zero-shot") is None


def test_the_scale_report_shows_each_cells_own_figures(compared, tmp_path):
    """A grid of one cell made from the shared comparison: every number of results.csv is the cell's own."""
    out = tmp_path / "grid"
    shutil.copytree(compared, out / "tiny-n64")
    (out / GRID).write_text(json.dumps({"models": ["tiny"], "train_sizes": [64], "methods": [], "seeds": 1,
                                        "cells": [{"name": "tiny-n64", "model": "tiny", "train_size": 64}]}))
    assert main(["report", str(out)]) == 0  # peftsum report on a grid's folder: the scale report
    paths = build_grid_report(out)
    assert {p.name for p in paths} >= {"results.csv", "report.md", "report.html", "scale_quality.png",
                                       "scale_gap.png", "scale_novelty.png", "scale_cost.png"}
    rows = list(csv.DictReader(open(out / "results.csv")))
    runs, boot = with_intervals(collect(out / "tiny-n64"), 200)
    assert [r["method"] for r in rows] == [r.method for r in runs]
    for row, r in zip(rows, runs):
        res = r.result
        assert float(row[HEADLINE]) == pytest.approx(res.eval.value(HEADLINE))
        assert float(row[f"{HEADLINE}_lo"]) == pytest.approx(r.ci[HEADLINE][1])
        for k in ("novel_2gram", "density", "rouge2"):  # every metric of the registry, novelty included
            assert float(row[k]) == pytest.approx(res.eval.value(k))
        assert (float(row["val_loss"]) if row["val_loss"] else None) == pytest.approx(res.eval.val_loss)
        assert int(row["model_params"]) == max(x.result.params.total - x.result.params.added
                                               for x in runs if x.result.params.total)
        assert int(row["train_size"]) == 64 and row["cell"] == "tiny-n64"
        state = res.cost.weights_bytes + res.cost.gradient_bytes + res.cost.optimizer_bytes
        assert int(row["training_state_bytes"]) == state
        if r.method in ("lora", "prompt-tuning"):  # method − full, the cell's own paired difference
            d = boot["pairs"][(r.method, "full")][HEADLINE]
            assert float(row["gap_to_full"]) == pytest.approx(d["diff"])
            assert (float(row["gap_to_full_lo"]), float(row["gap_to_full_hi"])) == pytest.approx((d["low"], d["high"]))
        if r.method == "full":
            assert row["gap_to_full"] == ""
    md = (out / "report.md").read_text()
    assert "tiny-n64/report.html" in md and "![Gap to full fine-tuning against scale](scale_gap.png)" in md
    assert "![How abstractive the summaries are, against scale](scale_novelty.png)" in md
    # docs/analysis.md section 2: the gaps of the report, and a copy of its figure beside the file
    analysis = tmp_path / "docs" / "analysis.md"
    analysis.parent.mkdir()
    analysis.write_text("## 2. scale\n\n<!-- scale:start -->\nold\n<!-- scale:end -->\n\n## 3. next\n")
    build_grid_report(out, analysis_file=analysis)
    text = analysis.read_text()
    lora = next(r for r in rows if r["method"] == "lora")
    cell = f"{float(lora['gap_to_full']):+.2f} [{float(lora['gap_to_full_lo']):+.2f}, {float(lora['gap_to_full_hi']):+.2f}]"
    assert "old" not in text and cell in text and text.endswith("## 3. next\n")
    assert "](figures/grid_scale_gap.png)" in text and (analysis.parent / "figures" / "grid_scale_gap.png").is_file()


@pytest.fixture(scope="module")
def two_models(tiny_model_dir, tmp_path_factory) -> list[Path]:
    """The tiny model and a smaller one (1 block x 32)."""
    from peftsum.model.demo_base import ensure_demo_base

    config = {**TINY_CONFIG, "n_layer": 1, "n_embd": 32, "n_head": 2}

    def build(folder):
        ensure_demo_base(config, TINY_RECIPE, root=folder)

    return [ensure_demo_base(config, TINY_RECIPE, root=built_once(tmp_path_factory, "grid-small-model", build)),
            tiny_model_dir]


def _grid_args(models, demo_dir, out) -> list[str]:
    args = compare_args(models[1], demo_dir, out, methods="lora,full", **{"train.max_steps": 2,
                                                                                     "eval.decoding.num_beams": 1})
    return [*args, "--models", ",".join(map(str, models)), "--train-sizes", "16,32"]


@pytest.fixture(scope="module")
def one_worker(two_models, demo_dir, tmp_path_factory) -> Path:
    def build(folder):
        assert main(_grid_args(two_models, demo_dir, folder / "one")) == 0

    return built_once(tmp_path_factory, "grid", build) / "one"


def _tidy(out: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMINGS} for row in csv.DictReader(open(out / "results.csv"))]


@pytest.mark.slow
def test_a_grid_runs_every_method_in_every_cell_and_resumes(one_worker, two_models, demo_dir, capsys, tmp_path):
    cells = [f"{model_slug(str(m))}-n{n}" for m in two_models for n in (16, 32)]
    assert json.loads((one_worker / GRID).read_text())["cells"][0]["name"] == cells[0]
    rows = _tidy(one_worker)
    assert [(r["cell"], r["method"]) for r in rows] == [(c, m) for c in cells for m in ("lora", "full")]
    for c in cells:  # a plain comparison with its own report; the same test articles everywhere
        assert (one_worker / c / "report.html").is_file()
        ids = [p["id"] for p in read_jsonl(one_worker / c / "lora" / "predictions.jsonl")]
        assert ids == [p["id"] for p in read_jsonl(one_worker / cells[0] / "lora" / "predictions.jsonl")]
        data = json.loads((one_worker / c / "lora" / "results.json").read_text())["data"]
        assert data["train"] == int(c.rsplit("-n", 1)[1])
    small, large = (int(r["model_params"]) for r in rows[::4])
    assert small < large
    # the same command again (on a copy: the grid is shared with the other tests): every cell finished, nothing
    # runs, the report is the same
    again = tmp_path / "again"
    shutil.copytree(one_worker, again)
    capsys.readouterr()
    assert main(_grid_args(two_models, demo_dir, again)) == 0
    assert "running" not in capsys.readouterr().out
    assert _tidy(again) == _tidy(one_worker)


@pytest.mark.slow
def test_two_workers_fill_one_grid_each_cell_once_and_report_as_one(one_worker, two_models, demo_dir, tmp_path):
    out = tmp_path / "two"
    cmd = [sys.executable, "-m", "peftsum.cli", *_grid_args(two_models, demo_dir, out)]
    workers = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
               for _ in range(2)]
    outputs = [w.communicate(timeout=900) for w in workers]
    assert all(w.returncode == 0 for w in workers), [e[-2000:] for _, e in outputs]
    took = [{line.split("]")[0][1:] for line in o.splitlines() if " training examples -> " in line} for o, _ in outputs]
    assert took[0] | took[1] == {r["cell"] for r in _tidy(one_worker)}
    assert not took[0] & took[1]  # each cell trained by one worker
    assert sum("scale report:" in o for o, _ in outputs) >= 1  # the last to finish wrote the report
    a, b = _tidy(one_worker), _tidy(out)  # as one worker's (timings aside)
    assert [list(r) for r in b] == [list(r) for r in a]
    for x, y in zip(a, b):
        for k, v in x.items():
            try:
                assert float(y[k]) == pytest.approx(float(v), rel=1e-6), k
            except ValueError:  # text
                assert y[k] == v, k
    assert Path(out / "report.md").read_text().count("## Every cell") == 1
