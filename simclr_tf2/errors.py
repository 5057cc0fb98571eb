"""The errors a run raises on purpose, one family: each message says what is
wrong and the fix.

The command-line entry points catch `SimCLRError` only: they print it as one
`error:` line and exit 2. Anything else (a bug here or in TensorFlow) keeps
its traceback and exits 1. Each subclass also derives from the builtin
error callers caught before the family existed (ValueError for settings and
data, RuntimeError for runs, exports and imports).
"""


class SimCLRError(Exception):
    """Base of every error this library raises on purpose."""


class ConfigError(SimCLRError, ValueError):
    """A setting, or a combination of settings, that cannot work; the
    message names it, the value received and the fix."""


class DataError(SimCLRError, ValueError):
    """Bad input data or data settings; the message names the file or
    setting and the fix."""


class RunError(SimCLRError, RuntimeError):
    """A run cannot go on; the message says why and what to do."""


class NonFiniteLossError(RunError):
    """The training loss became NaN or infinite; the last good checkpoint is kept."""


class ExportError(SimCLRError, RuntimeError):
    """The export cannot be written; the message says why and what to do."""


class OfficialImportError(SimCLRError, RuntimeError):
    """An official SavedModel does not fit the model; the message lists what differs."""
