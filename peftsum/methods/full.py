"""Full fine-tuning: every parameter trains (the upper reference). Saves the whole model."""

from __future__ import annotations

from pathlib import Path

from ..utils import safe_load_file, save_file_atomic
from .base import Method


class Full(Method):
    name = "full"
    color = "#d62728"
    rationale = "AdamW 5e-5, the usual rate for full fine-tuning of GPT-2 small: every weight moves, so steps are small."
    gap_reference = True

    def _adapt(self, model) -> None:
        for p in model.parameters():
            p.requires_grad_(True)

    def save(self, model, run_dir: Path) -> None:
        save_file_atomic(self.state_dict(model), Path(run_dir) / "model.safetensors", {"format": "pt"})
        self.write_method_file(run_dir, model)

    def load(self, model, run_dir: Path) -> None:
        self.load_state_dict(model, safe_load_file(Path(run_dir) / "model.safetensors"))
