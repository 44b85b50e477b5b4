"""Progress reporting without a UI dependency: library code calls
progress(label, done, total) and the CLI draws it (Rich) or ignores it."""

from __future__ import annotations

from typing import Callable, Optional

ProgressFn = Callable[[str, int, Optional[int]], None]


def no_progress(label: str, done: int, total: Optional[int]) -> None:
    return None
