"""Early stopping on validation loss, with the rules users know from transformers' EarlyStoppingCallback
and Lightning's EarlyStopping:

* an evaluation *improves* when its loss is lower than the best so far by more than ``min_delta``;
* training stops after ``patience`` consecutive evaluations without an improvement
  (patience 2: best, worse, worse -> stop); ``patience: null`` never stops early;
* the same weights are never judged twice: an evaluation at the step already evaluated is ignored
  (``eval_every_steps`` landing on the end of an epoch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class EarlyStopping:
    patience: int | None
    min_delta: float = 0.0
    best: float = math.inf
    best_step: int | None = None
    best_epoch: int | None = None
    bad_evaluations: int = 0
    last_step: int | None = None

    def seen(self, step: int) -> bool:
        """Was the model at this optimizer step already evaluated?"""
        return self.last_step == step

    def update(self, loss: float, step: int, epoch: int) -> bool:
        """Record one validation loss; True when it is the new best (keep these weights)."""
        self.last_step = step
        if loss < self.best - self.min_delta:
            self.best, self.best_step, self.best_epoch, self.bad_evaluations = loss, step, epoch, 0
            return True
        self.bad_evaluations += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.bad_evaluations >= self.patience

    def state_dict(self) -> dict:
        return dict(self.__dict__)

    def load_state_dict(self, state: dict) -> None:
        self.__dict__.update(state)
