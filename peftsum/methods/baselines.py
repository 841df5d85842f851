"""The untrained baselines: zero-shot GPT-2 with the "TL;DR:" template, and Lead-3."""

from __future__ import annotations

import re
from pathlib import Path

from .base import Method

_SENT = re.compile(r"(?<=[.!?])[\"'”’)]*\s+(?=[\"'“‘(]?[A-Z0-9])")


def split_sentences(text: str) -> list[str]:
    """A plain rule-based sentence splitter (no downloads): newlines, then . ! ? before a capital."""
    out = []
    for line in text.split("\n"):
        out.extend(s.strip() for s in _SENT.split(line.strip()) if s.strip())
    return out


def lead3(article: str) -> str:
    return "\n".join(split_sentences(article)[:3])


class ZeroShot(Method):
    """The base model prompted with the template, as in the GPT-2 paper; nothing trains."""

    name = "zero-shot"
    trains = False

    def save(self, model, run_dir: Path) -> None:
        self.write_method_file(run_dir)


class Lead3(Method):
    name = "lead-3"
    trains = False
    uses_model = False

    def save(self, model, run_dir: Path) -> None:
        self.write_method_file(run_dir)
