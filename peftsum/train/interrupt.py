"""Ctrl-C and SIGTERM during training: finish the step, checkpoint, then stop."""

from __future__ import annotations

import signal
import sys
import threading

from ..errors import Preempted

# what each signal asks, in the order of precedence when several processes got different ones
SIGNALS = {signal.SIGINT: 1, signal.SIGTERM: 2}


class DeferredInterrupt:
    """Ctrl-C (SIGINT) or a scheduler's SIGTERM (Slurm's preemption and time limit, Kubernetes, notebook hosts,
    torchrun passing it on) during training: finish the current optimizer step, checkpoint, then stop.

    The first signal only sets a flag that the loop reads between steps, so a checkpoint is never taken half-way
    through an update; a second one stops at once (a scheduler's SIGKILL follows its grace period anyway).
    ``requested``: 0 nothing, 1 Ctrl-C, 2 SIGTERM."""

    def __init__(self):
        self.requested = 0
        self._previous: dict = {}
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.requested:
            raise stop(max(self.requested, SIGNALS[signum]))
        self.requested = SIGNALS[signum]
        what = "interrupted" if signum == signal.SIGINT else "SIGTERM received"
        again = "Ctrl-C" if signum == signal.SIGINT else "a second SIGTERM"
        print(f"\npeftsum: {what}; finishing this step and saving a checkpoint ({again} to stop now)",
              file=sys.stderr, flush=True)

    def restore(self):
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}


def stop(requested: int) -> BaseException:
    """What ends the run after its checkpoint: KeyboardInterrupt for Ctrl-C (exit 130), Preempted for SIGTERM
    (exit 143, which a scheduler requeues on)."""
    if requested >= SIGNALS[signal.SIGTERM]:
        return Preempted("stopped by SIGTERM after a checkpoint; the same command continues where it stopped "
                         "(train: add --resume)")
    return KeyboardInterrupt()
