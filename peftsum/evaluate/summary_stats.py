"""What a summary is, beyond its overlap with the reference: reference-free statistics from the summarization
literature, each a registered metric (the report shows them for every method and for the references).

Words: lower-cased runs of letters and digits (rouge-score's tokenization without its stemmer); punctuation is not
a word.  ``S`` is the summary's words, ``A`` the article's.

* **Novel n-grams** (n = 1..4; See et al. 2017, Kryściński et al. 2018): the share of the summary's distinct
  n-grams that occur nowhere in the article, in %.  A summary with no n-gram of that length has none novel (0).
* **Extractive fragments** (Grusky, Naaman & Artzi 2018, "Newsroom", section 4.1): the summary is read left to
  right; at each position the longest shared run of words is taken from a scan of the article that restarts after
  each run it compared (the paper's greedy ``F(A, S)``: a run found inside a longer one is not tried again), and
  the reading jumps past it (one word when none is shared).  With ``F`` those fragments:
  coverage = sum |f| / |S| (the share of the summary's words inside a copied fragment, 0..1),
  density = sum |f|^2 / |S| (the mean length of the fragment each word belongs to: a copied sentence of 20 words
  scores 20), compression = |A| / |S| (an empty summary counts as one word).
* **Repetition**: the share of the summary's word trigrams that repeat one before them in the summary, in %
  (1 - distinct / all; "a b c a b c" has 4 trigrams, 3 distinct: 25 %).
* **Length**: the summary's words, and their ratio to the reference's words.
"""

from __future__ import annotations

import functools
import re
from bisect import bisect_left

from .registry import Metric, register

_WORD = re.compile(r"[a-z0-9]+")


@functools.lru_cache(maxsize=2048)
def words(text: str) -> tuple[str, ...]:
    return tuple(_WORD.findall(text.lower()))


def ngrams(tokens: tuple[str, ...], n: int) -> list[tuple[str, ...]]:
    return [tokens[i:i + n] for i in range(len(tokens) - n + 1)]


@functools.lru_cache(maxsize=256)
def _ngram_set(text: str, n: int) -> frozenset:
    return frozenset(ngrams(words(text), n))


def novel_ngrams(summary: str, article: str, n: int) -> float:
    """% of the summary's distinct n-grams not in the article."""
    grams = set(ngrams(words(summary), n))
    if not grams:
        return 0.0
    return 100.0 * len(grams - _ngram_set(article, n)) / len(grams)


@functools.lru_cache(maxsize=256)
def _positions(article: str) -> dict[str, list[int]]:
    where: dict[str, list[int]] = {}
    for j, w in enumerate(words(article)):
        where.setdefault(w, []).append(j)
    return where


def fragments(summary: tuple[str, ...], article: tuple[str, ...], positions: dict[str, list[int]] | None = None
              ) -> list[tuple[int, int, int]]:
    """Newsroom's greedy extractive fragments of ``summary`` in ``article``: (summary start, article start, length).

    The paper's loop, with the article positions of each word looked up instead of scanned one by one: for the word
    at summary position ``i`` it compares runs starting at every article position ``j`` that holds that word, in
    order, skipping those inside the run last compared (the paper's ``j = j'``); the longest run (the first of equal
    ones) is the fragment, and ``i`` moves past it."""
    if positions is None:
        positions = {}
        for j, w in enumerate(article):
            positions.setdefault(w, []).append(j)
    found, i = [], 0
    while i < len(summary):
        best, best_len, j = None, 0, 0
        starts = positions.get(summary[i], [])
        k = 0
        while k < len(starts):
            j = starts[k]
            n = 0
            while i + n < len(summary) and j + n < len(article) and summary[i + n] == article[j + n]:
                n += 1
            if n > best_len:
                best, best_len = (i, j, n), n
            k = bisect_left(starts, j + n, k + 1)  # the scan resumes after the run it compared
        if best is not None:
            found.append(best)
        i += max(best_len, 1)
    return found


@functools.lru_cache(maxsize=4096)
def fragment_stats(summary: str, article: str) -> tuple[float, float, float]:
    """(coverage, density, compression) of ``summary`` against ``article``."""
    s, a = words(summary), words(article)
    lengths = [n for _, _, n in fragments(s, a, _positions(article))]
    size = len(s)
    if not size:
        return 0.0, 0.0, float(len(a))
    return sum(lengths) / size, sum(n * n for n in lengths) / size, len(a) / size


def repetition(summary: str, n: int = 3) -> float:
    """% of the summary's word n-grams that repeat an earlier one in the summary."""
    grams = ngrams(words(summary), n)
    if not grams:
        return 0.0
    return 100.0 * (1 - len(set(grams)) / len(grams))


def length_ratio(summary: str, reference: str) -> float:
    return len(words(summary)) / max(len(words(reference)), 1)


for _n in (1, 2, 3, 4):
    register(Metric(f"novel_{_n}gram", f"novel {_n}-grams %", "summary",
                    per_example=lambda p, r, a, n=_n: novel_ngrams(p, a, n), higher_is_better=None,
                    needs_reference=False, needs_article=True, fmt=".1f",
                    about="novel n-grams: the share of the summary's distinct n-grams (n = 1..4) absent from the "
                          "article" if _n == 1 else ""))
register(Metric("coverage", "coverage", "summary", per_example=lambda p, r, a: fragment_stats(p, a)[0],
                higher_is_better=None, needs_reference=False, needs_article=True, fmt=".3f",
                about="coverage, density and compression: Grusky et al. (2018)'s greedy extractive fragments "
                      "(coverage: the share of summary words inside a fragment copied from the article; density: "
                      "the mean squared fragment length per summary word; compression: article words per summary "
                      "word)"))
register(Metric("density", "density", "summary", per_example=lambda p, r, a: fragment_stats(p, a)[1],
                higher_is_better=None, needs_reference=False, needs_article=True))
register(Metric("compression", "compression", "summary", per_example=lambda p, r, a: fragment_stats(p, a)[2],
                higher_is_better=None, needs_reference=False, needs_article=True, fmt=".1f"))
register(Metric("repeated_3gram", "repeated 3-grams %", "summary", per_example=lambda p, r, a: repetition(p),
                higher_is_better=False, needs_reference=False, fmt=".1f",
                about="repeated 3-grams: the share of the summary's word trigrams that repeat an earlier one"))
register(Metric("words", "words", "summary", per_example=lambda p, r, a: len(words(p)), higher_is_better=None,
                needs_reference=False, fmt=".1f", about="words: the summary's length in words"))
register(Metric("length_ratio", "length / reference", "summary", per_example=lambda p, r, a: length_ratio(p, r),
                higher_is_better=None, fmt=".2f", about="length / reference: summary words over reference words"))
