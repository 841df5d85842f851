"""``metrics.jsonl``: every training step and validation of a run, one JSON object per line."""

from __future__ import annotations

import json
from pathlib import Path

from ..utils import write_text


class MetricsFile:
    """``metrics.jsonl``: one JSON object per line, appended; truncated to a checkpoint on resume."""

    def __init__(self, path: Path, enabled: bool = True, sinks: list | None = None):
        self.path, self.enabled = Path(path), enabled
        self.sinks = list(sinks or [])  # also given every row (experiment trackers), file or not
        self.lines = 0
        if enabled and self.path.is_file():
            self.lines = sum(1 for line in self.path.read_text().splitlines() if line.strip())

    def write(self, row: dict) -> None:
        for sink in self.sinks:
            sink(row)
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        self.lines += 1

    def truncate_to(self, n: int) -> None:
        if not self.enabled:
            return
        rows = self.path.read_text().splitlines()[:n] if self.path.is_file() else []
        write_text(self.path, "".join(r + "\n" for r in rows))
        self.lines = len(rows)

    def reset(self) -> None:
        if self.enabled:
            write_text(self.path, "")
        self.lines = 0
