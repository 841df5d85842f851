"""Early stopping on a validation figure (the loss, or ROUGE with ``maximize``), with the rules users know from
transformers' EarlyStoppingCallback and Lightning's EarlyStopping:

* an evaluation *improves* when its loss is lower (its score higher, with ``maximize``) than the best so far
  by more than ``min_delta``;
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
    maximize: bool = False  # a score (ROUGE) rather than a loss
    best: float = math.inf  # of the loss, or of the negated score
    best_step: int | None = None
    best_epoch: int | None = None
    bad_evaluations: int = 0
    last_step: int | None = None

    def seen(self, step: int) -> bool:
        """Was the model at this optimizer step already evaluated?"""
        return self.last_step == step

    def update(self, value: float, step: int, epoch: int) -> bool:
        """Record one validation loss (or score); True when it is the new best (keep these weights)."""
        self.last_step = step
        loss = -value if self.maximize else value
        if loss < self.best - self.min_delta:
            self.best, self.best_step, self.best_epoch, self.bad_evaluations = loss, step, epoch, 0
            return True
        self.bad_evaluations += 1
        return False

    @property
    def best_value(self) -> float | None:
        """The best loss (or score) seen."""
        if self.best_step is None:
            return None
        return -self.best if self.maximize else self.best

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.bad_evaluations >= self.patience

    def state_dict(self) -> dict:
        return dict(self.__dict__)

    def load_state_dict(self, state: dict) -> None:
        self.__dict__.update(state)
