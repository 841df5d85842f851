"""Ctrl-C during training: finish the step, checkpoint, then stop."""

from __future__ import annotations

import signal
import sys
import threading


class DeferredInterrupt:
    """Ctrl-C during training: finish the current optimizer step, checkpoint, then stop.

    The first SIGINT only sets a flag that the loop reads between steps, so a checkpoint is never
    taken half-way through an update; a second SIGINT stops at once."""

    def __init__(self):
        self.requested = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\npeftsum: interrupted; finishing this step and saving a checkpoint (Ctrl-C again to stop now)",
              file=sys.stderr, flush=True)

    def restore(self):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
