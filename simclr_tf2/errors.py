"""Errors a run raises on purpose: each message says what is wrong and the fix.

The command-line entry points print them as one `error:` line and exit 2.
"""


class DataError(ValueError):
    """Bad input data or data settings; the message names the file or
    setting and the fix."""


class RunError(RuntimeError):
    """A run cannot go on; the message says why and what to do."""


class NonFiniteLossError(RunError):
    """The training loss became NaN or infinite; the last good checkpoint is kept."""
