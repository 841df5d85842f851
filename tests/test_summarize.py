"""peftsum summarize (summarize.py) against what the evaluation stored: the same summaries, one article or a
whole file, with or without the run's training data."""

import json
import shutil

import pytest
import yaml

from peftsum.cli import main
from peftsum.utils import read_jsonl
from tests.conftest import ALL_METHODS, raw_test_articles


@pytest.mark.parametrize("method", ALL_METHODS.split(","))
def test_summarize_prints_what_the_evaluation_stored(compared, demo_dir, tmp_path, capsys, method):
    preds = read_jsonl(compared / method / "predictions.jsonl")
    ids = [p["id"] for p in preds]
    articles = raw_test_articles(demo_dir, ids)
    # one article at a time, as a user pastes it
    for k in (0, len(preds) - 1):
        (tmp_path / "a.txt").write_text(articles[k], encoding="utf-8")
        assert main(["summarize", str(compared / method), str(tmp_path / "a.txt")]) == 0
        assert capsys.readouterr().out.strip() == preds[k]["prediction"].strip(), (method, k)
    # the whole test set in batch mode, from a JSONL file with the same column names as --data
    src = tmp_path / "articles.jsonl"
    src.write_text("".join(json.dumps({"id": i, "article": a}) + "\n" for i, a in zip(ids, articles)))
    assert main(["summarize", str(compared / method), "--input", str(src), "--output", str(tmp_path / "o.jsonl")]) == 0
    got = read_jsonl(tmp_path / "o.jsonl")
    assert [g["id"] for g in got] == ids
    assert [g["prediction"] for g in got] == [p["prediction"] for p in preds]
    assert [g["generated_tokens"] for g in got] == [p["generated_tokens"] if method != "lead-3" else None
                                                    for p in preds]


@pytest.mark.parametrize("method", ["lead-3", "lora"])
def test_summarize_metrics_are_the_evaluations_statistics(compared, demo_dir, tmp_path, capsys, method):
    """``--metrics``: each summary's statistics against its article, the values the evaluation stored."""
    preds = read_jsonl(compared / method / "predictions.jsonl")[:4]
    ids = [p["id"] for p in preds]
    articles = raw_test_articles(demo_dir, ids)
    src = tmp_path / "articles.jsonl"
    src.write_text("".join(json.dumps({"id": i, "article": a}) + "\n" for i, a in zip(ids, articles)))
    assert main(["summarize", str(compared / method), "--input", str(src), "--metrics"]) == 0
    got = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    names = ("novel_1gram", "novel_4gram", "coverage", "density", "compression", "repeated_3gram", "words")
    for g, p in zip(got, preds):
        assert g["prediction"] == p["prediction"] and "length_ratio" not in g["metrics"]  # no reference here
        assert {k: g["metrics"][k] for k in names} == pytest.approx({k: p[k] for k in names})
    (tmp_path / "a.txt").write_text(articles[0], encoding="utf-8")
    assert main(["summarize", str(compared / method), str(tmp_path / "a.txt"), "--metrics"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(preds[0]["prediction"].strip()) and f"coverage: {preds[0]['coverage']:.3f}" in out


def test_summarize_needs_no_training_data(compared, tmp_path, capsys):
    """The run's data source gone (CNN/DailyMail not cached, say): summarize still works."""
    run = tmp_path / "lora"
    shutil.copytree(compared / "lora", run)
    text = (run / "config.yaml").read_text()
    data_line = next(line for line in text.splitlines() if line.strip().startswith("source:"))
    (run / "config.yaml").write_text(text.replace(data_line, "  source: /nonexistent/data"))
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "x.txt").write_text("REDFIELD -- The council approved a new rail line on Monday.")
    assert main(["summarize", str(run), "--input", str(tmp_path / "folder")]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["id"] == "x" and isinstance(row["prediction"], str) and row["generated_tokens"] >= 0


@pytest.mark.slow
@pytest.mark.parametrize("method", ["prompt-tuning", "lora"])
def test_summarize_with_the_compiled_decode_prints_what_the_evaluation_stored(compared, demo_dir, tmp_path, method):
    """A run whose config asks for ``eval.compile``: summarize decodes every test article (beam search, 4 beams,
    batches of 8 and a smaller last one) with the compiled step and prints the eager evaluation's summaries."""
    run = tmp_path / method
    shutil.copytree(compared / method, run)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["eval"]["compile"] is False and cfg["eval"]["decoding"]["num_beams"] == 4
    cfg["eval"]["compile"] = True
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    preds = read_jsonl(compared / method / "predictions.jsonl")
    ids = [p["id"] for p in preds]
    src = tmp_path / "articles.jsonl"
    src.write_text("".join(json.dumps({"id": i, "article": a}) + "\n" for i, a in zip(ids, raw_test_articles(demo_dir, ids))))
    assert main(["summarize", str(run), "--input", str(src), "--output", str(tmp_path / "o.jsonl")]) == 0
    assert [g["prediction"] for g in read_jsonl(tmp_path / "o.jsonl")] == [p["prediction"] for p in preds]
