"""The report (report/render.py, tables.py, plots.py, examples.py) from a shared compare: every file, its numbers
against results.json, the protocol sentence, the summaries, the browser's view of the HTML."""

import csv
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from peftsum.cli import main
from peftsum.report.tables import human
from peftsum.utils import read_jsonl
from tests.conftest import ALL_METHODS


def test_report_length_columns_and_holm(compared):
    rows = {r["method"]: r for r in csv.DictReader(open(compared / "results.csv"))}
    for m in ("lora", "lead-3"):
        preds = read_jsonl(compared / m / "predictions.jsonl")
        mean = np.mean([p["generated_tokens"] for p in preds])
        assert float(rows[m]["mean_generated_tokens"]) == pytest.approx(mean)
    preds = read_jsonl(compared / "lora" / "predictions.jsonl")
    share = np.mean([p["generated_tokens"] >= 12 for p in preds])  # eval.max_new_tokens of the tiny runs
    assert float(rows["lora"]["hit_max_new_tokens"]) == pytest.approx(share)
    assert rows["lead-3"]["hit_max_new_tokens"] == ""
    md = (compared / "report.md").read_text()
    assert "Holm" in md and "gen. tokens" in md


def test_compare_writes_every_file(compared):
    for f in ("results.csv", "results_config.csv", "report.md", "report.html", "report.pdf", "loss_curves.png", "rouge.png",
              "summary_stats.png", "coverage_density.png", "quality_vs_cost.png", "memory.png", "lengths.png"):
        assert (compared / f).is_file() and (compared / f).stat().st_size > 0, f
    for m in ALL_METHODS.split(","):
        assert (compared / m / "results.json").is_file()
    pdf = (compared / "report.pdf").read_bytes()
    assert pdf.startswith(b"%PDF") and pdf.rstrip().endswith(b"%%EOF")
    assert len(re.findall(rb"/Subtype\s*/Image", pdf)) >= 7  # the seven plots are embedded
    html = (compared / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 7 and "src=\"http" not in html
    md = (compared / "report.md").read_text()
    assert "not CNN/DailyMail results" in md and "not CNN/DailyMail results" in html


def test_report_numbers_equal_results_json(compared):
    rows = list(csv.DictReader(open(compared / "results.csv")))
    assert [r["method"] for r in rows] == ALL_METHODS.split(",")
    md = (compared / "report.md").read_text()
    header = [c.strip() for c in next(x for x in md.splitlines() if x.startswith("| method | val loss")).strip("|").split("|")]
    for row in rows:
        r = json.loads((compared / row["method"] / "results.json").read_text())
        assert float(row["rougeL"]) == pytest.approx(r["eval"]["metrics"]["rougeL"])
        assert float(row["rougeLsum"]) == pytest.approx(r["eval"]["metrics"]["rougeLsum"])
        assert float(row["rougeL_lo"]) <= float(row["rougeL"]) <= float(row["rougeL_hi"])  # numbers, not tuples
        assert int(row["params_trainable"]) == r["params"]["trainable"]
        assert float(row["mean_generated_tokens"]) == pytest.approx(r["eval"]["mean_generated_tokens"])
        for k in ("weights_bytes", "gradient_bytes", "optimizer_bytes", "eval_peak_bytes"):
            assert int(row[k]) == r["cost"][k], k
        memory = next(x for x in md.split("## Memory", 1)[1].splitlines() if x.startswith(f"| {row['method']} |"))
        state = r["cost"]["weights_bytes"] + r["cost"]["gradient_bytes"] + r["cost"]["optimizer_bytes"]
        assert f"| {human(r['cost']['optimizer_bytes'])}B | {human(state)}B |" in memory
        line = next(x for x in md.splitlines() if x.startswith(f"| {row['method']} |") and "[" in x)
        cells = dict(zip(header, (c.strip() for c in line.strip("|").split("|"))))
        # the headline ROUGE-L is the summary-level one; the sentence-level one is named for what it is
        assert cells["ROUGE-L"].startswith(f"{r['eval']['metrics']['rougeLsum']:.2f} [")
        assert cells["ROUGE-L (sentence-level)"].startswith(f"{r['eval']['metrics']['rougeL']:.2f} [")
        if r["eval"]["val_loss"] is not None:
            assert f"| {r['eval']['val_loss']:.4f} |" in line
        assert f"{r['params']['trainable']:,}" in line


def test_report_rebuilds_without_training_and_fills_analysis(compared, tmp_path):
    compared = shutil.copytree(compared, tmp_path / "compared")  # rebuilt here: the shared one stays as it is
    doc = tmp_path / "analysis.md"
    doc.write_text("# A\n\ntheory\n\n<!-- results:start -->\nold\n<!-- results:end -->\n\ntail\n")
    before = {m: (compared / m / "results.json").stat().st_mtime_ns for m in ALL_METHODS.split(",")}
    (compared / "report.md").unlink()
    assert main(["report", str(compared), "--analysis", "--analysis-file", str(doc)]) == 0
    assert (compared / "report.md").is_file()
    assert before == {m: (compared / m / "results.json").stat().st_mtime_ns for m in ALL_METHODS.split(",")}
    text = doc.read_text()
    assert "old" not in text and text.startswith("# A\n\ntheory") and text.rstrip().endswith("tail")
    best = max((json.loads((compared / m / "results.json").read_text()) for m in ALL_METHODS.split(",")),
               key=lambda r: r["eval"]["metrics"]["rougeLsum"])
    assert f"Highest ROUGE-L (summary-level): **{best['method']}** ({best['eval']['metrics']['rougeLsum']:.2f})" in text


def test_report_html_images_load_in_chromium(compared, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        if os.environ.get("CI"):  # .ci/run installs it: in CI a missing browser is a failure, not a skip
            pytest.fail("chromium is not installed; .ci/run should have installed it")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    js = ("<script>window.onload=()=>{const i=[...document.images];document.title=i.length+':'+"
          "i.filter(x=>x.complete&&x.naturalWidth>0).length}</script>")
    page = tmp_path / "r.html"
    page.write_text((compared / "report.html").read_text().replace("</head>", js + "</head>"))
    res = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                          "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'u'}",
                          "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    m = re.search(r"<title>(\d+):(\d+)</title>", res.stdout)
    assert m and m.group(1) == m.group(2) == "7", res.stdout[:500]
    # the summaries side by side are collapsible and start closed
    assert res.stdout.count("<details class=\"example\">") == 10 and "<details class=\"example\" open" not in res.stdout


def test_report_states_the_protocol_and_shows_summaries(compared):
    """Beside the table: the ROUGE variant, stemmer, splitter, each decoding and the article budget; then K
    seeded test articles with every method's stored summary, and the articles where methods disagree most."""
    from peftsum.utils import read_jsonl

    md = (compared / "report.md").read_text()
    assert "summary-level ROUGE-L of CNN/DailyMail papers (rouge-score's rougeLsum" in md
    assert "Porter stemmer" in md and "NLTK Punkt" in md
    assert "beam search (4 beams, length penalty 1, early stopping), at most 12 new tokens" in md
    assert "zero-shot: top-k sampling (k = 2" in md and "Zero-shot follows the GPT-2 paper" in md
    lora = json.loads((compared / "lora" / "results.json").read_text())
    assert f"read the same article tokens: at most {lora['data']['budget']['source']} " in md
    assert lora["protocol"]["headline"] == "rougeLsum" and lora["protocol"]["decoding"]["num_beams"] == 4
    section = md.split("## Summaries side by side", 1)[1]
    seeded, disagree = section.split("### Where the methods disagree most")
    ids = re.findall(r"\*\*Article `([^`]+)`\*\*", seeded)
    assert len(ids) == 5 and len(re.findall(r"\*\*Article `", disagree)) == 5
    preds = {m: {p["id"]: p for p in read_jsonl(compared / m / "predictions.jsonl")} for m in ALL_METHODS.split(",")}
    for i in ids:  # every method's stored summary of each shown article, with its score
        block = seeded.split(f"**Article `{i}`**", 1)[1].split("**Article `", 1)[0]
        assert " / ".join(preds["lora"][i]["reference"].splitlines()) in block
        for m in ALL_METHODS.split(","):
            p = preds[m][i]
            text = " / ".join(x.strip() for x in p["prediction"].splitlines() if x.strip()) or "(empty)"
            assert f"- **{m}** ({p['rougeLsum']:.1f}): {text}" in block
    spreads = [float(x) for x in re.findall(r"ROUGE-L spread ([0-9.]+)\)", disagree)]
    assert spreads == sorted(spreads, reverse=True)
    every = max(max(p["rougeLsum"] for p in (preds[m][i] for m in preds)) - min(p["rougeLsum"] for p in
                (preds[m][i] for m in preds)) for i in preds["lora"])
    assert spreads[0] == pytest.approx(every, abs=0.05)
    html = (compared / "report.html").read_text()
    assert html.count("<details class='example'>") == 10 and "<script" not in html.split("Summaries side by side")[1]


def test_significance_plots_and_analysis_rank_by_the_summary_level_rouge_l():
    from peftsum.evaluate.registry import HEADLINE, selected
    from peftsum.report.tables import pairs_table

    d = {k: {"diff": v, "low": v - 1, "high": v + 1, "p_holm": 0.01, "significant": True}
         for k, v in (("rouge1", 1.0), ("rouge2", 2.0), ("rougeL", 3.0), ("rougeLsum", 4.0))}
    rouge = [m for m in selected(None) if m.name in d]
    rows = pairs_table({"pairs": {("a", "b"): d}, "metrics": rouge})
    assert rows[0][3] == "ROUGE-L diff [95% CI] (p Holm)" and rows[1][3].startswith("+4.00 [")
    assert rows[0][4] == "ROUGE-L (sentence-level) diff [95% CI] (p Holm)" and rows[1][4].startswith("+3.00 [")
    assert HEADLINE == "rougeLsum" and [m.name for m in rouge] == ["rouge1", "rouge2", "rougeLsum", "rougeL"]
