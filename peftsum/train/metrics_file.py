"""``metrics.jsonl``: every training step and validation of a run, one JSON object per line."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from ..utils import disk_full, is_disk_full, write_text


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
        line = (json.dumps(row) + "\n").encode("utf-8")
        with open(self.path, "ab", buffering=0) as f:  # unbuffered: a failed write fails here, not at close
            end = f.tell()
            try:
                view = memoryview(line)
                while view:
                    view = view[f.write(view):]
            except OSError as e:  # a full disk: the file ends at its last whole line, and the run stops
                if not is_disk_full(e):
                    raise
                with contextlib.suppress(OSError):
                    f.truncate(end)
                raise disk_full(self.path, len(line)) from None
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
