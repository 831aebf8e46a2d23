"""The one exception family the CLI turns into a sentence on stderr and an exit code."""

from model import InputError


class HpsearchError(Exception):
    """A failure of the search service that is not the user's input (exit code 1)."""

    exit_code = 1


class UsageError(HpsearchError, InputError):
    """Bad usage or input: the message names the value and the fix (exit code 2)."""

    exit_code = 2
