"""Plain-text rules shared by the data, the baselines, ROUGE and ``summarize``: cleaning, the article hash
used for leakage, sentence splitting and Lead-3."""

from __future__ import annotations

import hashlib
import re

_SENT = re.compile(r"(?<=[.!?])[\"'”’)]*\s+(?=[\"'“‘(]?[A-Z0-9])")


def split_sentences(text: str) -> list[str]:
    """A plain rule-based sentence splitter (no downloads): newlines, then . ! ? before a capital."""
    out = []
    for line in text.split("\n"):
        out.extend(s.strip() for s in _SENT.split(line.strip()) if s.strip())
    return out


def lead3(article: str) -> str:
    """The first three sentences of the article, one per line."""
    return "\n".join(split_sentences(article)[:3])


_SPACE = re.compile(r"[^\S\n]+")  # whitespace other than newlines
_BLANKS = re.compile(r"\n\s*\n+")


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
