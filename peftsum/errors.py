"""The exceptions the CLI turns into one line on stderr and an exit status, never a traceback.

Exit statuses: 2 a mistake in the input (``UserError``), 3 the loss diverged, 4 out of device memory even at one
sequence per pass, 5 the disk (or quota) is full, 130 Ctrl-C, 143 SIGTERM (a scheduler's preemption or time
limit: the step finished and a checkpoint was written; the same command continues).
"""


class UserError(Exception):
    """An error caused by the user's input; the message says what is wrong and what to do."""

    exit_code = 2


class TrainingDiverged(UserError):
    """A NaN or infinite training or validation loss: the run stops and claims no weights as best."""

    exit_code = 3


class OutOfMemory(UserError):
    """The device's memory does not hold even one sequence per forward pass (after backing off)."""

    exit_code = 4


class DiskFull(UserError):
    """A write found no space (ENOSPC) or the quota used up (EDQUOT); nothing of that file was left behind."""

    exit_code = 5


class Preempted(BaseException):
    """SIGTERM during training: the current step finished and was checkpointed.  Exit status 143 (128 + SIGTERM)
    is what a job killed by the signal reports, so a scheduler's requeue rule for one matches the other.  Not an
    ``Exception``: nothing on the way up may swallow it."""

    exit_code = 143
