"""The untrained baselines: zero-shot GPT-2 with the "TL;DR:" template, and Lead-3."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..config import GPT2_PAPER_DECODING
from ..data.text import lead3
from .base import Method, ModelFree, Untrained

__all__ = ["Lead3", "ZeroShot", "lead3"]


class ZeroShot(Untrained, Method):
    """The base model prompted with the template; nothing trains.

    ``method.zero_shot.protocol: gpt2-paper`` (the default) generates as Radford et al. (2019), section 3.6,
    did: 100 tokens of top-k sampling with k = 2 after "TL;DR:", the first three generated sentences kept
    (seeded by ``eval.decoding.seed``, each article by its own generator).  ``decoding`` uses
    ``eval.decoding`` like every other method."""

    name = "zero-shot"
    color = "#7f7f7f"

    def decoding(self):
        if self.cfg.method.zero_shot.protocol == "gpt2-paper":
            return dataclasses.replace(GPT2_PAPER_DECODING, seed=self.cfg.eval.decoding.seed)
        return self.cfg.eval.decoding

    def save(self, model, run_dir: Path) -> None:
        self.write_method_file(run_dir, model, {"protocol": self.cfg.method.zero_shot.protocol})


class Lead3(ModelFree, Method):
    """The first three sentences of the article (the split rule of ``data.text``)."""

    name = "lead-3"
    color = "#bcbd22"
