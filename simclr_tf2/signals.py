"""SIGTERM around work that must not be cut in half (an export swapped into
place, a checkpoint rewritten in place).

Within `sigterm_guard(interrupt)`, a SIGTERM before `guard.hold()` raises
`interrupt()` at once, wherever the main thread is; after it, the signal is
held until the block ends and `interrupt()` is raised then. Python handles
signals only in the main thread; elsewhere the block runs unguarded (as
before). The SIGTERM handler before the block is restored after it."""
import contextlib
import signal
import threading
from typing import Callable


class Guard:
    """What the guarded block tells its guard: hold() from where a SIGTERM
    must wait for the block's end."""

    def __init__(self, interrupt: Callable[[], Exception]):
        self.interrupt, self.holding, self.pending = interrupt, False, False

    def on_sigterm(self, signum, frame):
        if not self.holding:
            raise self.interrupt()
        self.pending = True

    def hold(self):
        self.holding = True


@contextlib.contextmanager
def sigterm_guard(interrupt: Callable[[], Exception]):
    guard = Guard(interrupt)
    if threading.current_thread() is not threading.main_thread():
        yield guard
        return
    previous = signal.signal(signal.SIGTERM, guard.on_sigterm)
    try:
        yield guard
    finally:
        signal.signal(signal.SIGTERM, previous)
    if guard.pending:
        raise interrupt()
