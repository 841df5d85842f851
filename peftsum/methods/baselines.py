"""The untrained baselines: zero-shot GPT-2 with the "TL;DR:" template, and Lead-3."""

from __future__ import annotations

from pathlib import Path

from ..data.text import lead3
from .base import Method

__all__ = ["Lead3", "ZeroShot", "lead3"]


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
