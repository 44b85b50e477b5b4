"""Stop signals for the loop's main thread.

Ctrl-C raises KeyboardInterrupt and SIGTERM/SIGHUP raise StopRequested, except inside
`critical()`, where they wait until the block is done: a row, its git update and its record
are written together, so a stop (even a second Ctrl-C) never leaves a dirty tree.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Optional

from autoresearch.experiment.step import StopRequested

__all__ = ["Signals", "StopRequested"]


class Signals:
    """Ctrl-C -> KeyboardInterrupt, SIGTERM/SIGHUP -> StopRequested, except inside
    `critical()`, where they wait until the block is done. Main thread only."""

    def __init__(self) -> None:
        self.depth = 0
        self.pending: Optional[int] = None
        self.previous: dict[int, object] = {}

    def _raise(self, signum: int):
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise StopRequested(signal.Signals(signum).name)

    def _handler(self, signum, frame) -> None:
        if self.depth:
            self.pending = self.pending or signum
            return
        self._raise(signum)

    def __enter__(self) -> "Signals":
        if threading.current_thread() is threading.main_thread():
            for name in ("SIGINT", "SIGTERM", "SIGHUP"):
                if hasattr(signal, name):
                    sig = getattr(signal, name)
                    self.previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self.previous.items():
            signal.signal(sig, old)

    @contextlib.contextmanager
    def critical(self):
        self.depth += 1
        failed = False
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            self.depth -= 1
            if not self.depth and self.pending is not None:
                signum, self.pending = self.pending, None
                if not failed:  # already on the way out: that is the stop
                    self._raise(signum)
