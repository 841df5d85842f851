"""What the summaries are (evaluate/summary_stats.py): each statistic on strings worked out by hand, the fragment
algorithm's greedy choice, the fast fragment search against the paper's loop as written, and every stored value of
the shared comparison against a plain re-implementation."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from peftsum.evaluate.registry import get, selected
from peftsum.evaluate.summary_stats import (
    fragment_stats,
    fragments,
    length_ratio,
    novel_ngrams,
    repetition,
    words,
)
from peftsum.utils import read_jsonl
from tests.conftest import ALL_METHODS, raw_test_articles


def test_novel_ngrams_by_hand():
    """Summary "the cat sat on the mat", article "the cat sat on a mat".  Distinct n-grams of the summary / those
    absent from the article: unigrams 5 / 0; bigrams 5 / 2 (on the, the mat); trigrams 4 / 2 (sat on the, on the
    mat); 4-grams 3 / 2 (cat sat on the, sat on the mat)."""
    s, a = "The cat sat on the mat.", "the cat sat on a mat"
    assert [novel_ngrams(s, a, n) for n in (1, 2, 3, 4)] == pytest.approx([0.0, 40.0, 50.0, 200 / 3])
    assert words("The CAT, sat!  On-the mat") == ("the", "cat", "sat", "on", "the", "mat")  # case and punctuation
    assert novel_ngrams("", a, 2) == 0.0 and novel_ngrams("one", a, 2) == 0.0  # no bigram: none novel
    assert novel_ngrams("dogs bark", a, 1) == 100.0


def test_fragments_take_the_papers_greedy_choice():
    """Grusky et al.'s F(A, S): S = "a a b", A = "a a a b".  At S[0] the scan compares the run at A[0] ("a a", then
    "a" != "b"), jumps past it to A[2] (a run of 1), so the fragment is "a a" although "a a b" at A[1] is longer:
    the scan never restarts inside a run it compared.  Then S[2] = "b" matches A[3].  Fragments of 2 and 1:
    coverage 3/3, density (4 + 1)/3, compression 4/3."""
    assert fragments(("a", "a", "b"), ("a", "a", "a", "b")) == [(0, 0, 2), (2, 3, 1)]
    assert fragment_stats("a a b", "a a a b") == pytest.approx((1.0, 5 / 3, 4 / 3))
    # the longest run wins even when it starts later: "x y" at A[0], "x y z" at A[3]
    assert fragments(("x", "y", "z"), ("x", "y", "q", "x", "y", "z")) == [(0, 3, 3)]
    assert fragment_stats("x y z", "x y q x y z") == pytest.approx((1.0, 3.0, 2.0))
    # nothing shared: no fragment; an empty summary counts as one word for compression
    assert fragment_stats("new words", "old text here") == pytest.approx((0.0, 0.0, 1.5))
    assert fragment_stats("", "old text here") == (0.0, 0.0, 3.0)
    # a copied sentence of 6 words in a summary of 8: coverage 6/8, density 36/8
    assert fragment_stats("police said the man was arrested yesterday morning",
                          "on monday police said the man was arrested .") == pytest.approx((0.75, 4.5, 8 / 8))


def _paper_fragments(s, a):
    """The Newsroom paper's loop as printed (Grusky et al. 2018, section 4.1), scanning the article word by word."""
    found, i = [], 0
    while i < len(s):
        f, j = [], 0
        while j < len(a):
            if s[i] == a[j]:
                i2, j2 = i, j
                while i2 < len(s) and j2 < len(a) and s[i2] == a[j2]:
                    i2, j2 = i2 + 1, j2 + 1
                if len(f) < i2 - i:
                    f = s[i:i2]
                j = j2
            else:
                j += 1
        i += max(len(f), 1)
        if f:
            found.append(len(f))
    return found


def test_the_fast_search_is_the_papers_loop():
    rng = np.random.default_rng(0)
    for _ in range(400):
        vocab = [str(k) for k in range(rng.integers(2, 6))]
        s = tuple(rng.choice(vocab, rng.integers(0, 15)))
        a = tuple(rng.choice(vocab, rng.integers(0, 30)))
        assert [n for _, _, n in fragments(s, a)] == _paper_fragments(s, a), (s, a)


def test_repetition_and_length_by_hand():
    assert repetition("a b c a b c") == pytest.approx(25.0)  # 4 trigrams, 3 distinct
    assert repetition("a b c d") == 0.0 and repetition("a b") == 0.0
    assert repetition("the man the man the man") == pytest.approx(50.0)  # the man the, man the man x2: 4, 2 distinct
    assert length_ratio("One two three.", "one two three four five six") == 0.5
    assert get("words").score(["One, two three."], ["x"], ["y"]) == [3.0]


def _plain(prediction: str, reference: str, article: str) -> dict:
    """Every statistic written out plainly: lists, sets and the paper's loop."""
    s, a, r = words(prediction), words(article), words(reference)
    out = {}
    for n in (1, 2, 3, 4):
        grams = {tuple(s[i:i + n]) for i in range(len(s) - n + 1)}
        have = {tuple(a[i:i + n]) for i in range(len(a) - n + 1)}
        out[f"novel_{n}gram"] = 100 * len([g for g in grams if g not in have]) / len(grams) if grams else 0.0
    frags = _paper_fragments(s, a)
    out["coverage"] = sum(frags) / len(s) if s else 0.0
    out["density"] = sum(f * f for f in frags) / len(s) if s else 0.0
    out["compression"] = len(a) / max(len(s), 1)
    tri = [tuple(s[i:i + 3]) for i in range(len(s) - 2)]
    out["repeated_3gram"] = 100 * (len(tri) - len(set(tri))) / len(tri) if tri else 0.0
    out["words"] = len(s)
    out["length_ratio"] = len(s) / max(len(r), 1)
    return out


def test_every_stored_statistic_is_the_plain_computation(compared, demo_dir):
    """The shared comparison: each method's stored value of every statistic, article by article, equals the plain
    computation on the stored summary and the raw test article; results.json's means, results.csv's columns and the
    report's table are their means; the references' own values too."""
    names = [m.name for m in selected(None) if m.group == "summary"]
    rows = {r["method"]: r for r in csv.DictReader(open(compared / "results.csv"))}
    md = (compared / "report.md").read_text()
    table = md.split("## What the summaries are", 1)[1]
    for method in ALL_METHODS.split(","):
        preds = read_jsonl(compared / method / "predictions.jsonl")
        articles = raw_test_articles(demo_dir, [p["id"] for p in preds])
        plain = [_plain(p["prediction"], p["reference"], a) for p, a in zip(preds, articles)]
        for k in names:
            assert [p[k] for p in preds] == pytest.approx([x[k] for x in plain]), (method, k)
        means = json.loads((compared / method / "results.json").read_text())["eval"]["metrics"]
        for k in names:
            assert means[k] == pytest.approx(np.mean([x[k] for x in plain])), (method, k)
            assert float(rows[method][k]) == pytest.approx(means[k])
            assert float(rows[method][f"{k}_lo"]) <= means[k] + 1e-9 <= float(rows[method][f"{k}_hi"]) + 2e-9
        line = next(x for x in table.splitlines() if x.startswith(f"| {method} |"))
        assert line.split("|")[2].strip().startswith(f"{means['novel_1gram']:.1f} [")
        if method == "lead-3":  # the lead, copied: nothing novel, all covered, one fragment per sentence run
            assert means["novel_1gram"] == 0 and means["coverage"] == 1.0
    refs = [_plain(p["reference"], p["reference"], a)
            for p, a in zip(preds, articles)]
    for k in ("novel_2gram", "density"):
        assert [p["reference_metrics"][k] for p in preds] == pytest.approx([x[k] for x in refs])
        assert float(rows["lora"][f"reference_{k}"]) == pytest.approx(np.mean([x[k] for x in refs]))
    assert "| references |" in table and "length_ratio" not in preds[0]["reference_metrics"]
