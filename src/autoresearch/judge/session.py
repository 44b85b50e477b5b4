"""The run's end of the judge's socket, taken from the environment as early as the harness
is imported (stdlib only, so importing autoresearch.data stays cheap for `ar` itself).

`ar` starts a judged run with AUTORESEARCH_JUDGE_FD naming its end of a socketpair; this
module takes the variable out of os.environ and makes the descriptor non-inheritable, so
processes the script starts see neither. client.py talks over it."""

from __future__ import annotations

import os
import time
from typing import Optional

FD_ENV = "AUTORESEARCH_JUDGE_FD"


def _take_fd() -> Optional[int]:
    value = os.environ.pop(FD_ENV, None)
    try:
        fd = int(value) if value else None
        if fd is not None:
            os.set_inheritable(fd, False)
        return fd
    except (ValueError, OSError):
        return None


fd: Optional[int] = _take_fd()
train_start: Optional[float] = None  # time.monotonic() of the first training batch (data/loader.py)


def training_started() -> None:
    """The data loader served its first training batch: told to the judge with the evaluation
    request (a report of the run's own, checked against the judge's clock; docs/judge.md)."""
    global train_start
    if train_start is None:
        train_start = time.monotonic()
