"""The one exception type for mistakes a user can make (bad file, column, config, model).

The CLI turns it into one line on stderr and exit status 2, never a traceback.
"""


class UserError(Exception):
    """An error caused by the user's input; the message says what is wrong and what to do."""

    exit_code = 2


class TrainingDiverged(UserError):
    """A NaN or infinite training or validation loss: the run stops and claims no weights as best."""

    exit_code = 3
