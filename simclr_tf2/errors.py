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
    exit_code = 2  # of the command line that prints it


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


class CollapseError(RunError):
    """The collapse alarm fired and monitor.stop_on_collapse ends the run;
    the last checkpoint is kept."""


class ExportError(SimCLRError, RuntimeError):
    """The export cannot be written; the message says why and what to do."""


class ExportInterrupted(ExportError):
    """SIGTERM arrived during an export: the export directory holds the
    previous exports and, if the new one was being moved into place, the new
    one complete; never a half-written one. Rerun the same command."""
    exit_code = 75  # PREEMPTED_EXIT_CODE: try again


class OfficialImportError(SimCLRError, RuntimeError):
    """An official SavedModel does not fit the model; the message lists what differs."""


# Exit statuses of the command line, which a scheduler can tell apart: 0
# done, 1 a bug (a traceback), 2 bad settings or data (SimCLRError), and two
# from sysexits.h: 75 (EX_TEMPFAIL, "try again") a preempted run whose
# checkpoint is written, 69 (EX_UNAVAILABLE) a multi-worker run that lost a
# worker.
PREEMPTED_EXIT_CODE = 75
WORKER_LOST_EXIT_CODE = 69


class Preempted(RunError):
    """The run was asked to stop (SIGTERM, a maintenance notice) and wrote a
    checkpoint at `step` first: rerun the same command to resume."""
    exit_code = PREEMPTED_EXIT_CODE

    def __init__(self, step: int):
        self.step = step
        super().__init__(f"preempted at step {step}: checkpoint written, rerun the same "
                         "command to resume")


class WorkerLost(RunError):
    """A multi-worker run lost a worker (it stopped answering); the message
    names it where TensorFlow does and the checkpoint a restart resumes from."""
    exit_code = WORKER_LOST_EXIT_CODE
