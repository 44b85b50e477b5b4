"""The editable file: a file name in the workspace, a regular file, never written through a
symbolic link (a symlink could point anywhere)."""

from __future__ import annotations

import os
from pathlib import Path

from autoresearch.errors import ArError

def editable_path(folder: Path, editable: str) -> Path:
    """The editable file's path, refusing a name that leaves the workspace."""
    if Path(editable).name != editable or editable in ("", ".", ".."):
        raise ArError(f"the editable file must be a file name in the workspace, got {editable!r}")
    return Path(folder) / editable


def check_editable(folder: Path, editable: str) -> Path:
    """The editable file, which must be a regular file (a symlink could point anywhere)."""
    path = editable_path(folder, editable)
    if path.is_symlink():
        raise ArError(f"{editable} in {folder} is a symbolic link; replace it with the file itself "
                      f"(`git checkout -- {editable}` if the committed one is a file)")
    return path


def write_editable(folder: Path, editable: str, text: str) -> None:
    """Write the proposal as a regular file, never through a symlink (one is replaced)."""
    path = editable_path(folder, editable)
    if path.is_symlink():
        path.unlink()
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
        f.write(text)
