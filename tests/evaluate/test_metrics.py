"""ROUGE as the CNN/DailyMail literature computes it (evaluate/metrics.py), on strings with known answers:
values worked out by hand, the summary-level ROUGE-L as the headline, its sentences split by the splitter."""

from __future__ import annotations

import pytest

from peftsum.evaluate.metrics import HEADLINE, LABELS, rouge_per_example
from peftsum.evaluate.registry import get

REFERENCE = "Police arrest man.\nFloods hit town.\nSchool closes early today."


def test_reordered_sentences_score_as_the_field_scores_them():
    """Three reference sentences in reverse order: one LCS over the whole text (rouge-score's rougeL) can keep
    only one sentence in order, the longest ("school closes early today", 4 of 10 tokens) -> 40.0; the
    summary-level ROUGE-L (rougeLsum) matches every sentence -> 100."""
    reordered = "School closes early today.\nFloods hit town.\nPolice arrest man."
    s = rouge_per_example([reordered], [REFERENCE])
    assert s["rougeL"][0] == pytest.approx(40.0)
    assert s["rougeLsum"][0] == pytest.approx(100.0)
    assert s["rouge1"][0] == pytest.approx(100.0)
    # the figure: 3 sentences of 2, 2 and 3 tokens, last first -> LCS 3 of 7 -> 42.86
    ref = "Police arrest.\nFloods hit.\nSchool closes early."
    pred = "School closes early.\nFloods hit.\nPolice arrest."
    s = rouge_per_example([pred], [ref])
    assert s["rougeL"][0] == pytest.approx(300 / 7)
    assert s["rougeLsum"][0] == pytest.approx(100.0)
    assert HEADLINE == "rougeLsum" and LABELS[HEADLINE] == "ROUGE-L"


def test_rouge_values_worked_out_by_hand():
    """ref: the cat sat on the mat; pred: the cat lay on the mat.  Unigrams: 5 of 6 on each side -> 83.33;
    bigrams: the cat, on the, the mat = 3 of 5 -> 60.0; LCS the cat on the mat = 5 of 6 -> 83.33.  A summary
    is scored against its own reference, not against itself: an unrelated one scores 0."""
    s = rouge_per_example(["the cat lay on the mat", "dogs bark loudly"], ["the cat sat on the mat"] * 2)
    assert s["rouge1"][0] == pytest.approx(500 / 6)
    assert s["rouge2"][0] == pytest.approx(60.0)
    assert s["rougeL"][0] == pytest.approx(500 / 6)
    assert s["rougeLsum"][0] == pytest.approx(500 / 6)
    assert s["rouge1"][1] == 0.0 and s["rougeLsum"][1] == 0.0
    # the registered metrics are the same scores, article by article
    for k in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        assert get(k).score(["the cat lay on the mat", "dogs bark loudly"], ["the cat sat on the mat"] * 2,
                            ["", ""]) == pytest.approx(s[k])
    # the stemmer: "arrested" and "arrests" both stem to "arrest"
    assert rouge_per_example(["police arrested men"], ["police arrests men"])["rouge1"][0] == pytest.approx(100.0)


def test_summary_level_rouge_reads_sentences_split_by_the_splitter():
    """A generated summary on one line is split into sentences before ROUGE-Lsum, so its sentence order
    counts no more than the reference's."""
    one_line = "School closes early today. Floods hit town. Police arrest man."
    assert rouge_per_example([one_line], [REFERENCE])["rougeLsum"][0] == pytest.approx(100.0)
