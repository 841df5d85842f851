"""The metric registry (evaluate/registry.py): a metric registered in one place is found everywhere a figure shows —
the evaluation's rows and results.json, results.csv, the report's tables, intervals and Holm-adjusted differences,
its figures, the trackers, the model card, the grid's report — and an older run gets it from `peftsum report`."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from peftsum.cli import main
from peftsum.evaluate.registry import Metric, register, registry, selected, unregister
from peftsum.experiment import run_experiment
from peftsum.experiment.results import read_results
from peftsum.train.tracking import final_values
from peftsum.utils import read_jsonl
from tests.conftest import raw_test_articles, tiny_overrides


def _e_share(prediction: str, reference: str, article: str) -> float:
    """The toy: the share of the summary's letters that are "e", in % (the same rule a reader can recount)."""
    letters = [c for c in prediction.lower() if c.isalpha()]
    return 100.0 * sum(c == "e" for c in letters) / max(len(letters), 1)


@pytest.fixture
def toy():
    metric = register(Metric("e_share", "letters e %", "summary", per_example=_e_share, higher_is_better=None,
                             needs_reference=False, fmt=".2f"))
    yield metric
    unregister("e_share")


def test_a_registered_metric_is_in_every_figure_of_a_run(toy, tiny_model_dir, demo_dir, tmp_path):
    from huggingface_hub import ModelCard

    from peftsum.config import load_config
    from peftsum.experiment.card import model_card

    cfg = load_config("demo", None, tiny_overrides(tiny_model_dir, demo_dir, **{"method.name": "lead-3"}))
    result = run_experiment(cfg, tmp_path / "lead-3")
    rows = read_jsonl(tmp_path / "lead-3" / "predictions.jsonl")
    assert [p["e_share"] for p in rows] == pytest.approx([_e_share(p["prediction"], "", "") for p in rows])
    assert [p["reference_metrics"]["e_share"] for p in rows] == pytest.approx([_e_share(p["reference"], "", "")
                                                                               for p in rows])
    mean = np.mean([p["e_share"] for p in rows])
    assert result.eval.metrics["e_share"] == pytest.approx(mean) == read_results(tmp_path / "lead-3").eval.metrics["e_share"]
    assert final_values(result)["final/e_share"] == pytest.approx(mean)  # what the trackers log
    card = model_card(result, "run")  # its table; the hub's model-index holds the scores, not the descriptions
    assert "| letters e % |" in card.split("## Results", 1)[1] and f"| {mean:.2f} |" in card
    evals = {r.metric_type: (r.metric_name, r.metric_value) for r in ModelCard(card).data.eval_results}
    assert "e_share" not in evals and "novel_2gram" not in evals
    assert evals["rougeLsum"] == ("ROUGE-L", pytest.approx(round(result.eval.metrics["rougeLsum"], 4)))
    # an unknown metric is refused before anything runs: one line, exit 2
    assert main(["train", "--preset", "demo", "--method", "lead-3", "--out", str(tmp_path / "x"),
                 "--set", "eval.metrics=rougeLsum,nonesuch"]) == 2
    assert not (tmp_path / "x").exists()


def test_a_metric_registered_later_reaches_an_older_comparisons_report(toy, compared, demo_dir, tmp_path,
                                                                       monkeypatch):
    """The shared comparison was made without the toy: `peftsum report` scores its stored summaries against the
    test articles (the run folders untouched) and the toy is in results.csv, the tables, the significance table and
    the figure of the summary statistics."""
    from peftsum.report import plots

    out = shutil.copytree(compared, tmp_path / "c")
    drawn = {}
    real = plots.summary_panels
    monkeypatch.setattr(plots, "summary_panels", lambda rows, refs, path, keys, labels: drawn.update(
        keys=keys, values={r["method"]: r["ci"]["e_share"][0] for r in rows}) or real(rows, refs, path, keys, labels))
    before = {p: p.read_bytes() for p in out.glob("*/predictions.jsonl")}
    assert main(["report", str(out)]) == 0
    assert before == {p: p.read_bytes() for p in out.glob("*/predictions.jsonl")}
    csv_rows = {r["method"]: r for r in csv.DictReader(open(out / "results.csv"))}
    md = (out / "report.md").read_text()
    for method, row in csv_rows.items():
        preds = read_jsonl(out / method / "predictions.jsonl")
        mean = np.mean([_e_share(p["prediction"], "", "") for p in preds])
        assert float(row["e_share"]) == pytest.approx(mean)
        assert float(row["e_share_lo"]) <= mean <= float(row["e_share_hi"])
        assert drawn["values"][method] == pytest.approx(mean)
    refs = raw_test_articles(demo_dir, [p["id"] for p in preds])  # the articles were found by id
    assert len(refs) == len(preds)
    ref_mean = np.mean([_e_share(p["reference"], "", "") for p in preds])
    assert float(csv_rows["lora"]["reference_e_share"]) == pytest.approx(ref_mean)
    assert "e_share" in drawn["keys"]
    summary = md.split("## What the summaries are", 1)[1]
    assert "letters e % |" in summary.splitlines()[4] and "| references |" in summary
    assert "letters e % diff [95% CI] (p Holm)" in md  # its paired differences, Holm-adjusted over the pairs


def test_report_adds_what_an_older_run_lacks_from_the_articles_and_leaves_a_chosen_set(compared, tmp_path):
    """A run made before the statistics existed (its rows without them): `report` reads the test articles again and
    gives the same values the evaluation stores; a run whose eval.metrics chose its own set is left as it is."""
    import json as json_

    out = shutil.copytree(compared, tmp_path / "c")
    stored = {p["id"]: p for p in read_jsonl(out / "lora" / "predictions.jsonl")}
    rows = [{k: v for k, v in p.items() if k not in ("novel_2gram", "coverage", "reference_metrics")}
            for p in stored.values()]
    (out / "lora" / "predictions.jsonl").write_text("".join(json_.dumps(r) + "\n" for r in rows))
    assert main(["report", str(out)]) == 0
    row = next(r for r in csv.DictReader(open(out / "results.csv")) if r["method"] == "lora")
    for k in ("novel_2gram", "coverage"):
        assert float(row[k]) == pytest.approx(np.mean([p[k] for p in stored.values()]))
    from peftsum.config import load_config
    from peftsum.report.collect import SeedRun, complete_metrics

    chosen = read_results(out / "lora")
    chosen.config.eval.metrics = ["rougeLsum"]
    run = SeedRun(chosen, [dict(r) for r in rows], [])
    complete_metrics([run], lambda: pytest.fail("a run with its own eval.metrics needs no articles"))
    assert "novel_2gram" not in run.predictions[0] and load_config("demo").eval.metrics is None


def test_the_default_set_needs_no_model_and_model_metrics_cost_no_import():
    import subprocess
    import sys

    assert [m.name for m in selected(None)] == [m.name for m in registry().values() if not m.needs_model]
    assert registry()["bertscore"].needs_model and "bertscore" not in [m.name for m in selected(None)]
    assert [m.name for m in selected(["bertscore"])][:1] == ["rougeLsum"]  # the headline is always computed
    code = ("import sys; from peftsum.evaluate.registry import selected; "
            "[m.score(['a b c'], ['a b'], ['a b c d']) for m in selected(None)]; "
            "print(json.dumps(sorted(k for k in sys.modules if k.split('.')[0] in ('bert_score',))))")
    out = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []
