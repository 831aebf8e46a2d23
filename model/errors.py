"""Errors the training core raises for bad input, so the CLI can print one sentence."""


class InputError(ValueError):
    """Bad user input (a file, a value, a dataset): the message names the value and the fix.

    The CLI prints the message alone and exits with code 2.
    """


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite; the message gives the step."""
